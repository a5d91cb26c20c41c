"""The main job (``make demo`` / ``sparseprune demo``).

Until the MiniLM demo exists: one 4096x4096 ``nn.Linear`` pruned by magnitude to 2:4 and
to 90% unstructured, packed, and run through the compiled kernels; for each batch size it
prints the sparse/dense latency ratio (dense ``F.linear`` fp32 timed in the same process,
interleaved) and the largest error against a float64 dense product of the pruned weight.
"""

from __future__ import annotations

import platform

import torch
import torch.nn.functional as F

from . import masks
from ._ext import cpu_capability
from .bench.timing import interleaved
from .formats import CSRWeight, NMWeight


def pruned_cases(weight: torch.Tensor):
    """(name, pruned dense weight, packed weight) for the demo's patterns."""
    scores = weight.abs()
    w24 = weight * masks.n_m(scores, 2, 4)
    w90 = weight * masks.unstructured(scores, 0.9)
    return [
        ("2:4", w24, NMWeight.from_dense(w24, 2, 4)),
        ("90% unstructured", w90, CSRWeight.from_dense(w90)),
    ]


def run(size: int = 4096, batches=(1, 8, 32), threads: int = 2, rounds: int = 15,
        seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    layer = torch.nn.Linear(size, size)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    rows = []
    print(f"sparseprune demo: {size}x{size} Linear, fp32, {threads} threads, "
          f"kernels: {cpu_capability()}, torch {torch.__version__}, {platform.machine()}")
    header = (f"{'pattern':<18} {'batch':>5} {'sparse/dense':>12} {'speedup':>8} "
              f"{'max |err|':>10}  spread")
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for name, pruned, packed in pruned_cases(weight):
            for batch in batches:
                x = torch.randn(batch, size)
                y = packed.linear(x, bias)
                ref = F.linear(x.double(), pruned.double(), bias.double())
                err = (y.double() - ref).abs().max().item()
                t = interleaved({"dense": lambda: F.linear(x, weight, bias),
                                 "sparse": lambda: packed.linear(x, bias)}, rounds=rounds)
                ratio = t["sparse"].median / t["dense"].median
                spread = max(t["sparse"].spread, t["dense"].spread)
                rows.append({"pattern": name, "batch": batch, "sparse_over_dense": ratio,
                             "max_abs_err": err})
                print(f"{name:<18} {batch:>5} {ratio:>12.3f} {1 / ratio:>7.2f}x "
                      f"{err:>10.2e}  {spread:.0%}")
    print("sparse/dense < 1 means the pruned layer runs faster than dense F.linear; "
          "error is against a float64 dense product of the same pruned weight.")
    return rows
