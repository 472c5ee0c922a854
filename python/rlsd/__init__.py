"""rlsd: a thin trainer for GRPO, OPSD, GRPO+OPSD and RLSD on tasks with a verifiable answer.

It samples rollouts, scores them with a verifier, builds group advantages, asks the same network
with privileged context for its log-probs, and calls the fused losses of ``rlsd_kernels`` on the
last hidden states and the LM head. Start with ``rlsd.loop.Trainer`` or the ``rlsd`` command.
"""

__version__ = "0.1.0"
