"""rlsd-kernels: fused LM-head losses for RL with verifiable rewards and self-distillation (RLSD).

The losses gather student and teacher log-probs, apply the RLSD credit, clipping and the sequence
advantage, and return gradients for the hidden states and the LM head, in one chunked sweep that
never holds the [tokens x vocabulary] logits.
"""

from .api import FusedLinearRLSDLoss, available_impls, fused_linear_logprobs, opsd_loss, rlsd_loss
from .ops.vocab_parallel import VocabParallel
from .options import RLSDOptions

__all__ = ["rlsd_loss", "opsd_loss", "fused_linear_logprobs", "FusedLinearRLSDLoss", "RLSDOptions",
           "available_impls", "VocabParallel"]
__version__ = "0.1.0"
