"""The ``loss_type`` names of TRL's GRPOTrainer and Liger-Kernel's GRPO loss, as ``loss_agg`` modes.

- ``grpo``:          mean over sequences of each sequence's token mean (``seq-mean-token-mean``)
- ``bnpo``, ``dapo``: sum over tokens / number of valid tokens (``token-mean``; the denominators of
                     the peers differ only in how they count across processes, see each adapter)
- ``dr_grpo``:       sum over tokens / (sequences x longest response) (``seq-mean-token-sum-norm``)
"""

LOSS_TYPES = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
              "dr_grpo": "seq-mean-token-sum-norm"}
