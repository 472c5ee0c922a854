"""A drop-in for Liger-Kernel's ``LigerFusedLinearGRPOLoss`` computing the RLSD loss.

``FusedLinearRLSDLigerLoss`` takes the constructor and ``forward`` arguments of
``liger_kernel.chunked_loss.LigerFusedLinearGRPOLoss`` (0.8.5) and returns what it returns,
``(loss, metrics)`` with ``metrics = (kl_mean, clip_ratio)`` when ``beta != 0`` and ``(clip_ratio,)``
otherwise. The RLSD teacher enters as keyword arguments of ``forward``::

    delta = lp_T - lp_S;  c = clamp(exp(sign(A) delta), 1 - eps_w, 1 + eps_w);  Ahat = A ((1 - lam) + lam c)
    l_t   = -min(rho Ahat, clamp(rho, 1 - epsilon_low, 1 + epsilon_high) Ahat) + beta k3(lp_ref, lp_S)

with ``rho = exp(lp_S - lp_old)`` (``lp_old = stopgrad(lp_S)`` when ``old_per_token_logps`` is None).
At ``lam = 0`` this is Liger's GRPO loss. Liger's ``loss_type`` picks the aggregation, ``sum_t agg_t l_t``:

=========  ==============================================  ==================================
loss_type  Liger                                           here (``rlsd_loss``)
=========  ==============================================  ==================================
dapo       sum(l m) / N, N = num_items_in_batch / world,   token-mean, normalizer N
           or all-reduced sum(m) / world
bnpo       sum(l m) / sum(m)                               token-mean
grpo       sum_b (sum_t l m / n_b) / B                     seq-mean-token-mean, normalizer B
dr_grpo    sum(l m) / (B max_completion_length)            seq-mean-token-sum-norm, normalizer
                                                           B max_completion_length
=========  ==============================================  ==================================

Differences to Liger (the rest raises ``NotImplementedError``):

- ``loss_type`` "cispo", "sapo", "vespo", "luspo" and ``importance_sampling_level="sequence"``
  (GSPO) have other surrogates and are not provided; neither is ``use_bias_correction_kl``.
- ``delta`` (two-sided clipping) is applied as the dual clip ``l_t <= -delta Ahat_t`` for
  ``Ahat_t < 0``, which is the same loss and gradient whenever ``delta > 1 + epsilon_high`` (it is
  never active for positive advantages then); smaller values raise.
- ``vllm_is_ratio`` multiplies the whole per-token loss (``token_weights``); Liger multiplies the
  surrogate only, before adding the KL term, so with ``beta != 0`` it raises.
- The log-ratios ``lp_S - lp_old`` and ``lp_ref - lp_S`` are clamped to [-20, 20] and k3 to [-10, 10]
  (veRL's convention); Liger does not clamp. Equal for any non-degenerate batch.
- ``compiled`` and ``chunk_size`` are accepted and ignored: the fused backend sizes its own chunks
  by memory and needs no compilation. ``sapo_*`` and ``vespo_*`` options are not accepted.
- The full RLSD metrics dict of the last call (credit clip fractions, delta statistics, PPO clip
  fractions, approximate KL) is kept in ``last_metrics``.
"""

from __future__ import annotations

import torch

from ..api import fused_linear_logprobs, rlsd_loss
from ..options import LamSchedulable, RLSDOptions
from .loss_types import LOSS_TYPES


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


class FusedLinearRLSDLigerLoss(LamSchedulable, torch.nn.Module):
    """``LigerFusedLinearGRPOLoss``'s interface over :func:`rlsd_kernels.rlsd_loss` (see the module
    docstring for the formulas and what differs).

    Beyond Liger's arguments: ``lam`` (RLSD mix, 0 = GRPO; a property, so a schedule can set it
    between steps), ``eps_w`` (credit clip), ``negative_only`` (reweight only A < 0) and ``impl``
    (backend of ``rlsd_loss``). The loss options are built once, at construction, as one
    ``RLSDOptions`` (``options``) from these and Liger's PPO settings.
    """

    def __init__(self, beta: float = 0.04, compiled: bool = True, use_ref_model: bool = True, chunk_size: int = 1,
                 epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "dapo",
                 max_completion_length=None, importance_sampling_level: str = "token", temperature: float = 1.0,
                 delta=None, use_bias_correction_kl: bool = False, *, lam: float = RLSDOptions.lam,
                 eps_w: float = RLSDOptions.eps_w, negative_only: bool = RLSDOptions.negative_only, impl="auto"):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise NotImplementedError(f"loss_type {loss_type!r} is not provided; use one of {sorted(LOSS_TYPES)}")
        if loss_type == "dr_grpo" and max_completion_length is None:
            raise ValueError("max_completion_length must be provided for loss_type 'dr_grpo'")
        if importance_sampling_level != "token":
            raise NotImplementedError("only importance_sampling_level='token' is provided (no GSPO)")
        if use_bias_correction_kl:
            raise NotImplementedError("use_bias_correction_kl is not provided")
        if delta is not None and not delta > 1.0 + epsilon_high:
            raise NotImplementedError(f"delta must be > 1 + epsilon_high = {1.0 + epsilon_high} (it is applied as "
                                      f"the dual clip), got {delta}")
        self.beta, self.compiled, self.use_ref_model, self.chunk_size = beta, compiled, use_ref_model, chunk_size
        self.epsilon_low, self.epsilon_high, self.loss_type = epsilon_low, epsilon_high, loss_type
        self.max_completion_length, self.importance_sampling_level = max_completion_length, importance_sampling_level
        self.temperature, self.delta, self.use_bias_correction_kl = temperature, delta, use_bias_correction_kl
        self.impl = impl
        self.options = RLSDOptions(lam=lam, eps_w=eps_w, negative_only=negative_only, eps_low=epsilon_low,
                                   eps_high=epsilon_high, dual_clip=delta,
                                   kl_coef=beta if self._kl_active() else 0.0, kl_type="k3")
        self.last_metrics = {}

    def _kl_active(self):
        return self.beta != 0.0 and self.use_ref_model

    def _normalizer(self, attention_mask, num_items_in_batch):
        B = attention_mask.shape[0]
        if self.loss_type == "dapo":
            return dapo_normalizer(attention_mask, num_items_in_batch)
        if self.loss_type == "grpo":
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
        if kl_active and ref_per_token_logps is None:
            ref_per_token_logps = self._logprobs(ref_input, ref_weight, ref_bias, selected_token_ids)
        if vllm_is_ratio is not None:
            if kl_active:
                raise NotImplementedError("vllm_is_ratio with beta != 0 is not provided (Liger leaves the KL term "
                                          "unweighted)")
            vllm_is_ratio = (vllm_is_ratio.unsqueeze(-1) if vllm_is_ratio.dim() == 1 else vllm_is_ratio)
            vllm_is_ratio = vllm_is_ratio.expand(selected_token_ids.shape)
        teacher_hidden = teacher_input
        if self.options.needs_teacher and teacher_logprobs is None and teacher_weight is not None:
            teacher_logprobs = self._logprobs(teacher_input, teacher_weight, teacher_bias, selected_token_ids)
            teacher_hidden = None
        loss, metrics = rlsd_loss(
            _input, lin_weight, selected_token_ids, advantages, attention_mask, teacher_hidden=teacher_hidden,
            teacher_logprobs=teacher_logprobs, bias=bias, old_logprobs=old_per_token_logps,
            ref_logprobs=ref_per_token_logps if kl_active else None, temperature=self.temperature,
            options=self.options, token_weights=vllm_is_ratio, credit_mask=credit_mask,
            loss_agg=LOSS_TYPES[self.loss_type], normalizer=self._normalizer(attention_mask, num_items_in_batch),
            impl=self.impl)
        self.last_metrics = metrics
        clip_ratio = metrics["ppo_clip_frac"]
        if self.beta == 0.0:
            return loss, (clip_ratio,)
        kl = metrics["ref_kl"] if kl_active else torch.zeros_like(clip_ratio)
        return loss, (kl, clip_ratio)
