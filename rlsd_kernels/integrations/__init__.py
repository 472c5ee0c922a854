"""Adapters that let other RL trainers use the fused RLSD loss.

Each module imports its peer only when it is imported itself (``import rlsd_kernels`` never loads
them):

- :mod:`rlsd_kernels.integrations.liger`: ``FusedLinearRLSDLigerLoss``, a drop-in for Liger-Kernel's
  ``LigerFusedLinearGRPOLoss`` (needs nothing beyond torch).
- :mod:`rlsd_kernels.integrations.verl`: a veRL policy loss registered as ``"rlsd"`` and the fused
  ``logprobs_from_hidden`` primitive (veRL is needed only for ``register()``).
- :mod:`rlsd_kernels.integrations.trl`: ``RLSDTrainer``, a TRL ``GRPOTrainer`` whose loss is
  ``rlsd_loss`` with a self-teacher that sees a privileged dataset column (needs trl).

See README.md in this folder for examples and the semantic differences to each peer.
"""
