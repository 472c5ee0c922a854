"""RLSD on veRL 0.9.1's PPO driver (``RayPPOTrainer``) and actor worker (``ActorRolloutRefWorker``).

Per step, veRL's own loop generates, scores, recomputes pi_old and the GRPO advantages; then, before
the actor update, :class:`RLSDRayPPOTrainer` adds what RLSD needs:

- the privileged prompt of each response: its chat messages (``raw_prompt``) with the last user turn
  replaced by ``template.format(prompt=<that turn>, reference=<row[privileged_key]>)``;
- the teacher pass, live: the actor's own ``compute_log_prob`` on (privileged prompt, the same
  response), giving ``lp_T`` [B, R] aligned with ``old_log_probs``, put in the batch under
  ``rlsd_kernels.integrations.verl.TEACHER_KEY``;
- lam for this step, ``rlsd.advantages.lam_at(step - 1, ...)``, sent to every actor process.

:class:`RLSDActorRolloutRefWorker` registers the ``rlsd`` policy loss in its own process (veRL looks
the loss up there, under Ray a separate process from the driver) and wraps the actor's loss function
so that each micro-batch's teacher column reaches it (``with_teacher``). The loss is then

    Ahat = A ((1 - lam) + lam clamp(exp(sign(A) (lp_T - lp)), 1 - eps_w, 1 + eps_w))

in veRL's vanilla clipped surrogate (rlsd_kernels/integrations/verl.py).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from verl import DataProto
from verl.single_controller.base.decorator import Dispatch, register
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils import tensordict_utils as tu
from verl.utils.model import compute_position_id_with_mask
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

from rlsd.advantages import lam_at
from rlsd_kernels.integrations.verl import TEACHER_KEY, with_teacher
from rlsd_kernels.integrations.verl import register as register_rlsd_loss
from rlsd_kernels.options import RLSDOptions
from rlsd_kernels.privileged import PRIVILEGED_TEMPLATE

LOSS_NAME = "rlsd"


@dataclasses.dataclass
class RLSDSettings:
    """The ``rlsd`` section of the config (config/rlsd_trainer.yaml)."""

    privileged_key: str = "privileged"
    template: str | None = None
    lam: float = 0.5
    lam_schedule: str = "warmup-decay"
    lam_end: float = 0.0
    lam_decay_steps: int = 50
    lam_warmup_steps: int = 0
    eps_w: float = 0.2
    negative_only: bool = False

    @classmethod
    def from_config(cls, section) -> "RLSDSettings":
        fields = {f.name for f in dataclasses.fields(cls)}
        given = dict(section or {})
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ValueError(f"rlsd: unknown keys {unknown}; known: {sorted(fields)}")
        settings = cls(**given)
        settings.lam_at(0)  # a bad schedule name fails here, not at the first update
        problem = RLSDOptions.problem("eps_w", settings.eps_w)  # the kernel's rule
        if problem:
            raise ValueError(f"rlsd.{problem}")
        return settings

    def lam_at(self, step: int) -> float:
        """lam for the batch after ``step`` optimizer steps."""
        return lam_at(step, self.lam, self.lam_schedule, self.lam_end, self.lam_decay_steps, self.lam_warmup_steps)


def privileged_messages(messages, reference: str, template: str | None = None) -> list:
    """``messages`` (chat turns, dicts with role/content) with the last user turn replaced by the
    privileged template of (that turn, ``reference``)."""
    out = [dict(m) for m in messages]
    last = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError("the prompt has no user turn to add the reference to")
    out[last]["content"] = (template or PRIVILEGED_TEMPLATE).format(prompt=out[last]["content"], reference=reference)
    return out


def teacher_batch(tokenizer, batch: DataProto, privileged_key: str, template: str | None = None) -> DataProto:
    """The teacher's input: each row's privileged prompt (chat template, generation prompt) left-padded,
    then the row's own response (``batch.batch["responses"]``, right-padded, ``response_mask``)."""
    if privileged_key not in batch.non_tensor_batch:
        raise KeyError(f"the batch has no {privileged_key!r} column (rlsd.privileged_key); dataset columns: "
                       f"{sorted(batch.non_tensor_batch)}")
    contexts = [tokenizer.apply_chat_template(privileged_messages(m, str(ref), template), add_generation_prompt=True,
                                              tokenize=True, return_dict=False)
                for m, ref in zip(batch.non_tensor_batch["raw_prompt"], batch.non_tensor_batch[privileged_key])]
    responses, response_mask = batch.batch["responses"], batch.batch["response_mask"].long()
    B, P = len(contexts), max(map(len, contexts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = torch.full((B, P), pad, dtype=responses.dtype)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    for i, ids in enumerate(contexts):
        prompts[i, P - len(ids):] = torch.tensor(ids, dtype=responses.dtype)
        prompt_mask[i, P - len(ids):] = 1
    attention = torch.cat([prompt_mask, response_mask], 1)
    tensors = dict(prompts=prompts, responses=responses, input_ids=torch.cat([prompts, responses], 1),
                   attention_mask=attention, position_ids=compute_position_id_with_mask(attention),
                   response_mask=response_mask)
    return DataProto.from_dict(tensors=tensors, meta_info=copy.deepcopy(batch.meta_info))


class RLSDActorRolloutRefWorker(ActorRolloutRefWorker):
    """veRL's actor worker with the ``rlsd`` policy loss registered in its process and fed the
    teacher column of each micro-batch."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        self.rlsd_loss = register_rlsd_loss(LOSS_NAME)
        super().init_model()
        if getattr(self, "actor", None) is not None:
            self.actor.set_loss_fn(with_teacher(self.loss_fn))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def set_rlsd_options(self, lam: float, eps_w: float, negative_only: bool):
        self.rlsd_loss.options = RLSDOptions(lam=lam, eps_w=eps_w, negative_only=negative_only)


class RLSDRayPPOTrainer(RayPPOTrainer):
    """veRL's PPO driver with RLSD's teacher pass and lam schedule before each actor update."""

    def __init__(self, config, *args, **kwargs):
        self.rlsd = RLSDSettings.from_config(config.get("rlsd"))
        loss_mode = config.actor_rollout_ref.actor.policy_loss.loss_mode
        if loss_mode != LOSS_NAME:
            raise ValueError(f"actor_rollout_ref.actor.policy_loss.loss_mode must be {LOSS_NAME!r}, got {loss_mode!r}")
        super().__init__(config, *args, **kwargs)

    def _teacher_log_probs(self, batch: DataProto) -> torch.Tensor:
        """lp_T [B, R]: the actor's log-probs of each response after its privileged prompt."""
        td = left_right_2_no_padding(teacher_batch(self.tokenizer, batch, self.rlsd.privileged_key,
                                                   self.rlsd.template).to_tensordict())
        tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
        output = self.actor_rollout_wg.compute_log_prob(td)
        return no_padding_2_padding(tu.get(output, "log_probs"), td).float()

    def _update_actor(self, batch: DataProto) -> DataProto:
        lam = self.rlsd.lam_at(self.global_steps - 1)
        self.actor_rollout_wg.set_rlsd_options(lam, self.rlsd.eps_w, self.rlsd.negative_only)
        if lam != 0:
            batch.batch[TEACHER_KEY] = self._teacher_log_probs(batch)
        else:  # GRPO this step: the loss does not read the teacher
            batch.batch[TEACHER_KEY] = torch.zeros_like(batch.batch["old_log_probs"])
        output = super()._update_actor(batch)
        output.meta_info["metrics"]["rlsd/lam"] = lam
        return output

