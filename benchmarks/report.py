"""The suite's outputs: CSV rows (in the style of Liger-Kernel's benchmark data), Markdown tables,
PNG plots. Everything here reads rows; nothing measures."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

COLUMNS = [
    "kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit",
    "x_name", "x_label", "x_value", "y_value_50", "y_value_20", "y_value_80",
    "ratio_to_floor", "ratio_to_eager", "status",
    "extra_benchmark_config_str", "device_name", "timestamp", "rlsd_kernels_version", "provider_version",
]
MODE_LABEL = {"forward": "fwd", "backward": "bwd", "full": "fwd+bwd"}


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v):
    return None if v in ("", None) else float(v)


def series_key(row):
    cfg = json.loads(row["extra_benchmark_config_str"])
    return cfg["series"]


def _index(rows):
    """{(series, N, provider, mode, metric): row}"""
    return {(series_key(r), int(r["x_value"]), r["kernel_provider"], r["kernel_operation_mode"], r["metric_name"]): r
            for r in rows}


def _fmt_ms(row):
    v = _num(row["y_value_50"]) if row else None
    return "—" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}")


def markdown(rows, default_provider=None, order=()):
    """Per series and token count: one row per provider, time per mode, ratios, peak memory
    (providers in ``order``, then any others in row order)."""
    idx = _index(rows)
    out = []
    by_series = defaultdict(set)
    providers = list(order)
    for r in rows:
        by_series[series_key(r)].add(int(r["x_value"]))
        if r["kernel_provider"] not in providers:
            providers.append(r["kernel_provider"])
    for series in by_series:
        cfg = next(json.loads(r["extra_benchmark_config_str"]) for r in rows if series_key(r) == series)
        head = f"{series}: H={cfg['H']} V={cfg['V']} {cfg['dtype']}"
        for N in sorted(by_series[series]):
            timed = [p for p in providers if (series, N, p, "full", "time") in idx]
            if not any(idx[(series, N, p, "full", "time")]["status"] == "ok" for p in timed):
                continue
            r0 = idx[(series, N, timed[0], "full", "time")]
            out.append(f"\n### {head}, N={N} tokens ({json.loads(r0['extra_benchmark_config_str'])['reps']} reps, "
                       f"median ms, p20-p80 for fwd+bwd)\n")
            out.append("| provider | fwd ms | bwd ms | fwd+bwd ms | x GEMM floor | x eager | peak MiB | status |")
            out.append("|---|---|---|---|---|---|---|---|")
            for p in timed:
                full = idx[(series, N, p, "full", "time")]
                mem = idx.get((series, N, p, "full", "memory"))
                name = f"{p} (default)" if p == default_provider else p
                if full["status"] != "ok":
                    mem_s = _fmt_mem(mem)
                    out.append(f"| {name} | — | — | — | — | — | {mem_s} | {full['status']} |")
                    continue
                f20, f80 = _num(full["y_value_20"]), _num(full["y_value_80"])
                fwd, bwd = idx.get((series, N, p, "forward", "time")), idx.get((series, N, p, "backward", "time"))
                ratio = lambda k: "—" if full[k] in ("", None) else f"{float(full[k]):.2f}"  # noqa: E731
                out.append(f"| {name} | {_fmt_ms(fwd)} | {_fmt_ms(bwd)} | {_fmt_ms(full)} ({f20:.0f}-{f80:.0f}) | "
                           f"{ratio('ratio_to_floor')} | {ratio('ratio_to_eager')} | {_fmt_mem(mem)} | ok |")
        mem_ns = sorted(N for N in by_series[series]
                        if any((series, N, p, "full", "memory") in idx for p in providers))
        if mem_ns:
            out.append(f"\n### {head}: peak memory above the inputs, fwd+bwd, MiB (fresh process per case)\n")
            out.append("| provider | " + " | ".join(f"N={N}" for N in mem_ns) + " | max/min |")
            out.append("|---|" + "---|" * (len(mem_ns) + 1))
            for p in providers:
                cells = [idx.get((series, N, p, "full", "memory")) for N in mem_ns]
                if not any(cells):
                    continue
                vals = [_num(c["y_value_50"]) for c in cells if c and c["status"] == "ok"]
                spread = f"{max(vals) / min(vals):.2f}" if len(vals) > 1 and min(vals) > 0 else "—"
                name = f"{p} (default)" if p == default_provider else p
                out.append(f"| {name} | " + " | ".join(_fmt_mem(c) for c in cells) + f" | {spread} |")
    return "\n".join(out).strip() + "\n"


def contracts(rows):
    """A Markdown list: each provider's version and, where it differs from the kernel's, its contract."""
    seen = {}
    for r in rows:
        cfg = json.loads(r["extra_benchmark_config_str"])
        seen.setdefault(r["kernel_provider"], (r["provider_version"], cfg.get("contract", ""), r["status"]))
    lines = [f"- `{p}`: {version or 'not installed'}" + (f"; {contract}" if contract else "")
             for p, (version, contract, _) in seen.items()]
    return "\n### Providers\n\n" + "\n".join(lines) + "\n" if lines else ""


def _fmt_mem(row):
    """MiB, or why not: the out-of-memory estimate and failures in full, the rest in a word."""
    if row is None:
        return "—"
    s = row["status"]
    if s == "ok":
        return f"{float(row['y_value_50']):.0f}"
    if s.startswith(("out of memory", "failed")):
        return s
    return s.split(":")[0]  # "not run", "skipped" (the reason is in the CSV and the status column)


def plots(rows, folder):
    """time_<series>.png (one panel per mode) and memory_<series>.png: value against tokens per provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ok = [r for r in rows if r["status"] == "ok"]
    for series in dict.fromkeys(series_key(r) for r in ok):
        mine = [r for r in ok if series_key(r) == series]
        cfg = json.loads(mine[0]["extra_benchmark_config_str"])
        title = f"{series}: H={cfg['H']} V={cfg['V']} {cfg['dtype']} ({mine[0]['device_name']})"
        for metric, unit in (("time", "ms"), ("memory", "MiB")):
            data = [r for r in mine if r["metric_name"] == metric]
            if not data:
                continue
            modes = [m for m in MODE_LABEL if any(r["kernel_operation_mode"] == m for r in data)]
            fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
            for ax, mode in zip(axes[0], modes):
                for p in dict.fromkeys(r["kernel_provider"] for r in data):
                    pts = sorted((int(r["x_value"]), float(r["y_value_50"]), float(r["y_value_20"]),
                                  float(r["y_value_80"])) for r in data
                                 if r["kernel_provider"] == p and r["kernel_operation_mode"] == mode)
                    if not pts:
                        continue
                    x, y, lo, hi = zip(*pts)
                    ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                                marker="o", capsize=3, label=p, linestyle="--" if p == "gemm-floor" else "-")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("tokens N")
                ax.set_ylabel(f"{metric} ({unit})" + ("" if metric == "time" else " above inputs"))
                ax.set_title(f"{metric}, {MODE_LABEL[mode]}")
                ax.grid(True, which="both", alpha=0.3)
            axes[0][-1].legend(fontsize=7, loc="best")
            fig.suptitle(title, fontsize=9)
            fig.tight_layout()
            path = f"{folder}/{metric}_{series}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def checks(rows, default_provider, shape=(2048, 512, 32768)):
    """The issue's acceptance figures where the run has them: lines of text."""
    idx = _index(rows)
    N, H, V = shape
    lines = []
    series = [s for s in dict.fromkeys(series_key(r) for r in rows)
              if (lambda c: (c["H"], c["V"]) == (H, V))(json.loads(next(
                  r for r in rows if series_key(r) == s)["extra_benchmark_config_str"]))]
    for s in series:
        full = {p: idx.get((s, N, p, "full", "time")) for p in (default_provider, "gemm-floor", "eager", "liger-grpo")}
        if all(r and r["status"] == "ok" for r in full.values()):
            t = {p: float(r["y_value_50"]) for p, r in full.items()}
            floor = t["gemm-floor"]
            lines.append(f"N={N} H={H} V={V} fwd+bwd: {default_provider} {t[default_provider] / floor:.2f}x floor "
                         f"(target <= 1.3), {t[default_provider] / t['eager']:.2f}x eager (target <= 1), "
                         f"liger-grpo {t['liger-grpo'] / floor:.2f}x floor ({t[default_provider] / t['liger-grpo']:.2f}x "
                         "of it; target < 1)")
        for p in (default_provider, "eager"):
            mem = sorted((int(r["x_value"]), float(r["y_value_50"])) for k, r in idx.items()
                         if k[0] == s and k[2] == p and k[4] == "memory" and r["status"] == "ok")
            if len(mem) > 1 and mem[0][1] > 0:
                lines.append(f"H={H} V={V} peak memory {p}: {mem[0][1]:.0f} MiB at N={mem[0][0]} -> "
                             f"{mem[-1][1]:.0f} MiB at N={mem[-1][0]} ({mem[-1][1] / mem[0][1]:.2f}x"
                             + ("; target <= 1.5x)" if p == default_provider else ")"))
    return lines
