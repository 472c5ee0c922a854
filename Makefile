# `make demo` runs the main job, `make test` the tests; both build .venv first.
PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: venv test demo bench bench-long clean

venv: .venv/.installed

.venv/.installed: requirements.txt requirements-dev.txt benchmarks/requirements.txt setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -r benchmarks/requirements.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) -m benchmarks.fused_vs_eager

bench: venv
	$(PY) -m benchmarks

bench-long: venv
	$(PY) -m benchmarks --long-trace

clean:
	rm -rf .venv build *.egg-info
