"""Sparse kernels against dense torch F.linear, same process, interleaved.

    .venv/bin/python benchmarks/bench_kernels.py                  # the issue's table
    .venv/bin/python benchmarks/bench_kernels.py --shapes 4096x4096 --patterns 90% --batches 1,32

Ratio = dense median / sparse median (> 1: sparse is faster). Also torch's own CSR matmul
(``torch.sparse.mm``-style via ``to_sparse_csr``) at the same sparsity, and the kernel's
share of the machine's limits: GB/s of packed weights + activations, useful GFLOP/s.

Every candidate cycles through copies of its weights totalling >= 96 MB (3x this machine's
32 MB L3), so no layer is timed from cache just because it is small: each call streams its
weights as in a real model, where other layers evict them.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import platform
import subprocess
import time

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune.bench.timing import interleaved

PATTERNS = {
    "50%": ("csr", 0.5), "70%": ("csr", 0.7), "90%": ("csr", 0.9), "95%": ("csr", 0.95),
    "2:4": ("nm", (2, 4)), "1:4": ("nm", (1, 4)), "2:8": ("nm", (2, 8)),
    "16x16@80%": ("bsr", ((16, 16), 0.8)), "32x32@90%": ("bsr", ((32, 32), 0.9)),
    "4x1@80%": ("bsr", ((4, 1), 0.8)), "1x4@80%": ("bsr", ((1, 4), 0.8)),
    "8x8@80%": ("bsr", ((8, 8), 0.8)),
}


def prune(weight, pattern):
    kind, arg = PATTERNS[pattern]
    scores = weight.abs()
    if kind == "csr":
        w = weight * sp.masks.unstructured(scores, arg)
        return w, sp.CSRWeight.from_dense(w)
    if kind == "nm":
        w = weight * sp.masks.n_m(scores, *arg)
        return w, sp.NMWeight.from_dense(w, *arg)
    block, sparsity = arg
    w = weight * sp.masks.block(scores, sparsity, block=block)
    return w, sp.BSRWeight.from_dense(w, block)


ROTATE_BYTES = 96 << 20


def rotating(make_copy, nbytes):
    """An endless cycle over enough copies of a weight to exceed ROTATE_BYTES."""
    copies = max(1, -(-ROTATE_BYTES // max(1, nbytes)))
    return itertools.cycle([make_copy() for _ in range(copies)])


def clone_packed(packed):
    return dataclasses.replace(packed, **{k: t.clone() for k, t in packed.tensors().items()})


def pack_args(packed):
    """from_dense arguments that rebuild `packed`'s pattern."""
    if isinstance(packed, sp.NMWeight):
        return {"n": packed.n, "m": packed.m}
    if isinstance(packed, sp.BSRWeight):
        return {"block": packed.block}
    return {}


def parse_shape(text):
    out_f, in_f = text.lower().split("x")
    return int(out_f), int(in_f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,1536x384,384x1536,3072x768,768x3072")
    parser.add_argument("--patterns", default="90%,50%,2:4,1:4,16x16@80%")
    parser.add_argument("--batches", default="1,8,16,32,128")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch-csr", action="store_true", help="also time torch CSR matmul")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"# {time.strftime('%Y-%m-%d')} | {cpu} | {args.threads} threads | torch "
          f"{torch.__version__} | kernels {sp.cpu_capability()} | {args.dtype} | commit {commit}")
    cols = "| shape | pattern | batch | speedup vs dense | sparse GB/s | useful GFLOP/s |"
    if args.torch_csr:
        cols += " vs torch CSR |"
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    pack_rows = []
    with torch.inference_mode():
        for shape in args.shapes.split(","):
            out_f, in_f = parse_shape(shape)
            weight = torch.randn(out_f, in_f) / in_f**0.5
            bias = torch.randn(out_f)
            x1 = torch.randn(1, in_f)
            for pattern in args.patterns.split(","):
                pruned, packed = prune(weight, pattern)
                # the one-off cost of packing (validation included), in dense batch-1 calls
                pack = interleaved({"pack": lambda: type(packed).from_dense(pruned, **pack_args(packed)),
                                    "dense": lambda: F.linear(x1, weight, bias)}, rounds=5)
                pack_rows.append((shape, pattern, pack["pack"].median,
                                  pack["pack"].median / pack["dense"].median))
                packed = packed.to(dtype)
                dense_w, b = weight.to(dtype), bias.to(dtype)
                dense_ws = rotating(dense_w.clone, dense_w.numel() * dense_w.element_size())
                packs = rotating(lambda: clone_packed(packed), packed.nbytes)
                if args.torch_csr:
                    csr_t = pruned.to(dtype).to_sparse_csr()
                    csr_bytes = sum(t.numel() * t.element_size() for t in
                                    (csr_t.values(), csr_t.col_indices(), csr_t.crow_indices()))
                    torch_csrs = rotating(lambda: csr_t.clone().t(), csr_bytes)
                for batch in (int(v) for v in args.batches.split(",")):
                    x = torch.randn(batch, in_f).to(dtype)
                    cands = {"dense": lambda: F.linear(x, next(dense_ws), b),
                             "sparse": lambda: next(packs).linear(x, b)}
                    if args.torch_csr:
                        cands["torch_csr"] = lambda: torch.addmm(b, x, next(torch_csrs))
                    t = interleaved(cands, rounds=args.rounds)
                    sparse_s = t["sparse"].median
                    moved = packed.nbytes + x.numel() * x.element_size() * 2
                    useful = 2 * batch * int((pruned != 0).sum())
                    row = (f"| {shape} | {pattern} | {batch} | "
                           f"{t['dense'].median / sparse_s:.2f}x | {moved / sparse_s / 1e9:.1f} | "
                           f"{useful / sparse_s / 1e9:.1f} |")
                    if args.torch_csr:
                        row += f" {t['torch_csr'].median / sparse_s:.2f}x |"
                    print(row, flush=True)
    print("\n| shape | pattern | pack time (ms) | in dense batch-1 calls |")
    print("|---|---|---|---|")
    for shape, pattern, seconds, calls in pack_rows:
        print(f"| {shape} | {pattern} | {seconds * 1e3:.1f} | {calls:.0f} |")


if __name__ == "__main__":
    main()
