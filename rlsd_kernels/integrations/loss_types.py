"""The ``loss_type`` names of TRL's GRPOTrainer and Liger-Kernel's GRPO loss, as (``loss_agg``,
``policy_loss``) of this library.

- ``grpo``, ``sapo``:           mean over sequences of each sequence's token mean (``seq-mean-token-mean``)
- ``bnpo``, ``dapo``, ``cispo``, ``vespo``: sum over tokens / number of valid tokens (``token-mean``; the
                                denominators of the peers differ only in how they count across
                                processes, see each adapter)
- ``dr_grpo``, ``luspo``:       sum over tokens / (sequences x longest response), resp. / sequences
                                (``seq-mean-token-sum-norm`` with the normaliser the adapter gives)

``cispo``, ``sapo`` and ``vespo`` are also surrogates (``RLSDOptions.policy_loss``); the others use PPO's.
"""

import contextlib
import re

import torch

from ..math import LOG_RATIO_CLAMP, VESPO_LOG_W_MIN

LOSS_TYPES = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
              "dr_grpo": "seq-mean-token-sum-norm", "cispo": "token-mean", "sapo": "seq-mean-token-mean",
              "vespo": "token-mean", "luspo": "seq-mean-token-sum-norm"}


def policy_loss(loss_type: str) -> str:
    """The surrogate (``RLSDOptions.policy_loss``) of a peer's ``loss_type``."""
    return loss_type if loss_type in ("cispo", "sapo", "vespo") else "ppo"


def rollout_weights(ratio, mask, loss_type: str):
    """A peer's vLLM importance-sampling ratio ([B, T], [B, 1] or [B]) as per-token
    ``rollout_is_weights`` [B, T]. For VESPO the peers add the sum of ``clamp(log r, log 1e-8, 20)``
    over every given position of a sequence to its log-weight; that sum S_b is spread here as
    exp(S_b / n_b) over the n_b valid tokens (the loss sums log-weights over valid tokens)."""
    if ratio is None:
        return None
    ratio = ratio.unsqueeze(-1) if ratio.dim() == 1 else ratio
    if loss_type == "vespo":
        total = torch.log(ratio).clamp(VESPO_LOG_W_MIN, LOG_RATIO_CLAMP).sum(-1, keepdim=True)
        ratio = torch.exp(total / mask.to(total.dtype).sum(-1, keepdim=True).clamp(min=1.0))
    return ratio.expand(mask.shape)


@contextlib.contextmanager
def callers_names(names: dict):
    """Errors raised inside name the caller's own arguments: each whole word ``ours`` of ``names``
    (ours -> theirs) in the message is replaced by ``theirs``, same exception type."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    try:
        yield
    except (ValueError, TypeError, NotImplementedError) as exc:
        message = pattern.sub(lambda m: names[m.group(1)], str(exc))
        if message == str(exc):
            raise
        raise type(exc)(message) from exc
