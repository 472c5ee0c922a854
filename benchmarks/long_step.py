"""One RLSD training step on a long response: `make bench-long-step` (`python -m benchmarks.long_step`).

The model has the Qwen2.5-0.5B architecture and vocabulary (Qwen2Config: H 896, V 151936, 14 heads
/ 2 KV heads, FFN 4864, tied embeddings), random weights in ``--dtype`` and ``--layers`` decoder
layers (24 in the real model); ``--shape tiny`` is a small stand-in for smoke runs. One prompt, one response of each ``--lengths``; the trainer's own code does the step
(python/rlsd): gradient checkpointing, SDPA attention, the student's hidden states at the response
positions, a live teacher (privileged prompt + the same response, no grad, hidden states only), the
LM-head loss, then the student's backward and AdamW. Each (length, head) runs in a fresh process,
after a warm-up step at 64 tokens (optimizer state allocated, extensions loaded): the time and the
peak memory of each part (CPU: resident set, VmHWM reset at the part's start; CUDA:
``max_memory_allocated``, reset likewise); the step's peak is the largest. The fused head is ``rlsd_loss``'s default impl; the eager head
(``impl="eager"``) runs where its estimated need fits, else its row says "out of memory (needs N
GiB)". That need is the suite's estimate of the eager loss (benchmarks/providers.py) plus weights,
gradients and AdamW state; once eager has run at one length, the loss's share is scaled by the
ratio measured there (at least 1) for the lengths after it. ``--fit`` then doubles the response of
each head from its longest measured length until a step fails or is refused: the longest that fits.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import resource
import sys
import time

import torch

QWEN = dict(hidden_size=896, vocab_size=151936, num_attention_heads=14, num_key_value_heads=2,
            intermediate_size=4864, tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu")
SHAPES = {"qwen2.5-0.5b": QWEN,
          "tiny": dict(QWEN, hidden_size=64, vocab_size=512, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=128)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PROMPT_TOKENS = 64        # the student's prompt
PRIVILEGED_TOKENS = 192   # the teacher's prompt: the same prompt plus a reference
WARMUP_TOKENS = 64
PARTS = ("student_forward", "teacher", "loss", "student_backward", "optimizer")
HEADS = {"fused": "auto", "eager": "eager"}
FIELDS = ["response_tokens", "head", "status", "step_s", *[f"{p}_s" for p in PARTS], "peak_gib",
          *[f"{p}_peak_gib" for p in PARTS], "peak_above_state_gib", "state_gib", "maxrss_gib", "peak_part",
          "attention", "layers", "shape", "dtype", "device", "device_name", "threads", "torch", "timestamp", "note"]


def model_config(layers: int, length: int, shape: str = "qwen2.5-0.5b"):
    """Qwen2.5-0.5B's shape (or ``shape``) with ``layers`` layers; positions cover prompt + response.
    With default RoPE the position limit changes no computation (see docs/long-traces.md for real models)."""
    from transformers import Qwen2Config
    return Qwen2Config(num_hidden_layers=layers, max_position_embeddings=max(32768, PRIVILEGED_TOKENS + length),
                       rope_theta=1e6, use_cache=False, **SHAPES[shape])


def state_bytes(layers: int, shape: str = "qwen2.5-0.5b", dtype: str = "float32") -> int:
    """Weights, gradients and AdamW's two moments, all in ``dtype``."""
    from transformers import Qwen2ForCausalLM
    with torch.device("meta"):
        n = sum(p.numel() for p in Qwen2ForCausalLM(model_config(layers, 0, shape)).parameters())
    return 4 * DTYPES[dtype].itemsize * n


def eager_loss_bytes(length: int, shape: str = "qwen2.5-0.5b") -> int:
    """The suite's estimate of the eager loss's peak above its inputs at this head."""
    from benchmarks.inputs import Shape
    from benchmarks.providers import registry
    dims = SHAPES[shape]
    return registry()["eager"].extra_bytes(Shape(length, dims["hidden_size"], dims["vocab_size"]))


# -------------------------------------------------------------------------------------------- child

class Step:
    """The model, its optimizer and the teacher; ``run(length)`` is one training step, timed by part."""

    def __init__(self, layers: int, length: int, impl: str, device: torch.device, seed: int = 0,
                 shape: str = "qwen2.5-0.5b", dtype: str = "float32"):
        from transformers import Qwen2ForCausalLM
        from rlsd.config import ModelConfig, TeacherConfig
        from rlsd.model import prepare_model
        from rlsd.teacher import Teacher
        torch.manual_seed(seed)
        self.device, self.impl, self.seed = device, impl, seed
        model = Qwen2ForCausalLM(model_config(layers, length, shape))
        self.model = prepare_model(model, ModelConfig(dtype=dtype, gradient_checkpointing=True), device)
        self.teacher = Teacher(self.model, TeacherConfig(sync="live"))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        self.marks = {}

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _part(self, name, t0, peak, reset):
        self._sync()
        self.marks[name] = (time.perf_counter() - t0, peak())
        reset()
        return time.perf_counter()

    def run(self, length: int, peak=lambda: 0, reset=lambda: 0) -> dict:
        """{part: (seconds, peak bytes)} of one step on a ``length``-token response; ``reset`` starts
        the next part's peak (called after each part; the caller resets before the first)."""
        from rlsd.batch import response_hidden
        from rlsd.model import lm_head
        from rlsd_kernels import rlsd_loss
        g = torch.Generator().manual_seed(self.seed + length)
        V = self.model.config.vocab_size
        prompt = torch.randint(0, V, (PROMPT_TOKENS,), generator=g).tolist()
        privileged = prompt + torch.randint(0, V, (PRIVILEGED_TOKENS - PROMPT_TOKENS,), generator=g).tolist()
        response = torch.randint(0, V, (length,), generator=g).tolist()
        self.marks = {}
        self._sync()
        t = time.perf_counter()
        hidden, targets, mask = response_hidden(self.model, [prompt], [response], 0, self.device)
        t = self._part("student_forward", t, peak, reset)
        h_t, (weight, bias) = self.teacher.hidden([privileged], [response], 0, self.device)
        t = self._part("teacher", t, peak, reset)
        h = hidden.detach().requires_grad_()
        loss, _ = rlsd_loss(h, weight, targets, torch.ones(1, device=self.device), mask, teacher_hidden=h_t,
                            bias=bias, impl=self.impl)
        loss.backward()
        t = self._part("loss", t, peak, reset)
        hidden.backward(h.grad)
        del hidden, h, h_t
        t = self._part("student_backward", t, peak, reset)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._part("optimizer", t, peak, reset)
        return dict(self.marks)


def child(spec: dict) -> dict:
    from benchmarks.measure import peak_bytes, release_free_memory, reset_peak
    device = torch.device(spec["device"])
    step = Step(spec["layers"], spec["length"], HEADS[spec["head"]], device, shape=spec.get("shape", "qwen2.5-0.5b"),
                dtype=spec.get("dtype", "float32"))
    step.run(WARMUP_TOKENS)
    release_free_memory()
    state = reset_peak(device)
    marks = step.run(spec["length"], peak=lambda: peak_bytes(device), reset=lambda: reset_peak(device))
    peak = max(b for _, b in marks.values())
    return dict(parts={p: s for p, (s, _) in marks.items()}, part_peaks={p: b for p, (_, b) in marks.items()},
                peak=peak, state=state, peak_part=next(p for p, (_, b) in marks.items() if b >= peak),
                attention=step.model.config._attn_implementation,
                maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


# ------------------------------------------------------------------------------------------- parent

def run_case(args, length: int, head: str, env: dict, scale: float = 1.0) -> dict:
    """One (length, head) in a fresh process; eager only if ``scale`` x its estimate fits."""
    from benchmarks import measure
    from benchmarks.suite import FIT_FRACTION, gib
    row = dict(response_tokens=length, head=head, **env)
    shape, dtype = getattr(args, "shape", "qwen2.5-0.5b"), getattr(args, "dtype", "float32")
    if head == "eager":
        need = state_bytes(args.layers, shape, dtype) + scale * eager_loss_bytes(length, shape)
        budget = measure.available_bytes(args.device)
        if need > FIT_FRACTION * budget:
            return dict(row, status=f"out of memory (needs {gib(need)}, {gib(budget)} available)")
    spec = dict(layers=args.layers, length=length, head=head, device=args.device, shape=shape, dtype=dtype)
    try:
        res = measure.run_child("benchmarks.long_step", spec)
    except measure.ChildFailed as e:
        return dict(row, status=f"failed: {e}")
    row.update(status="ok", step_s=round(sum(res["parts"].values()), 2), peak_part=res["peak_part"],
               attention=res["attention"],
               peak_gib=round(res["peak"] / 2 ** 30, 2), state_gib=round(res["state"] / 2 ** 30, 2),
               peak_above_state_gib=round((res["peak"] - res["state"]) / 2 ** 30, 2),
               maxrss_gib=round(res["maxrss"] / 2 ** 30, 2))
    row.update({f"{p}_s": round(s, 2) for p, s in res["parts"].items()})
    row.update({f"{p}_peak_gib": round(b / 2 ** 30, 2) for p, b in res["part_peaks"].items()})
    return row


def longest_fit(args, rows: list, head: str, env: dict, scale: float, limit: int) -> list:
    """Rows of ``head`` at twice, four times, ... its longest ok length, up to the first that fails or
    is refused (or ``limit`` tokens): the last ok one is the longest response that fits."""
    ok = [r["response_tokens"] for r in rows if r["head"] == head and r["status"] == "ok"]
    out, length = [], 2 * max(ok) if ok else 0
    while ok and length <= limit:
        out.append(run_case(args, length, head, env, scale))
        print(json.dumps(out[-1]), flush=True)
        if out[-1]["status"] != "ok":
            break
        length *= 2
    return out


def markdown(rows: list, args, env: dict, wall: float) -> str:
    head = ["response tokens", "head", "step s", "student fwd", "teacher", "loss fwd+bwd", "student bwd",
            "optimizer", "peak GiB", "above state GiB", "peak in"]
    attention = ", ".join(sorted({r["attention"] for r in rows if r.get("attention")})) or "no step ran"
    shape = getattr(args, "shape", "qwen2.5-0.5b")
    model = "Qwen2.5-0.5B architecture and vocabulary" if shape == "qwen2.5-0.5b" else f"the {shape} shape"
    lines = [f"One RLSD training step, {model} with {args.layers} decoder "
             f"layer(s) (random weights, {getattr(args, 'dtype', 'float32')}), gradient checkpointing, attention "
             f"{attention}, live teacher; prompt {PROMPT_TOKENS} tokens, privileged prompt {PRIVILEGED_TOKENS}.",
             "",
             f"Device: {env['device_name']}; torch {env['torch']}; started {env['timestamp']}; {wall / 60:.1f} min for the cases in this table."
             + (f" {args.note}" if args.note else ""),
             "Peak: CPU resident set (VmHWM) / CUDA max allocated, of the whole process, per part (reset at each "
             "part's start; GiB after each part's time) and of the step (the largest); state = what the process "
             "held before it (weights, AdamW state, libraries).",
             "Eager's need where not run: the suite's estimate of the eager loss, scaled by measured / estimated at "
             "the last length where eager ran in the run, plus float32 weights, gradients and AdamW state.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['response_tokens']} | {r['head']} | {r['status']} |" + " |" * (len(head) - 3))
            continue
        cells = [r["response_tokens"], r["head"], r["step_s"],
                 *[f"{r[f'{p}_s']} ({r[f'{p}_peak_gib']})" for p in PARTS], r["peak_gib"],
                 r["peak_above_state_gib"], r["peak_part"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.long_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="2048,8192,16384,32768",
                    help="comma-separated response lengths, run in this order (2048: where eager fits in 24 GiB; "
                         "eager's need at other lengths is scaled by what it measured at the last one it ran)")
    ap.add_argument("--layers", type=int, default=1, help="decoder layers (Qwen2.5-0.5B has 24)")
    ap.add_argument("--heads", default="eager,fused", help="comma-separated: fused (default impl), eager")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b", help="tiny: a small stand-in for smoke runs")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights, activations and AdamW state")
    ap.add_argument("--fit", type=int, default=0, metavar="LIMIT",
                    help="then double each head's response until it fails (at most LIMIT tokens): the longest that fits")
    ap.add_argument("--results", default="benchmarks/results", help="folder for long_step.csv and .md")
    ap.add_argument("--note", default="", help="conditions of the run, copied into the table's header")
    args = ap.parse_args(argv)
    from benchmarks.suite import device_name
    env = dict(layers=args.layers, shape=args.shape, dtype=args.dtype, device=args.device,
               device_name=device_name(torch.device(args.device)),
               threads=torch.get_num_threads(), torch=torch.__version__,
               timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), note=args.note)
    rows, scale, start = [], 1.0, time.perf_counter()
    heads = args.heads.split(",")
    for length in (int(v) for v in args.lengths.split(",") if v):
        for head in heads:
            rows.append(run_case(args, length, head, env, scale))
            print(json.dumps(rows[-1]), flush=True)
            if head == "eager" and rows[-1]["status"] == "ok":  # measured / estimated, for the other lengths
                scale = max(1.0, rows[-1]["peak_above_state_gib"] * 2 ** 30 / eager_loss_bytes(length))
            rows.sort(key=lambda r: (r["response_tokens"], heads.index(r["head"])))
            text = write(rows, args, env, time.perf_counter() - start)
    if args.fit:
        for head in heads:
            rows += longest_fit(args, rows, head, env, scale, args.fit)
            rows.sort(key=lambda r: (r["response_tokens"], heads.index(r["head"])))
            text = write(rows, args, env, time.perf_counter() - start)
    print(text)


def write(rows: list, args, env: dict, wall: float) -> str:
    """long_step.csv and long_step.md under ``args.results`` (rewritten after every case)."""
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "long_step.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        w.writeheader()
        w.writerows(rows)
    text = markdown(rows, args, env, wall)
    with open(os.path.join(args.results, "long_step.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print(json.dumps(child(json.loads(sys.argv[1]))))
    else:
        main()
