"""RLSD on veRL's own driver (veRL 0.9.1): ``python -m rlsd.verl [hydra overrides]``.

Needs veRL (its own environment, requirements-verl.txt) and ``rlsd_kernels``; nothing else of the
``rlsd`` trainer. See trainer.py for the driver and config/rlsd_trainer.yaml for the settings.
"""
