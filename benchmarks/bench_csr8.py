"""8-bit CSR (``CSRWeight.from_dense(..., index_bits=8)``) against 16-bit CSR and dense
``F.linear``, in one process: the three interleaved (A B C A B C ...) after warm-up, medians
over the rounds, weights rotated through >= 96 MB of copies so that they come from memory,
2 threads, fp32 (or --dtype bfloat16, against dense bf16).

    .venv/bin/python benchmarks/bench_csr8.py \
        --shapes 4096x4096,1536x384,384x1536,3072x768,768x3072 --patterns 90%,70%,50% \
        --batches 1,8,16,32,128 --rounds 15
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune.bench import shapes as shape_sets
from sparseprune.bench.report import machine_info
from sparseprune.bench.sweep import ROTATE_BYTES, clone_packed, prune, rotating
from sparseprune.bench.timing import interleaved

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--shapes", default="4096x4096,1536x384,384x1536,3072x768,768x3072")
ap.add_argument("--patterns", default="90%,70%,50%")
ap.add_argument("--batches", default="1,8,16,32,128")
ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--isa", help="force the kernels to this ISA (e.g. avx2; default: the best)")
ap.add_argument("--json", help="also write the rows here")
args = ap.parse_args()
torch.set_num_threads(2)
if args.isa:
    sp.set_isa(args.isa)
dtype = getattr(torch, args.dtype)
m = machine_info()
print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | {m['cpu']} | 2 threads | "
      f"kernels {sp.cpu_capability()} | {args.dtype} | commit {m['git_commit']} | rounds {args.rounds}")
print("| shape | pattern | batch | 16-bit vs dense | 8-bit vs dense | 8-bit / 16-bit speed | "
      "16-bit bytes | 8-bit bytes |")
print("|---|---|---|---|---|---|---|---|")
rows = []
for o, i in shape_sets.parse_shapes(args.shapes):
    shape = f"{o}x{i}"
    torch.manual_seed(0)
    w = torch.randn(o, i)
    for name in args.patterns.split(","):
        pruned = prune(w, shape_sets.PATTERNS[name]).to(dtype)
        c16 = sp.CSRWeight.from_dense(pruned)
        c8 = sp.CSRWeight.from_dense(pruned, index_bits=8)
        dense = w.to(dtype)
        dense_bytes = dense.numel() * 4  # share of the dense fp32 weight, as issue 4 counts
        p16 = rotating(lambda: clone_packed(c16), c16.nbytes, ROTATE_BYTES)
        p8 = rotating(lambda: clone_packed(c8), c8.nbytes, ROTATE_BYTES)
        dws = rotating(dense.clone, dense.numel() * dense.element_size(), ROTATE_BYTES)
        for b in shape_sets.parse_positive_ints(args.batches, "batches"):
            x = torch.randn(b, i).to(dtype)
            t = interleaved({"dense": lambda: F.linear(x, next(dws)),
                             "csr16": lambda: next(p16).linear(x),
                             "csr8": lambda: next(p8).linear(x)}, rounds=args.rounds)
            med = {k: v.median for k, v in t.items()}
            row = {"shape": shape, "pattern": name, "batch": b, "dtype": args.dtype,
                   "csr16_vs_dense": med["dense"] / med["csr16"],
                   "csr8_vs_dense": med["dense"] / med["csr8"],
                   "csr8_over_csr16_speed": med["csr16"] / med["csr8"],
                   "csr16_bytes_share": c16.nbytes / dense_bytes,
                   "csr8_bytes_share": c8.nbytes / dense_bytes}
            rows.append(row)
            print(f"| {shape} | {name} | {b} | {row['csr16_vs_dense']:.2f}x | "
                  f"{row['csr8_vs_dense']:.2f}x | {row['csr8_over_csr16_speed']:.2f}x | "
                  f"{row['csr16_bytes_share']:.2%} | {row['csr8_bytes_share']:.2%} |", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump({"machine": m, "args": vars(args), "rows": rows}, f, indent=1)
