"""Child process of the memory probe: inputs, one fwd+bwd, peak resident set above the inputs."""

import json
import sys

from benchmarks.inputs import Shape, make_inputs
from benchmarks.measure import peak_rss_bytes, reset_peak_rss
from benchmarks.providers import providers


def main(provider, N, H, V, dtype):
    impl = provider.removeprefix("rlsd-")
    x = make_inputs(Shape(int(N), int(H), int(V), dtype))
    step = providers([impl])[provider](x)
    before = reset_peak_rss()
    step()
    print(json.dumps({"peak_above_inputs": peak_rss_bytes() - before}))


if __name__ == "__main__":
    main(*sys.argv[1:])
