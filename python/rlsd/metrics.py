"""Per-step metrics as JSONL (optionally TensorBoard too) and a PNG of the curves."""

from __future__ import annotations

import json
import math
import os


class MetricsLog:
    """Appends one JSON object per record to ``path``; mirrors scalars to TensorBoard if asked.

    The first record a run logs first drops the records of its step and later ones, left by an
    earlier run in the same directory that was interrupted or is being resumed: each step is in
    the log once. Each record is fsynced, so a checkpoint never holds a step the log has lost.
    """

    def __init__(self, path: str, tensorboard_dir: str = ""):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.started = False
        self.tb = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            self.tb = SummaryWriter(tensorboard_dir)

    def log(self, record: dict) -> None:
        if not self.started:
            self.truncate_after(record["step"] - 1)
            self.started = True
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run rewrites them) and a last line cut short by a
        kill; the file is replaced atomically."""
        if not os.path.exists(self.path):
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(line for line, record in _lines(self.path) if record.get("step", 0) <= step)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _lines(path: str) -> list:
    """(line, record) of each record; a last line without its newline that does not parse (a write
    cut short) is left out, any other bad line is an error naming the file and line."""
    with open(path) as f:
        lines = f.readlines()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((line if line.endswith("\n") else line + "\n", json.loads(line)))
        except ValueError:
            if i == len(lines) and not line.endswith("\n"):
                break
            raise ValueError(f"{path}:{i}: not a JSON record") from None
    return out


def read_jsonl(path: str) -> list:
    return [record for _, record in _lines(path)]


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
