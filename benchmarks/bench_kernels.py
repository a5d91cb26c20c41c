"""Sparse kernels against dense torch F.linear: a thin wrapper over the harness
(``sparseprune bench``, sparseprune/bench/) that keeps this script's flags and table.

    .venv/bin/python benchmarks/bench_kernels.py                  # the issue-4 table
    .venv/bin/python benchmarks/bench_kernels.py --shapes 4096x4096 --patterns 90% --batches 1,32

Ratio = dense median / sparse median (> 1: sparse is faster), all candidates interleaved in
one process, weights rotated through >= 96 MB (see sparseprune/bench/sweep.py). With
--torch-csr, torch's own sparse matmul too (CSR; BSR for square block patterns, which is what
torch's CPU backend supports). The one-off pack cost is printed after the table.

For JSON, Markdown, plots, machine limits and break-even sparsity use
``sparseprune bench`` (this script calls the same sweep and prints only its old table).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sparseprune.bench import report, shapes, sweep
from sparseprune.bench.sweep import SweepConfig, run

# The helpers this script used to define, kept for benchmarks/bench_formats.py, which imports
# them: pattern name -> (packing, argument) as before, over every harness pattern.
PATTERNS = {name: (("csr", p.sparsity) if p.kind == "unstructured" else ("nm", p.nm)
                   if p.kind == "nm" else ("bsr", (p.block, p.sparsity)))
            for name, p in shapes.PATTERNS.items()}
ROTATE_BYTES = sweep.ROTATE_BYTES
clone_packed = sweep.clone_packed


def prune(weight, pattern):
    """(magnitude-pruned weight, its packed form) for a pattern name."""
    p = shapes.PATTERNS[pattern]
    pruned = sweep.prune(weight, p)
    return pruned, sweep.pack(pruned, p)


def rotating(make_copy, nbytes):
    return sweep.rotating(make_copy, nbytes, ROTATE_BYTES)


def parse_shape(text):
    (shape,) = shapes.parse_shapes(text)
    return shape


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,1536x384,384x1536,3072x768,768x3072")
    parser.add_argument("--patterns", default="90%,50%,2:4,1:4,16x16@80%")
    parser.add_argument("--batches", default="1,8,16,32,128")
    parser.add_argument("--dtype", choices=list(shapes.DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch-csr", action="store_true", help="also time torch CSR matmul")
    args = parser.parse_args(argv)
    try:
        cfg = SweepConfig(
            shapes=shapes.parse_shapes(args.shapes), patterns=shapes.parse_patterns(args.patterns),
            batches=shapes.parse_positive_ints(args.batches, "batches"), dtypes=(args.dtype,),
            threads=(args.threads,), rounds=args.rounds, min_rounds=args.rounds,
            budget_s=float("inf"), baselines=args.torch_csr, max_baseline_s=float("inf"),
            pack_rounds=5)
    except shapes.ChoiceError as e:
        parser.error(str(e))
    m = report.machine_info()
    print(f"# {time.strftime('%Y-%m-%d')} | {m['cpu']} | {args.threads} threads | torch "
          f"{torch.__version__} | kernels {m['isa']} | {args.dtype} | commit {m['git_commit']}")
    res = run(cfg, progress=sys.stderr.isatty())
    cols = "| shape | pattern | batch | speedup vs dense | sparse GB/s | useful GFLOP/s |"
    if args.torch_csr:
        cols += " vs torch CSR/BSR |"
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for r in res["results"]:
        row = (f"| {r['shape']} | {r['pattern']} | {r['batch']} | {r['speedup_vs_dense']:.2f}x | "
               f"{r['GBps']:.1f} | {r['useful_GFLOPs']:.1f} |")
        if args.torch_csr:
            v = r["speedup_vs_torch_sparse"]
            row += f" {v:.2f}x |" if v is not None else " - |"
        print(row)
    print("\n| shape | pattern | pack time (ms) | in dense batch-1 calls |")
    print("|---|---|---|---|")
    for p in res["pack"]:
        print(f"| {p['shape']} | {p['pattern']} | {p['pack_s'] * 1e3:.1f} | "
              f"{p['pack_in_dense_batch1_calls']:.0f} |")


if __name__ == "__main__":
    main()
