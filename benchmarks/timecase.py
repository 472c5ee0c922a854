"""Child process of one timing case: every provider and mode at one shape, side by side.

    python -m benchmarks.timecase '{"providers": [...], "modes": [...], "N": .., "H": .., "V": ..,
                                    "dtype": "float32", "device": "cpu", "reps": 3, "warmup": 1}'

All providers share one set of inputs; each (provider, mode) step is warmed up (a provider that
raises is reported with its error, not timed), then the steps are timed round-robin
(:func:`benchmarks.measure.time_interleaved`). Prints one JSON line:
{"times": {provider: {mode: summary}}, "failed": {provider: reason}}.
"""

import json
import sys

import torch

from benchmarks.inputs import Shape, make_inputs
from benchmarks.measure import time_interleaved, time_once
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
    return {"times": out, "failed": failed}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
