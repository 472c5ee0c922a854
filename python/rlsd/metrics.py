"""Per-step metrics as JSONL (optionally TensorBoard too) and a PNG of the curves."""

from __future__ import annotations

import json
import math
import os


class MetricsLog:
    """Appends one JSON object per record to ``path``; mirrors scalars to TensorBoard if asked."""

    def __init__(self, path: str, tensorboard_dir: str = ""):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.tb = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            self.tb = SummaryWriter(tensorboard_dir)

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites them)."""
        if not os.path.exists(self.path):
            return
        keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


PLOTTED = ("reward_mean", "accuracy", "eval_accuracy", "loss", "credit_clip_frac", "delta_mean",
           "entropy_mean", "approx_kl", "response_len", "time_step")


def plot_metrics(jsonl_path: str, png_path: str, keys=PLOTTED) -> str:
    """One small panel per metric present in the log, against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(jsonl_path)
    present = [k for k in keys if any(k in r for r in records)]
    cols = 3
    rows = max(1, math.ceil(len(present) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
