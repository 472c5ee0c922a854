"""Re-run named mutants of a mutmut run (docs/mutation.md) on chosen test files, one forked pytest per
mutant from one warmed process (torch and the test modules imported once).

    cd mutants && python ../tests/rerun_mutants.py NAMES_FILE TEST_FILE... [-- PYTEST_ARGS]

NAMES_FILE: one mutant name a line (``mutmut results``). Run from mutmut's mutants/ folder, whose
rlsd_kernels holds every mutant behind a switch read at call time (MUTANT_UNDER_TEST). Prints
``killed`` or ``survived`` per mutant and the counts.
"""

import os
import sys
import time


def main(argv):
    names_file, rest = argv[0], argv[1:]
    extra = rest[rest.index("--") + 1:] if "--" in rest else []
    tests = rest[: rest.index("--")] if "--" in rest else rest
    names = [line.split(":")[0].strip() for line in open(names_file) if line.strip()]
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    import pytest  # noqa: F401
    import rlsd_kernels  # noqa: F401
    import torch  # noqa: F401

    assert os.path.dirname(rlsd_kernels.__file__).startswith(os.getcwd()), rlsd_kernels.__file__
    args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"] + tests + extra

    def run(name):
        pid = os.fork()
        if pid == 0:
            os.environ["MUTANT_UNDER_TEST"] = name
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os._exit(int(pytest.main(args)))
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert run("") == 0, "the tests fail without a mutant"
    assert run("fail") != 0, "the mutated package is not the one imported"  # every trampoline raises
    counts = {"killed": 0, "survived": 0}
    for name in names:
        start = time.time()
        rc = run(name)
        verdict = "survived" if rc == 0 else "killed"  # as mutmut counts: 1 a test failed, 2 an error
        counts[verdict] += 1
        print(f"{verdict:8s} {name} (pytest exit {rc}, {time.time() - start:.1f}s)", flush=True)
    print(counts)


if __name__ == "__main__":
    main(sys.argv[1:])
