"""rlsd-kernels' layout: the kernel library (rlsd_kernels) and the thin trainer (python/rlsd, command
`rlsd`); the metadata and dependency ranges are in pyproject.toml.

The C++ epilogues in csrc/ are compiled on first use with torch's extension tooling (ninja), cached;
see rlsd_kernels/ops/cpp.py. The wheel carries their source under share/rlsd-kernels/csrc.
"""

from setuptools import find_namespace_packages, find_packages, setup

# The shipped warm starts are folders of data (no __init__.py): setuptools wants each declared as a
# (namespace) package holding its files, or it warns that an importable folder is left out.
WARMSTARTS = find_namespace_packages("python", include=["rlsd.demo.warmstarts", "rlsd.demo.warmstarts.*"])

setup(
    packages=find_packages(include=["rlsd_kernels", "rlsd_kernels.*"]) + find_packages("python") + WARMSTARTS,
    package_dir={"rlsd": "python/rlsd"},
    package_data={"rlsd_kernels": ["ops/CONTRACT.md"], **{name: ["*.json", "*.safetensors"] for name in WARMSTARTS}},
    data_files=[("share/rlsd-kernels/csrc", ["csrc/epilogue.cpp"])],
)
