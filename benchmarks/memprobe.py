"""Child process of the memory probe: inputs, one step of a provider, peak above the inputs.

    python -m benchmarks.memprobe '{"provider": "rlsd-cpp", "N": 2048, "H": 512, "V": 32768,
                                    "dtype": "float32", "mode": "full", "device": "cpu"}'

Prints one JSON line: {"peak_above_inputs": bytes, "seconds": time of the measured step}.
A warm-up at a few tokens (same H and V) first loads extensions and compiles what the provider
compiles, so neither counts; freed memory is then handed back to the OS before the measurement.
"""

import json
import sys

import torch

from benchmarks.inputs import Shape, make_inputs
from benchmarks.measure import peak_bytes, release_free_memory, reset_peak, time_once
from benchmarks.providers import registry, step

WARMUP_TOKENS = 256


def main(spec):
    device = torch.device(spec["device"])
    provider = registry()[spec["provider"]]
    shape = Shape(int(spec["N"]), int(spec["H"]), int(spec["V"]), spec["dtype"])
    mode = spec.get("mode", "full")

    warm = make_inputs(Shape(min(shape.N, WARMUP_TOKENS), shape.H, shape.V, shape.dtype), device)
    step(provider.build(warm), mode)()
    del warm
    release_free_memory()

    x = make_inputs(shape, device)
    before = reset_peak(device)
    seconds = time_once(step(provider.build(x), mode), device)
    print(json.dumps({"peak_above_inputs": peak_bytes(device) - before, "seconds": seconds}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
