"""Same weight, two packings: the measurement behind ``SparseLinear`` format="auto".

    nice -n 15 .venv/bin/python benchmarks/bench_formats.py
    nice -n 15 .venv/bin/python benchmarks/bench_formats.py --shapes 384x384 --batches 32,4096

For each pattern the pruned weight is packed in its structured format (N:M -> "nm", blocks
-> "bsr") and as CSR, and both are timed against dense F.linear in one interleaved run
(A B C A B C ..., medians), cycling through >= 96 MB of weight copies as
``benchmarks/bench_kernels.py`` does (its pruning and rotation helpers are reused here).
Ratio columns are dense median / packed median (> 1: faster than dense); the last column says
which packing won and by how much.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sparseprune as sp  # noqa: E402
from bench_kernels import PATTERNS, clone_packed, parse_shape, prune, rotating  # noqa: E402
from sparseprune.bench.timing import interleaved  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="384x384,1536x384,384x1536,768x3072")
    parser.add_argument("--patterns", default="2:4,1:4,2:8,16x16@80%,8x8@80%,4x1@80%")
    parser.add_argument("--batches", default="8,128,4096")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} | {args.threads} threads | torch "
          f"{torch.__version__} | kernels {sp.cpu_capability()} | {args.dtype}")
    print("| shape | pattern | batch | structured vs dense | csr vs dense | winner |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            out_f, in_f = parse_shape(shape)
            weight = torch.randn(out_f, in_f) / in_f**0.5
            bias = torch.randn(out_f).to(dtype)
            for pattern in args.patterns.split(","):
                kind = PATTERNS[pattern][0]
                pruned, packed = prune(weight, pattern)
                packed = packed.to(dtype)
                csr = sp.CSRWeight.from_dense(pruned.to(dtype))
                dense_w = pruned.to(dtype)
                dws = rotating(dense_w.clone, dense_w.numel() * dense_w.element_size())
                sws = rotating(lambda: clone_packed(packed), packed.nbytes)
                cws = rotating(lambda: clone_packed(csr), csr.nbytes)
                for batch in (int(v) for v in args.batches.split(",")):
                    x = torch.randn(batch, in_f).to(dtype)
                    t = interleaved({"dense": lambda: F.linear(x, next(dws), bias),
                                     kind: lambda: next(sws).linear(x, bias),
                                     "csr": lambda: next(cws).linear(x, bias)},
                                    rounds=args.rounds)
                    d = t["dense"].median
                    s, c = d / t[kind].median, d / t["csr"].median
                    win = f"{kind} {s / c:.2f}x" if s >= c else f"csr {c / s:.2f}x"
                    print(f"| {shape} | {pattern} | {batch} | {s:.2f}x | {c:.2f}x | {win} |",
                          flush=True)


if __name__ == "__main__":
    main()
