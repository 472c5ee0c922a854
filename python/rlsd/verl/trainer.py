"""RLSD on veRL 0.9.1's PPO driver (``RayPPOTrainer``) and actor worker (``ActorRolloutRefWorker``).

Per step, veRL's own loop generates, scores, recomputes pi_old and the GRPO advantages; then, before
the actor update, :class:`RLSDRayPPOTrainer` adds what RLSD needs:

- the privileged prompt of each response: ``rlsd_kernels.privileged.privileged_prompt`` of its chat
  messages (``raw_prompt``: the last user turn is the question) and its reference (``row[privileged_key]``);
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
from rlsd_kernels.options import FIELDS, RLSDOptions
from rlsd_kernels.privileged import privileged_prompt

LOSS_NAME = "rlsd"


# RLSDOptions fields that veRL's actor config sets for the rlsd loss (the recipe refuses them under rlsd.loss)
VERL_OWNED = {"eps_low": "actor_rollout_ref.actor.clip_ratio_low", "eps_high": "actor_rollout_ref.actor.clip_ratio_high",
              "dual_clip": "actor_rollout_ref.actor.clip_ratio_c", "kl_coef": "actor_rollout_ref.actor.kl_loss_coef",
              "kl_type": "actor_rollout_ref.actor.kl_loss_type", "entropy_coef": "actor_rollout_ref.actor.entropy_coeff"}


@dataclasses.dataclass(frozen=True)
class RLSDSettings:
    """The ``rlsd`` section of the config: each key and its value are written in
    config/rlsd_trainer.yaml, all required here; ``loss`` holds the RLSDOptions fields that veRL's
    rlsd loss reads (lam, eps_w, negative_only; the others at RLSDOptions' defaults)."""

    privileged_key: str
    template: str | None
    loss: RLSDOptions
    lam_schedule: str
    lam_end: float
    lam_decay_steps: int
    lam_warmup_steps: int

    @classmethod
    def from_config(cls, section) -> "RLSDSettings":
        """The settings of the mapping ``section``; ValueError naming each key that is unknown,
        missing, moved (``rlsd.lam`` is ``rlsd.loss.lam``), veRL's own, or refused by RLSDOptions."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = dict(section or {})
        loss = dict(given.get("loss") or {})
        unknown = [f"rlsd.{k}" + (f" (moved to rlsd.loss.{k})" if k in FIELDS else "") for k in given if k not in names]
        unknown += [f"rlsd.loss.{k}" + (f" (set by veRL: {VERL_OWNED[k]})" if k in VERL_OWNED else "")
                    for k in loss if k not in FIELDS or k in VERL_OWNED]
        missing = [f"rlsd.{k}" for k in names if k not in given]
        problems = [f"unknown keys {', '.join(unknown)}; rlsd has {names}, rlsd.loss "
                    f"{[k for k in FIELDS if k not in VERL_OWNED]}"] if unknown else []
        problems += [f"missing keys {', '.join(missing)} (config/rlsd_trainer.yaml has them all)"] if missing else []
        problems += [f"rlsd.loss.{p}" for k, v in loss.items()
                     if k in FIELDS and k not in VERL_OWNED and (p := RLSDOptions.problem(k, v))]
        if problems:
            raise ValueError("; ".join(problems))
        settings = cls(**{**given, "loss": RLSDOptions(**loss)})
        settings.lam_at(0)  # a bad schedule name fails here, not at the first update
        return settings

    def options_at(self, step: int) -> RLSDOptions:
        """The loss options for the batch after ``step`` optimizer steps: lam from the schedule."""
        return self.loss.with_lam(self.lam_at(step))

    def lam_at(self, step: int) -> float:
        """lam for the batch after ``step`` optimizer steps."""
        return lam_at(step, self.loss.lam, self.lam_schedule, self.lam_end, self.lam_decay_steps,
                      self.lam_warmup_steps)


def teacher_messages(batch: DataProto, privileged_key: str, template: str | None = None) -> list:
    """Each row's privileged prompt: the library's ``privileged_prompt`` of its chat messages
    (``raw_prompt``) and its reference (the ``privileged_key`` column)."""
    if privileged_key not in batch.non_tensor_batch:
        raise KeyError(f"the batch has no {privileged_key!r} column (rlsd.privileged_key); dataset columns: "
                       f"{sorted(batch.non_tensor_batch)}")
    return [privileged_prompt(m, ref, template)
            for m, ref in zip(batch.non_tensor_batch["raw_prompt"], batch.non_tensor_batch[privileged_key])]


def teacher_batch(tokenizer, batch: DataProto, privileged_key: str, template: str | None = None) -> DataProto:
    """The teacher's input: each row's privileged prompt (:func:`teacher_messages`, chat template,
    generation prompt) left-padded, then the row's own response (``batch.batch["responses"]``,
    right-padded, ``response_mask``)."""
    contexts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False)
                for m in teacher_messages(batch, privileged_key, template)]
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
    def set_rlsd_options(self, options: RLSDOptions):
        self.rlsd_loss.options = options


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
        options = self.rlsd.options_at(self.global_steps - 1)
        self.actor_rollout_wg.set_rlsd_options(options)
        if options.needs_teacher:
            batch.batch[TEACHER_KEY] = self._teacher_log_probs(batch)
        else:  # GRPO this step: the loss does not read the teacher
            batch.batch[TEACHER_KEY] = torch.zeros_like(batch.batch["old_log_probs"])
        output = super()._update_actor(batch)
        output.meta_info["metrics"]["rlsd/lam"] = options.lam
        return output

