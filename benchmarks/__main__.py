"""`python -m benchmarks`: the benchmark suite (benchmarks/suite.py, benchmarks/README.md)."""

from benchmarks.suite import main

main()
