"""Child process of one timing case: every provider and mode at one shape, side by side.

    python -m benchmarks.timecase '{"providers": [...], "modes": [...], "N": .., "H": .., "V": ..,
                                    "dtype": "float32", "device": "cpu", "reps": 3, "warmup": 1}'

All providers share one set of inputs; each (provider, mode) step is warmed up (a provider that
raises is reported with its error, not timed), then the steps are timed round-robin
(:func:`benchmarks.measure.time_interleaved`). With ``"memory": true`` (CUDA, where the allocator
counts exactly what each step allocates) each provider's forward+backward peak above what is
allocated before it is measured in the same process, after the timing. Prints one JSON line:
{"times": {provider: {mode: summary}}, "failed": {provider: reason}, "memory": {provider: bytes}}.
"""

import json
import sys

import torch

from benchmarks.inputs import Shape, make_inputs
from benchmarks.measure import peak_bytes, reset_peak, time_interleaved, time_once
from benchmarks.providers import registry, step


def run(spec):
    device = torch.device(spec["device"])
    shape = Shape(int(spec["N"]), int(spec["H"]), int(spec["V"]), spec["dtype"])
    reg = registry()
    x = make_inputs(shape, device)
    steps, failed = {}, {}
    for name in spec["providers"]:
        try:
            case = reg[name].build(x)
            mine = {(name, mode): step(case, mode) for mode in spec["modes"]}
            for _ in range(int(spec.get("warmup", 1))):
                for s in mine.values():
                    time_once(s, device)
            steps.update(mine)
        except Exception as e:  # a peer that does not run here: say why
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            x["hidden"].grad = x["weight"].grad = None
    times = time_interleaved(steps, int(spec["reps"]), warmup=0, device=device)
    out = {}
    for (name, mode), t in times.items():
        out.setdefault(name, {})[mode] = t
    memory = {}
    if spec.get("memory"):
        for name in spec["providers"]:
            if name not in failed:
                full = step(reg[name].build(x), "full")
                before = reset_peak(device)
                time_once(full, device)
                memory[name] = peak_bytes(device) - before
                del full
    return {"times": out, "failed": failed, "memory": memory}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
