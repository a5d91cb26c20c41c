"""fp32 N:M products with the per-weight tile copy (sparseprune.tile_cache) and without it,
against dense ``F.linear``, in one process: the three interleaved (A B C A B C ...) after
warm-up, medians over the rounds, weights rotated through >= 96 MB of copies so that they
come from memory, 2 threads.

    .venv/bin/python benchmarks/bench_tile_cache.py \
        --shapes 384x1536,1536x384,768x3072,3072x768,4096x4096 --patterns 2:4,1:4 \
        --batches 1,8,16,32,64,128 --rounds 15
"""
import argparse
import time

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune import masks, tile_cache
from sparseprune.bench.sweep import ROTATE_BYTES, clone_packed, rotating
from sparseprune.bench.timing import interleaved

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--shapes", default="384x1536,1536x384,768x3072,3072x768,4096x4096")
ap.add_argument("--patterns", default="2:4,1:4")
ap.add_argument("--batches", default="1,8,16,32,64,128")
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--all-batches", action="store_true",
                help="use the copy at every batch, past the kernel table's limit (AVX2: to "
                     "measure that limit)")
args = ap.parse_args()
if tile_cache.tile_width() == 0:
    raise SystemExit("the tile copies need the AVX2 or AVX-512 kernels; this CPU runs "
                     f"{sp.cpu_capability()}")
if args.all_batches:
    width = tile_cache.tile_width()
    tile_cache._limits = lambda: (width, 1, 2**62)
torch.set_num_threads(2)
shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
pats = [tuple(int(v) for v in s.split(":")) for s in args.patterns.split(",")]
batches = [int(b) for b in args.batches.split(",")]
print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} tile copy A/B, 2 threads, "
      f"{sp.cpu_capability()}, {tile_cache.tile_width()}-row tiles, rounds {args.rounds}"
      f"{', copy at every batch' if args.all_batches else ''}")
print("| shape | pattern | batch | without copy vs dense | with copy vs dense | with / without |")
print("|---|---|---|---|---|---|")
for (o, i) in shapes:
    for (n, m) in pats:
        w = torch.randn(o, i)
        k = masks.n_m(w.abs(), n, m)
        packed = sp.NMWeight.from_dense(w * k, n, m, k)
        packs = rotating(lambda: clone_packed(packed), packed.nbytes, ROTATE_BYTES)
        dense_ws = rotating(w.clone, w.numel() * 4, ROTATE_BYTES)
        # The A/B flips the module's switch directly: set_nm_tile_cache(False) would drop the
        # copies made here, one per rotated weight before timing.
        tile_cache._enabled = True
        with torch.no_grad():
            for _ in range(-(-ROTATE_BYTES // packed.nbytes)):
                next(packs).linear(torch.zeros(2, i))  # batch 1 keeps the plain op on AVX2
        for b in batches:
            x = torch.randn(b, i)

            def sparse(with_copy):
                tile_cache._enabled = with_copy
                next(packs).linear(x)

            t = interleaved({"dense": lambda: F.linear(x, next(dense_ws)),
                             "auto": lambda: sparse(False), "cached": lambda: sparse(True)},
                            rounds=args.rounds)
            med = {name: v.median for name, v in t.items()}
            print(f"| {o}x{i} | {n}:{m} | {b} | {med['dense'] / med['auto']:.2f}x | "
                  f"{med['dense'] / med['cached']:.2f}x | {med['auto'] / med['cached']:.2f}x |",
                  flush=True)
