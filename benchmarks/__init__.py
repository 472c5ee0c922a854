"""Benchmarks of the fused RLSD losses against eager PyTorch, the peers and the GEMM floor."""
