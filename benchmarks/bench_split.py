"""Large batches: the ops' two ways to share work between threads, against dense F.linear.

"rows": activations packed once for the whole batch (a shared buffer, batch x in floats),
then each thread takes a range of output rows over every chunk. "batch": each thread takes
whole 32-row chunks of the batch, packs one at a time into its own small buffer and runs
every row over it (ops.cpp, run_by_batch). The env var SPARSEPRUNE_SPLIT chooses per call,
so the three candidates run interleaved in one process (medians of --rounds).

    .venv/bin/python benchmarks/bench_split.py [--rounds 15] [--batches 128,512,4096]
"""

import argparse
import os

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune.bench import sweep
from sparseprune.bench.shapes import PATTERNS
from sparseprune.bench.timing import interleaved

SHAPES = [(384, 384), (1536, 384), (384, 1536), (3072, 768), (768, 3072), (4096, 4096)]
SPLIT_PATTERNS = ["90%", "50%", "2:4", "16x16@80%"]


def with_split(mode, fn):
    def run():
        os.environ["SPARSEPRUNE_SPLIT"] = mode
        try:
            return fn()
        finally:
            del os.environ["SPARSEPRUNE_SPLIT"]
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batches", default="128,512,4096")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {torch.get_num_threads()}, kernels {sp.cpu_capability()}")
    print("| shape (out x in) | pattern | batch | rows split vs dense | batch split vs dense "
          "| batch / rows |")
    print("|---|---|---|---|---|---|")
    for out_f, in_f in SHAPES:
        w = torch.randn(out_f, in_f)
        bias = torch.randn(out_f)
        for pattern in SPLIT_PATTERNS:
            packed = sweep.pack(sweep.prune(w, PATTERNS[pattern]), PATTERNS[pattern])
            for batch in map(int, args.batches.split(",")):
                if batch * max(out_f, in_f) > 4096 * 1536:
                    continue  # keeps the big layers' runs short
                x = torch.randn(batch, in_f)
                t = interleaved({
                    "dense": lambda: F.linear(x, w, bias),
                    "rows": with_split("rows", lambda: packed.linear(x, bias)),
                    "batch": with_split("batch", lambda: packed.linear(x, bias)),
                }, rounds=args.rounds, warmup=2)
                d, r, b = (t[k].median for k in ("dense", "rows", "batch"))
                print(f"| {out_f}x{in_f} | {pattern} | {batch} | {d / r:.2f}x | {d / b:.2f}x "
                      f"| {r / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
