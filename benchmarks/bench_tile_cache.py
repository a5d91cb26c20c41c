"""fp32 N:M products with the per-weight tile copy (sparseprune.tile_cache) and without it,
against dense ``F.linear``, in one process: the three interleaved (A B C A B C ...) after
warm-up, medians over the rounds, weights rotated through >= 96 MB of copies so that they
come from memory, 2 threads.

    .venv/bin/python benchmarks/bench_tile_cache.py \
        --shapes 384x1536,1536x384,768x3072,3072x768,4096x4096 --patterns 2:4,1:4 \
        --batches 1,8,16,32,64,128 --rounds 15
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune import masks, tile_cache

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--shapes", default="384x1536,1536x384,768x3072,3072x768,4096x4096")
ap.add_argument("--patterns", default="2:4,1:4")
ap.add_argument("--batches", default="1,8,16,32,64,128")
ap.add_argument("--rounds", type=int, default=15)
args = ap.parse_args()
if sp.cpu_capability() != "avx512":
    raise SystemExit("the tile copies need the AVX-512 kernels; this CPU runs "
                     f"{sp.cpu_capability()}")
torch.set_num_threads(2)
shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
pats = [tuple(int(v) for v in s.split(":")) for s in args.patterns.split(",")]
batches = [int(b) for b in args.batches.split(",")]
rounds = args.rounds
def rot(nbytes): return max(2, int(96e6 // nbytes) + 1)
print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} tile copy A/B, 2 threads, rounds {rounds}")
print("| shape | pattern | batch | without copy vs dense | with copy vs dense | with / without |")
print("|---|---|---|---|---|---|")
for (o, i) in shapes:
    for (n, m) in pats:
        w = torch.randn(o, i); k = masks.n_m(w.abs(), n, m)
        ps = [sp.NMWeight.from_dense(w * k, n, m, k)]
        nc = rot(ps[0].nbytes)
        ps += [sp.NMWeight(p.values.clone(), p.metadata.clone(), n, m, (o, i)) for p in ps * (nc - 1)]
        ds = [w.clone() for _ in range(rot(w.numel() * 4))]
        # The A/B flips the module's switch directly: set_nm_tile_cache(False) would drop the
        # copies made here.
        tile_cache._enabled = True
        with torch.no_grad():
            for p in ps: p.linear(torch.zeros(1, i))
        for b in batches:
            x = torch.randn(b, i)
            it = {"d": 0, "a": 0, "c": 0}
            def dense():
                F.linear(x, ds[it["d"] % len(ds)]); it["d"] += 1
            def auto():
                tile_cache._enabled = False
                ps[it["a"] % nc].linear(x); it["a"] += 1
            def cached():
                tile_cache._enabled = True
                ps[it["c"] % nc].linear(x); it["c"] += 1
            cands = {"dense": dense, "auto": auto, "cached": cached}
            for f in cands.values():
                for _ in range(3): f()
            reps = {}
            for kname, f in cands.items():
                t0 = time.perf_counter(); f(); reps[kname] = max(1, int(2e-3 / max(time.perf_counter() - t0, 1e-7)))
            samples = {kname: [] for kname in cands}
            for _ in range(rounds):
                for kname, f in cands.items():
                    t0 = time.perf_counter()
                    for _ in range(reps[kname]): f()
                    samples[kname].append((time.perf_counter() - t0) / reps[kname])
            med = {kname: statistics.median(v) for kname, v in samples.items()}
            print(f"| {o}x{i} | {n}:{m} | {b} | {med['dense']/med['auto']:.2f}x | "
                  f"{med['dense']/med['cached']:.2f}x | {med['auto']/med['cached']:.2f}x |", flush=True)
