"""A drop-in for Liger-Kernel's ``LigerFusedLinearGRPOLoss`` computing the RLSD loss.

``FusedLinearRLSDLigerLoss`` takes every constructor and ``forward`` argument of
``liger_kernel.chunked_loss.LigerFusedLinearGRPOLoss`` (0.8.5), in its order, and returns what it
returns, ``(loss, metrics)`` with ``metrics = (kl_mean, clip_ratio)`` when ``beta != 0`` and
``(clip_ratio,)`` otherwise. The RLSD teacher enters as keyword arguments of ``forward``; the
credit ``Ahat = A ((1 - lam) + lam clamp(exp(sign(A) (lp_T - lp_S)), 1 - eps_w, 1 + eps_w))``
takes the place of ``A`` in every loss type, and at ``lam = 0`` each is Liger's (docs/math.md,
"Policy-loss variants"). Liger's ``loss_type`` picks the surrogate and the aggregation:

=========  ==============================  ===========================================
loss_type  surrogate (``policy_loss``)     aggregation here (``rlsd_loss``)
=========  ==============================  ===========================================
dapo       PPO clip                        token-mean, normalizer ``num_items_in_batch /
                                           world`` or the all-reduced token count / world
bnpo       PPO clip                        token-mean
grpo       PPO clip                        seq-mean-token-mean, normalizer B
dr_grpo    PPO clip                        seq-mean-token-sum-norm, normalizer
                                           B max_completion_length
luspo      PPO clip                        seq-mean-token-sum-norm, normalizer B
cispo      CISPO                           token-mean, normalizer as dapo
sapo       SAPO (sapo_temperature_*)       seq-mean-token-mean, normalizer B
vespo      VESPO (vespo_*)                 token-mean, normalizer as dapo
=========  ==============================  ===========================================

``importance_sampling_level="sequence"`` is GSPO (``is_level="sequence"``: the ratio's gradient
shared by the sequence, as Liger does; ``"sequence-token"``, veRL's form, is available through
``rlsd_loss``), ``delta`` two-sided clipping,
``use_bias_correction_kl`` the KL term times the importance ratio, ``vllm_is_ratio`` the rollout
weights of the surrogate (``rollout_is_weights``), all as Liger defines them.

Differences to Liger:

- Log-ratios ``lp_S - lp_old`` and ``lp_ref - lp_S`` are clamped to [-20, 20] and k3 to [-10, 10]
  (veRL's convention); Liger does not clamp. Equal for any non-degenerate batch.
- ``old_per_token_logps`` / ``ref_per_token_logps`` are used as given, like Liger (no check that
  they are <= 0: Liger's own tests pass noisy log-probs slightly above 0); ``rlsd_loss`` itself
  refuses log-probs above 1e-4 unless told otherwise (``logprob_tolerance``).
- ``loss_type="luspo"``: the sum over each sequence's valid tokens / B, as TRL defines it and as
  Liger computes it when its per-token loss is one value per sequence (sequence level, no KL term,
  no [B, T] vLLM ratio). Otherwise Liger 0.8.5 weights each position by its sequence's length /
  (B T), padding positions included (``per_token_loss * attention_mask.sum(1)``, unmasked); the
  two agree when nothing is masked.
- ``compiled`` and ``chunk_size`` are accepted and ignored: the fused backend sizes its own chunks
  by memory and needs no compilation.
- Errors name Liger's arguments (``_input``, ``old_per_token_logps``, ``loss_type``...).
- The full RLSD metrics dict of the last call (credit clip fractions, delta statistics, PPO clip
  fractions, approximate KL) is kept in ``last_metrics``.
"""

from __future__ import annotations

import math

import torch

from ..api import fused_linear_logprobs, rlsd_loss
from ..options import LamSchedulable, RLSDOptions
from .loss_types import LOSS_TYPES, callers_names, policy_loss, rollout_weights


def dapo_normalizer(attention_mask, num_items_in_batch=None):
    """Liger's DAPO denominator: ``num_items_in_batch / world_size`` if given, else the number of
    valid tokens summed over the process group divided by ``world_size``; clamped to >= 1."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if num_items_in_batch is not None:
        n = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=attention_mask.device)
    else:
        n = attention_mask.to(torch.float32).sum()
        if distributed:
            torch.distributed.all_reduce(n)
    return (n / world).clamp(min=1.0)


NAMES = {"hidden": "_input", "weight": "lin_weight", "targets": "selected_token_ids", "mask": "attention_mask",
         "old_logprobs": "old_per_token_logps", "ref_logprobs": "ref_per_token_logps",
         "rollout_is_weights": "vllm_is_ratio", "teacher_hidden": "teacher_input", "eps_low": "epsilon_low",
         "eps_high": "epsilon_high", "kl_coef": "beta", "sapo_tau_pos": "sapo_temperature_pos",
         "sapo_tau_neg": "sapo_temperature_neg", "kl_is_corrected": "use_bias_correction_kl"}
"""This library's argument names -> Liger's, for error messages."""


class FusedLinearRLSDLigerLoss(LamSchedulable, torch.nn.Module):
    """``LigerFusedLinearGRPOLoss``'s interface over :func:`rlsd_kernels.rlsd_loss` (see the module
    docstring for the formulas and what differs).

    Beyond Liger's arguments: ``lam`` (RLSD mix, 0 = GRPO; a property, so a schedule can set it
    between steps), ``eps_w`` (credit clip), ``negative_only`` (reweight only A < 0) and ``impl``
    (backend of ``rlsd_loss``). The loss options are built once, at construction, as one
    ``RLSDOptions`` (``options``) from these and Liger's settings.
    """

    def __init__(self, beta: float = 0.04, compiled: bool = True, use_ref_model: bool = True, chunk_size: int = 1,
                 epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "dapo",
                 max_completion_length=None, importance_sampling_level: str = "token",
                 sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05, temperature: float = 1.0,
                 delta=None, use_bias_correction_kl: bool = False, vespo_k_pos: float = 2.0,
                 vespo_lambda_pos: float = 3.0, vespo_k_neg: float = 3.0, vespo_lambda_neg: float = 2.0, *,
                 lam: float = RLSDOptions.lam, eps_w: float = RLSDOptions.eps_w,
                 negative_only: bool = RLSDOptions.negative_only, impl="auto"):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
        if loss_type == "dr_grpo" and max_completion_length is None:
            raise ValueError("max_completion_length must be provided for loss_type 'dr_grpo'")
        if importance_sampling_level not in ("token", "sequence"):
            raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got "
                             f"{importance_sampling_level!r}")
        policy = policy_loss(loss_type)
        if importance_sampling_level == "sequence" and policy != "ppo":
            raise ValueError(f"Sequence-level importance sampling is not supported for loss_type={loss_type!r}; "
                             "use importance_sampling_level='token'")
        self.beta, self.compiled, self.use_ref_model, self.chunk_size = beta, compiled, use_ref_model, chunk_size
        self.epsilon_low, self.epsilon_high, self.loss_type = epsilon_low, epsilon_high, loss_type
        self.max_completion_length, self.importance_sampling_level = max_completion_length, importance_sampling_level
        self.temperature, self.delta, self.use_bias_correction_kl = temperature, delta, use_bias_correction_kl
        self.impl = impl
        with callers_names(NAMES):
            self.options = RLSDOptions(
                lam=lam, eps_w=eps_w, negative_only=negative_only, eps_low=epsilon_low, eps_high=epsilon_high,
                policy_loss=policy, is_level=importance_sampling_level, delta=delta if policy == "ppo" else None,
                kl_coef=beta if self._kl_active() else 0.0, kl_type="k3", kl_is_corrected=use_bias_correction_kl,
                sapo_tau_pos=sapo_temperature_pos, sapo_tau_neg=sapo_temperature_neg, vespo_k_pos=vespo_k_pos,
                vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg, vespo_lambda_neg=vespo_lambda_neg)
        self.last_metrics = {}

    def _kl_active(self):
        return self.beta != 0.0 and self.use_ref_model

    def _normalizer(self, attention_mask, num_items_in_batch):
        B = attention_mask.shape[0]
        if self.loss_type in ("dapo", "cispo", "vespo"):
            return dapo_normalizer(attention_mask, num_items_in_batch)
        if self.loss_type in ("grpo", "sapo", "luspo"):
            return B
        if self.loss_type == "dr_grpo":
            return B * self.max_completion_length
        return None

    def _logprobs(self, hidden, weight, bias, targets):
        with torch.no_grad():
            lp, _ = fused_linear_logprobs(hidden, weight, targets, bias=bias, temperature=self.temperature,
                                          impl=self.impl)
        return lp

    def forward(self, _input, lin_weight, selected_token_ids, attention_mask, advantages, bias=None,
                ref_per_token_logps=None, old_per_token_logps=None, ref_input=None, ref_weight=None, ref_bias=None,
                vllm_is_ratio=None, num_items_in_batch=None, *, teacher_input=None, teacher_logprobs=None,
                teacher_weight=None, teacher_bias=None, credit_mask=None):
        """_input [B, T, H] (student hidden states at the completion positions), lin_weight [V, H],
        selected_token_ids [B, T], attention_mask [B, T] (completion mask), advantages [B] or [B, T].

        RLSD teacher (needed when ``lam != 0``): ``teacher_input`` [B, T, H], hidden states of the
        same positions under the privileged context, scored with ``lin_weight``/``bias`` in the
        same sweep (a self-teacher), or with ``teacher_weight``/``teacher_bias`` when given (a
        separate head); or precomputed ``teacher_logprobs`` [B, T]. ``credit_mask`` [B, T]: only
        tokens where it is nonzero are reweighted.
        """
        if self.use_ref_model and ref_per_token_logps is None and ref_input is None:
            raise ValueError("If use_ref_model is True, ref_per_token_logps or ref_input must be provided")
        kl_active = self._kl_active()
        with callers_names(NAMES):
            if kl_active and ref_per_token_logps is None:
                ref_per_token_logps = self._logprobs(ref_input, ref_weight, ref_bias, selected_token_ids)
            teacher_hidden = teacher_input
            if self.options.needs_teacher and teacher_logprobs is None and teacher_weight is not None:
                teacher_logprobs = self._logprobs(teacher_input, teacher_weight, teacher_bias, selected_token_ids)
                teacher_hidden = None
            loss, metrics = rlsd_loss(
                _input, lin_weight, selected_token_ids, advantages, attention_mask, teacher_hidden=teacher_hidden,
                teacher_logprobs=teacher_logprobs, bias=bias, old_logprobs=old_per_token_logps,
                ref_logprobs=ref_per_token_logps if kl_active else None, temperature=self.temperature,
                options=self.options, rollout_is_weights=rollout_weights(vllm_is_ratio, attention_mask, self.loss_type),
                credit_mask=credit_mask, loss_agg=LOSS_TYPES[self.loss_type],
                normalizer=self._normalizer(attention_mask, num_items_in_batch), impl=self.impl,
                logprob_tolerance=math.inf)
        self.last_metrics = metrics
        clip_ratio = metrics["ppo_clip_frac"]
        if self.beta == 0.0:
            return loss, (clip_ratio,)
        kl = metrics["ref_kl"] if kl_active else torch.zeros_like(clip_ratio)
        return loss, (kl, clip_ratio)
