"""Bench results -> JSON (with the machine), a Markdown table and PNG plots.

``sparseprune report results.json`` re-renders the table and plots from a saved JSON, so a
report can be rebuilt (or restyled) without re-running the sweep.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

SCHEMA = "sparseprune-bench/1"


def machine_info() -> dict:
    from .. import _ext

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, ""
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "isa": _ext.cpu_capability(),
        "isas_available": list(_ext.available_isas()),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": commit, "git_dirty": bool(dirty),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cuda": torch.cuda.is_available(),
    }


def write_json(results: dict, path: Path) -> None:
    results = {"schema": SCHEMA, **results}
    # allow_nan=False: the file must be valid JSON for any reader, not just Python's
    path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")


def load_json(path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a sparseprune bench result (schema {SCHEMA!r})")
    return data


def _us(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    m = results.get("machine", {})
    lines = [f"# sparseprune bench", "",
             f"{m.get('date')} | {m.get('cpu')} | kernels {m.get('isa')} | torch "
             f"{m.get('torch')} | commit {m.get('git_commit')}"
             f"{' (dirty tree)' if m.get('git_dirty') else ''} | load average at start "
             f"{m.get('load_average')}", ""]
    if results.get("limits"):
        lines += ["## Machine limits (measured in this run, best of rounds)", "",
                  "| threads | copy GB/s (read+write) | read GB/s | dense GEMM fp32 GFLOP/s | "
                  "dense GEMM bf16 GFLOP/s |", "|---|---|---|---|---|"]
        for lim in results["limits"]:
            g = lim["gemm_GFLOPs"]
            lines.append(f"| {lim['threads']} | {lim['copy_GBps']:.1f} | {lim['read_GBps']:.1f}"
                         f" | {_f(g.get('float32'))} | {_f(g.get('bfloat16'))} |")
        lines.append("")
    if results.get("results"):
        lines += summary(results)
        lines += ["## Sparse kernels vs dense F.linear", "",
                  "Times are medians of interleaved rounds (us = microseconds); speedup = dense "
                  "median / sparse median in the same dtype; useful GFLOP/s counts nonzeros, "
                  "effective counts the dense FLOPs; GB/s = (packed weights + x + y) / time; "
                  "% copy = GB/s over the copy rate; % peak = useful GFLOP/s over the dense "
                  "GEMM peak of the same dtype; spread = IQR / median of the sparse times; load "
                  "= 1-minute load average as the case finished (above the thread count: "
                  "another job shared the cores).", "",
                  "| shape | pattern | dtype | threads | batch | dense (us) | sparse (us) | "
                  "spread | speedup | useful GFLOP/s | effective GFLOP/s | GB/s | % copy | "
                  "% peak | torch sparse (us) | vs torch | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["results"]:
            base = (f"{_us(r['torch_sparse_s'])} ({r['torch_sparse'].removeprefix('torch_')})"
                    if r.get("torch_sparse_s") is not None else "-")
            lines.append(
                f"| {r['shape']} | {r['pattern']} | {r['dtype']} | {r['threads']} | "
                f"{r['batch']} | {_us(r['dense_s'])} | {_us(r['sparse_s'])} | "
                f"{r['sparse_spread']:.2f} | {_x(r['speedup_vs_dense'])} | "
                f"{r['useful_GFLOPs']:.1f} | {r['effective_GFLOPs']:.1f} | {r['GBps']:.1f} | "
                f"{_f(r.get('pct_copy_bandwidth'), 0)} | {_f(r.get('pct_gemm_peak'), 0)} | "
                f"{base} | {_x(r.get('speedup_vs_torch_sparse'))} | "
                f"{_f(r.get('load_1min'))} |")
        lines.append("")
    if results.get("break_even"):
        lines += ["## Break-even unstructured sparsity (our kernel = dense)", "",
                  "| shape | dtype | threads | batch | break-even sparsity |", "|---|---|---|---|---|"]
        for b in results["break_even"]:
            if b["sparsity"] is None:
                v = f"not reached ({b['bound']})"
            elif b["bound"] == "at or below":
                v = f"<= {b['sparsity']:.0%} (lowest measured)"
            else:
                v = f"{b['sparsity']:.1%}"
            lines.append(f"| {b['shape']} | {b['dtype']} | {b['threads']} | {b['batch']} | "
                         f"{v} |")
        lines.append("")
    if results.get("dense"):
        lines += ["## Dense baselines: F.linear fp32 vs bf16 (interleaved)", "",
                  "| shape | threads | batch | fp32 (us) | bf16 (us) | fp32 GFLOP/s | "
                  "bf16 GFLOP/s |", "|---|---|---|---|---|---|---|"]
        for d in results["dense"]:
            bf16_s = d.get("bfloat16_s")  # absent where bf16 is emulated (baseline_dtypes)
            lines.append(f"| {d['shape']} | {d['threads']} | {d['batch']} | "
                         f"{_us(d['float32_s'])} | {_us(bf16_s)} | "
                         f"{d['flops'] / d['float32_s'] / 1e9:.1f} | "
                         f"{_f(bf16_s and d['flops'] / bf16_s / 1e9)} |")
        lines.append("")
    if results.get("pack"):
        lines += ["## One-off pack cost (from_dense + validation, fp32)", "",
                  "| shape | pattern | pack (ms) | in dense batch-1 calls |", "|---|---|---|---|"]
        for p in results["pack"]:
            lines.append(f"| {p['shape']} | {p['pattern']} | {p['pack_s'] * 1e3:.2f} | "
                         f"{p['pack_in_dense_batch1_calls']:.0f} |")
        lines.append("")
    if results.get("model"):
        mm = results["model"]
        lines += [f"## Model: {mm['model']} end to end (batch x seq {mm['seq_len']}, "
                  f"{mm['threads']} threads)", "", mm["note"], "",
                  "| recipe | batch | layers on kernels | formats | dense (ms) | sparse (ms) | "
                  "speedup | Linear weight MB dense -> sparse | max abs diff vs pruned dense |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in mm["rows"]:
            lines.append(f"| {r['recipe']} | {r['batch']} | {r['swapped_layers']} | "
                         f"{'/'.join(r['formats'])} | {r['dense_s'] * 1e3:.2f} | "
                         f"{r['sparse_s'] * 1e3:.2f} | {_x(r['speedup'])} | "
                         f"{r['linear_bytes_dense'] / 1e6:.1f} -> "
                         f"{r['linear_bytes_sparse'] / 1e6:.1f} | "
                         f"{r['max_abs_diff_vs_pruned_dense']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def _shape_set(shape: str) -> str:
    from .shapes import SHAPE_SETS

    o, i = (int(v) for v in shape.split("x"))
    return next((name for name, group in SHAPE_SETS.items() if (o, i) in group), "other")


def summary(results: dict) -> list[str]:
    """Speedup vs dense per shape set x pattern x batch: min-max over the set's shapes."""
    rows = results.get("results", [])
    lines = []
    for dtype, threads in _combos(rows):
        sub = [r for r in rows if r["dtype"] == dtype and r["threads"] == threads]
        batches = sorted({r["batch"] for r in sub})
        lines += [f"## Summary: speedup vs dense, {dtype}, {threads} threads (min-max over the "
                  f"set's shapes)", "",
                  "| shapes | pattern | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "|---|---|" + "---|" * len(batches)]
        sets = list(dict.fromkeys(_shape_set(r["shape"]) for r in sub))
        for name in sets:
            in_set = [r for r in sub if _shape_set(r["shape"]) == name]
            n_shapes = len({r["shape"] for r in in_set})
            for pattern in dict.fromkeys(r["pattern"] for r in in_set):
                cells = []
                for b in batches:
                    v = [r["speedup_vs_dense"] for r in in_set
                         if r["pattern"] == pattern and r["batch"] == b]
                    cells.append("-" if not v else f"{min(v):.2f}x" if len(v) == 1
                                 else f"{min(v):.2f}-{max(v):.2f}x")
                lines.append(f"| {name} ({n_shapes}) | {pattern} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _combos(rows):
    return sorted({(r["dtype"], r["threads"]) for r in rows})


def _geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def plots(results: dict, out: Path, dpi: int = 70) -> list[Path]:
    """speedup vs sparsity (a panel per pattern family and batch) and speedup vs batch (a panel
    per shape), one pair per (dtype, threads) in the results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # plain "0.9", "2", "10" on log axes instead of 9x10^-1 labels
    plain = FuncFormatter(lambda v, _: f"{v:g}")

    def log_y(ax):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        lo, hi = ax.get_ylim()
        # within one decade the major ticks alone may be 0 or 1: label the minor ones too
        ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else FuncFormatter(lambda v, _: ""))

    rows = results.get("results", [])
    written = []
    if results.get("model"):
        written.append(_model_plot(results["model"], out, dpi, plt))
    combos = _combos(rows)
    for dtype, threads in combos:
        sub = [r for r in rows if r["dtype"] == dtype and r["threads"] == threads]
        suffix = "" if len(combos) == 1 else f"_{dtype}_{threads}t"
        title = f"{dtype}, {threads} threads, {results.get('machine', {}).get('isa')} kernels"

        # speedup vs sparsity: unstructured and n:m lines per shape; block families as the
        # geometric mean over shapes, one line per block shape, so the panel stays readable
        batches = sorted({r["batch"] for r in sub})
        kinds = [k for k in ("unstructured", "nm", "block") if any(r["kind"] == k for r in sub)]
        fig, axes = plt.subplots(len(batches), len(kinds), squeeze=False,
                                 figsize=(4.2 * len(kinds), 2.8 * len(batches)))
        for i, batch in enumerate(batches):
            for j, kind in enumerate(kinds):
                ax = axes[i][j]
                pts = [r for r in sub if r["batch"] == batch and r["kind"] == kind]
                key = "family" if kind == "block" else "shape"
                for name in sorted({r[key] for r in pts}):
                    by_s: dict[float, list[float]] = {}
                    for r in pts:
                        if r[key] == name:
                            by_s.setdefault(r["sparsity"], []).append(r["speedup_vs_dense"])
                    xs = sorted(by_s)
                    ax.plot([100 * x for x in xs], [_geomean(by_s[x]) for x in xs], "o-",
                            ms=3, lw=1, label=name.removeprefix("block "))
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
                log_y(ax)
                ax.set_title(f"{ {'nm': 'N:M'}.get(kind, kind)}, batch {batch}", fontsize=9)
                ax.set_xlabel("sparsity (%)", fontsize=8)
                ax.set_ylabel("speedup vs dense" + (" (geomean over shapes)"
                                                    if kind == "block" else ""), fontsize=8)
                ax.tick_params(labelsize=7)
                ax.legend(fontsize=6)
        fig.suptitle(f"speedup vs sparsity ({title})", fontsize=10)
        fig.tight_layout()
        path = out / f"speedup_vs_sparsity{suffix}.png"
        _save(fig, path, dpi)
        plt.close(fig)
        written.append(path)

        shapes = list(dict.fromkeys(r["shape"] for r in sub))
        cols = min(4, len(shapes))
        nrows = -(-len(shapes) // cols)
        fig, axes = plt.subplots(nrows, cols, squeeze=False, figsize=(3.6 * cols, 2.8 * nrows))
        for k, shape in enumerate(shapes):
            ax = axes[k // cols][k % cols]
            pts = [r for r in sub if r["shape"] == shape]
            for pname in dict.fromkeys(r["pattern"] for r in pts):
                line = sorted((r["batch"], r["speedup_vs_dense"]) for r in pts
                              if r["pattern"] == pname)
                ax.plot([b for b, _ in line], [v for _, v in line], "o-", ms=2, lw=0.8,
                        label=pname)
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(plain)
            log_y(ax)
            ax.set_title(shape, fontsize=9)
            ax.set_xlabel("batch", fontsize=8)
            ax.set_ylabel("speedup vs dense", fontsize=8)
            ax.tick_params(labelsize=7)
        for k in range(len(shapes), nrows * cols):
            axes[k // cols][k % cols].axis("off")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=6, loc="upper right", ncol=1)
        fig.suptitle(f"speedup vs batch ({title})", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        path = out / f"speedup_vs_batch{suffix}.png"
        _save(fig, path, dpi)
        plt.close(fig)
        written.append(path)
    return written


def _save(fig, path: Path, dpi: int) -> None:
    """PNG with a 64-colour palette: plots are committed beside RESULTS.md, and the palette
    makes them 3-4x smaller with no visible change to lines and text."""
    fig.savefig(path, dpi=dpi)
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)


def _model_plot(mm: dict, out: Path, dpi: int, plt) -> Path:
    rows = mm["rows"]
    labels = [f"{r['recipe']}\nb={r['batch']}" for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows)), 3.2))
    ax.bar([x - 0.2 for x in xs], [r["dense_s"] * 1e3 for r in rows], 0.4, label="dense")
    ax.bar([x + 0.2 for x in xs], [r["sparse_s"] * 1e3 for r in rows], 0.4, label="sparse")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['speedup']:.2f}x", (x + 0.2, r["sparse_s"] * 1e3), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("ms per encode (median)", fontsize=8)
    ax.set_title(f"{mm['model']}, seq {mm['seq_len']}, {mm['threads']} threads", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "model_latency.png"
    _save(fig, path, dpi)
    plt.close(fig)
    return path


def render(results: dict, out) -> list[Path]:
    """Writes results.md and the PNG plots to ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(markdown(results) + "\n")
    return [md, *plots(results, out)]
