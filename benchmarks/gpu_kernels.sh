#!/usr/bin/env bash
# The kernel checks of a CUDA machine in one command (a few minutes on one H100/H200):
#   bash benchmarks/gpu_kernels.sh [RESULTS_DIR]      (default: benchmarks/results/gpu)
# 1. the kernel tests on the GPU (pytest runs the Triton backends there when CUDA is present);
# 2. the suite's GPU target heads, bf16, side by side: the RLSD loss and the log-prob primitive,
#    with every peer that is installed (the others' rows say "not installed");
# 3. the per-sweep profile of the fused loss.
# Peers that need packages of their own (install them first where the machine allows):
#   pip install --no-deps verl==0.9.1 quack-kernels==0.6.5 nvidia-cutlass-dsl==4.8.1 \
#       nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi torch-c-dlpack-ext einops
# Outputs: RESULTS_DIR/{tests.txt, rlsd_loss/, logprobs/, profile.txt, machine.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(liger|cut-cross|verl|quack|nvidia-cutlass-dsl |trl) '
} > "$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"

status=0
"$PY" -m pytest -q -p no:cacheprovider tests --ignore=tests/trainer --ignore=tests/integrations \
    -x -q 2>&1 | tail -30 > "$OUT_DIR/tests.txt" || status=1
tail -3 "$OUT_DIR/tests.txt"

for kernel in rlsd_loss logprobs; do
  "$PY" -m benchmarks --device cuda --dtype bfloat16 --gpu-targets --kernel "$kernel" \
      --modes full --reps 5 --results "$OUT_DIR/$kernel" > "$OUT_DIR/$kernel.log" 2>&1 || status=1
  tail -40 "$OUT_DIR/$kernel.log"
done

"$PY" -m benchmarks.gpu_profile > "$OUT_DIR/profile.txt" 2>&1 || status=1
tail -20 "$OUT_DIR/profile.txt"
exit $status
