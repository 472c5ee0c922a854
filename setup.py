"""rlsd-kernels' layout: the kernel library (rlsd_kernels) and the thin trainer (python/rlsd, command
`rlsd`); the metadata and dependency ranges are in pyproject.toml.

The C++ epilogues in csrc/ are compiled on first use with torch's extension tooling (ninja), cached;
see rlsd_kernels/ops/cpp.py. The wheel carries their source under share/rlsd-kernels/csrc.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["rlsd_kernels", "rlsd_kernels.*"]) + find_packages("python"),
    package_dir={"rlsd": "python/rlsd"},
    package_data={"rlsd_kernels": ["ops/CONTRACT.md"],
                  "rlsd.demo": ["warmstarts/manifest.json", "warmstarts/*/*"]},
    data_files=[("share/rlsd-kernels/csrc", ["csrc/epilogue.cpp"])],
)
