"""TRL adapter: ``RLSDTrainer``, a TRL 1.16 ``GRPOTrainer`` whose loss is :func:`rlsd_kernels.rlsd_loss`::

    delta = lp_T - lp_S;  c = clamp(exp(sign(A) delta), 1 - eps_w, 1 + eps_w);  Ahat = A ((1 - lam) + lam c)
    l_t   = -min(rho Ahat, clamp(rho, 1 - epsilon_low, 1 + epsilon_high) Ahat) + beta k3(lp_ref, lp_S)

with ``lp_T`` the log-prob of the sampled token under the teacher prompt (question + privileged
context) and ``rho = exp(lp_S - lp_old)``.

Two hooks of ``GRPOTrainer``:

- ``_generate_and_score_completions``: after TRL's own rollout and scoring, the teacher prompt of
  every rollout is built from its dataset row by :func:`rlsd_kernels.privileged.privileged_prompt`,
  ``teacher_template`` filled with the question (a conversational prompt's last user turn) and the
  row's privileged column (default ``"privileged"``; e.g. a reference solution), tokenized like
  TRL's prompts (chat template for conversational data) and stored as ``teacher_prompt_ids`` /
  ``teacher_prompt_mask`` next to ``prompt_ids``, so TRL's shuffling and splitting carry it along.
- ``_compute_loss``: the policy's last hidden states at the completion positions (the inputs of the
  LM head; the backbone is run through the wrapped model, so DDP hooks still fire), the same for the
  teacher context under ``torch.no_grad()`` (a live self-teacher: the current weights), then
  ``rlsd_loss`` on ``lm_head.weight``: the logits are never materialised.

With ``lam = 0`` the loss is TRL's GRPO loss; the loss types map to surrogates (``policy_loss``:
``cispo``, ``sapo``, ``vespo`` are their own, the rest PPO's clip) and aggregations as

==========  =========================================  =================================================
loss_type   TRL                                        here (normalizer D, ga = accumulation steps)
==========  =========================================  =================================================
grpo, sapo  mean_b (sum_t l m / n_b) / ga              seq-mean-token-mean, D = B ga
bnpo        sum(l m) / sum(m) / ga                     token-mean, D = sum(m) ga
dr_grpo     sum(l m) / (B max_completion_length) / ga  seq-mean-token-sum-norm, D = B max_len ga
luspo       mean_b (sum_t l m) / ga                    seq-mean-token-sum-norm, D = B ga
dapo,       sum(l m) / (num_items / processes          token-mean, D = num_items / processes
cispo,      x ga / steps_per_generation)               x ga / steps_per_generation (in training)
vespo
==========  =========================================  =================================================

GRPOConfig's ``importance_sampling_level`` ("sequence": GSPO, the ratio's gradient shared by the
sequence, as TRL), ``delta`` (two-sided clipping), ``use_bias_correction_kl``, ``sapo_*`` and
``vespo_*`` become the fields of ``RLSDOptions`` of the same meaning; the KL term (``beta``) is k3
to ``ref_per_token_logps``; vLLM's importance-sampling ratio multiplies the surrogate
(``rollout_is_weights``; VESPO folds it into its weight, its per-sequence sum of log-ratios spread
over the valid tokens). Old and reference log-probs are taken as given, as TRL does. Not provided
(raise at construction): the off-policy mask, the high-entropy token mask, the entropy bonus, the
MoE auxiliary loss, vision-language models and LM heads with logit scaling or soft-capping.
"""

from __future__ import annotations

import functools
import math
import types

import torch
from accelerate.utils import is_peft_model
from trl import GRPOTrainer
from trl.trainer.utils import pad

from ..api import rlsd_loss
from ..privileged import PRIVILEGED_TEMPLATE, privileged_prompt
from ..options import LamSchedulable, RLSDOptions
from .loss_types import LOSS_TYPES, policy_loss, rollout_weights


_LOGIT_SCALES = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling")


def add_hidden_forward(model):
    """Lets ``model(..., rlsd_last_hidden=True)`` return the backbone's last hidden states (the LM
    head's input) instead of running the head; other calls are unchanged."""
    forward = model.forward

    @functools.wraps(type(model).forward)
    def _forward(self, *args, rlsd_last_hidden=False, **kwargs):
        if not rlsd_last_hidden:
            return forward(*args, **kwargs)
        kwargs["use_cache"] = False
        return self.base_model(*args, **kwargs).last_hidden_state

    model.forward = types.MethodType(_forward, model)


class RLSDTrainer(LamSchedulable, GRPOTrainer):
    """GRPOTrainer with the RLSD loss (see the module docstring).

    Extra arguments: ``privileged_column`` (dataset column with the privileged context),
    ``teacher_template`` (``{prompt}`` and ``{reference}`` placeholders), ``lam`` (0 = GRPO; a
    property, so a callback can schedule it), ``eps_w`` (credit clip), ``negative_only``
    (reweight only A < 0) and ``impl`` (backend of ``rlsd_loss``). Everything else is GRPOTrainer's.
    """

    def __init__(self, *args, privileged_column: str = "privileged", teacher_template: str = PRIVILEGED_TEMPLATE,
                 lam: float = RLSDOptions.lam, eps_w: float = RLSDOptions.eps_w,
                 negative_only: bool = RLSDOptions.negative_only, impl="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.privileged_column, self.teacher_template = privileged_column, teacher_template
        self.impl = impl
        self._check_supported()
        self.options = self._with_trl_settings(RLSDOptions(lam=lam, eps_w=eps_w, negative_only=negative_only,
                                                           kl_type="k3"))
        add_hidden_forward(self.model.get_base_model() if is_peft_model(self.model) else self.model)

    def _with_trl_settings(self, options: RLSDOptions) -> RLSDOptions:
        """``options`` with TRL's policy-loss settings, read where GRPOTrainer reads them (at each
        loss), so a change to ``beta`` or ``epsilon_*`` acts as it does in TRL; ``lam`` and the RLSD
        fields are the trainer's own ``options``."""
        args, policy = self.args, policy_loss(self.loss_type)
        return options.replace(
            eps_low=self.epsilon_low, eps_high=self.epsilon_high, kl_coef=self.beta, policy_loss=policy,
            is_level=self.importance_sampling_level, delta=args.delta if policy == "ppo" else None,
            kl_is_corrected=bool(args.use_bias_correction_kl), sapo_tau_pos=args.sapo_temperature_pos,
            sapo_tau_neg=args.sapo_temperature_neg, vespo_k_pos=args.vespo_k_pos,
            vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
            vespo_lambda_neg=args.vespo_lambda_neg)

    def _check_supported(self):
        args = self.args
        text_config = self.model.config.get_text_config()
        unsupported = {
            f"loss_type={self.loss_type!r}": self.loss_type not in LOSS_TYPES,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
            "top_entropy_quantile < 1": self.top_entropy_quantile < 1.0,
            "the entropy bonus": self._entropy_bonus_enabled,
            "the MoE auxiliary loss": self.aux_loss_enabled,
            "vision-language models": self._is_vlm,
            "logit scaling or soft-capping": any(getattr(text_config, k, None) is not None for k in _LOGIT_SCALES),
        }
        names = [name for name, bad in unsupported.items() if bad]
        if names:
            raise NotImplementedError(f"RLSDTrainer does not provide: {', '.join(names)}")

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.privileged_column in inputs[0]:
            ids, _, _ = self._tokenize_prompts(self.teacher_prompts(inputs))
            ids = [torch.tensor(i) for i in ids]
            device = output["prompt_ids"].device
            output["teacher_prompt_ids"] = pad(ids, padding_value=self._tokenizer.pad_token_id,
                                               padding_side="left").to(device)
            output["teacher_prompt_mask"] = pad([torch.ones_like(i) for i in ids], padding_value=0,
                                                padding_side="left").to(device)
        return output

    def teacher_prompts(self, inputs) -> list:
        """The teacher prompt of each dataset row: its ``prompt`` with its privileged column."""
        return [privileged_prompt(x["prompt"], x[self.privileged_column], self.teacher_template) for x in inputs]

    def _completion_hidden(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """Last hidden states [B, C, H] at the positions that predict the C completion tokens."""
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        with self.accelerator.autocast():
            hidden = model(input_ids=input_ids, attention_mask=attention_mask, rlsd_last_hidden=True)
        return hidden[:, -completion_ids.size(1) - 1:-1]

    def _normalizer(self, mask, inputs, mode):
        ga = self.current_gradient_accumulation_steps if mode == "train" else 1
        if self.loss_type in ("grpo", "sapo", "luspo"):
            return mask.size(0) * ga
        if self.loss_type == "bnpo":
            return mask.sum().clamp(min=1.0) * ga
        if self.loss_type == "dr_grpo":
            return mask.size(0) * self.max_completion_length * ga
        n = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        return n * ga / self.args.steps_per_generation if mode == "train" else n

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        hidden = self._completion_hidden(model, inputs["prompt_ids"], inputs["prompt_mask"], completion_ids,
                                         completion_mask)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        options = self._with_trl_settings(self.options)
        teacher_hidden = None
        if options.needs_teacher:
            if "teacher_prompt_ids" not in inputs:
                raise ValueError(f"lam != 0 needs the privileged context: the dataset has no "
                                 f"{self.privileged_column!r} column")
            with torch.no_grad():
                teacher_hidden = self._completion_hidden(model, inputs["teacher_prompt_ids"],
                                                         inputs["teacher_prompt_mask"], completion_ids,
                                                         completion_mask).to(head.weight.dtype)
        rollout = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            rollout = rollout_weights(inputs["importance_sampling_ratio"], mask, self.loss_type)
        loss, metrics = rlsd_loss(
            hidden.to(head.weight.dtype), head.weight, completion_ids, inputs["advantages"], mask,
            teacher_hidden=teacher_hidden, bias=head.bias, old_logprobs=inputs.get("old_per_token_logps"),
            ref_logprobs=inputs["ref_per_token_logps"] if self.beta != 0.0 else None, temperature=self.temperature,
            options=options, rollout_is_weights=rollout, compute_entropy=True, loss_agg=LOSS_TYPES[self.loss_type],
            normalizer=self._normalizer(mask, inputs, mode), impl=self.impl, logprob_tolerance=math.inf)
        self._log_rlsd_metrics(metrics, mode)
        return loss

    def _log_rlsd_metrics(self, metrics, mode):
        """TRL's metric names where they exist (kl, entropy, clip_ratio/*), ``rlsd/*`` for the rest."""
        names = {"ref_kl": "kl", "entropy_mean": "entropy", "ppo_clip_low_frac": "clip_ratio/low_mean",
                 "ppo_clip_high_frac": "clip_ratio/high_mean", "ppo_clip_frac": "clip_ratio/region_mean"}
        for key, value in metrics.items():
            name = names.get(key, f"rlsd/{key}")
            self._metrics[mode][name].append(self.accelerator.gather(value.reshape(1)).mean().item())
