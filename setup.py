"""rlsd-kernels: the kernel library (rlsd_kernels) and the thin trainer (python/rlsd, command `rlsd`).

The C++ epilogues in csrc/ are compiled on first use with torch's extension tooling (ninja),
cached; see rlsd_kernels/ops/cpp.py. Install with ``pip install --no-build-isolation -e .``
after ``pip install torch==2.13.0`` (an isolated build would fetch another torch).
"""

from setuptools import find_packages, setup

setup(
    name="rlsd-kernels",
    version="0.1.0",
    description="Fused LM-head losses for RL with verifiable rewards and self-distillation (RLSD)",
    python_requires=">=3.10",
    packages=find_packages(include=["rlsd_kernels", "rlsd_kernels.*"]) + find_packages("python"),
    package_dir={"rlsd": "python/rlsd"},
    package_data={"rlsd_kernels": ["ops/CONTRACT.md"]},
    data_files=[("share/rlsd-kernels/csrc", ["csrc/epilogue.cpp"])],
    install_requires=["torch==2.13.0", "numpy"],
    extras_require={"triton": ["triton==3.7.1"], "test": ["pytest", "hypothesis", "ninja", "pybind11"]},
    entry_points={"console_scripts": ["rlsd = rlsd.cli:main"]},
)
