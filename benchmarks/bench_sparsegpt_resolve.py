"""A/B of one SparseGPT re-solve of MiniLM's 36 encoder Linears (the 90%/sparsegpt setting's
gradual pruner): the session-21 code (inverse-Hessian factor recomputed at every re-solve,
prune_lowest by stable sort) against the current one (factor kept per Gram matrix, selection
by kthvalue), alternating in one process, 4 rounds, medians; asserts identical weights.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_sparsegpt_resolve.py

(benchmarks/RESULTS.md, "Recovery", session 22)."""
import copy
import statistics
import time

import torch

from sparseprune import masks
from sparseprune.bench import recovery
from sparseprune.bench.recovery import CubicSchedule
from sparseprune.pruning import Pruner
from sparseprune.pruning import pruner as pruner_mod

torch.set_num_threads(2)
dense_st, _, calib, _ = recovery.load_split(500, 64, seed=0)
model = copy.deepcopy(dense_st)[0].auto_model
# the schedule of the 2470-step runs (prune end 0.6)
schedule = CubicSchedule(start=0, end=1482, frequency=61)
p = Pruner(model, recovery.SETTINGS["90%/sparsegpt"].config(schedule))
p.calibrate(calib)
new_lowest = masks.prune_lowest
new_factor = pruner_mod.Pruner._sparsegpt_factor


def old_lowest(unit_scores, count):
    keep = torch.ones(unit_scores.shape, dtype=torch.bool, device=unit_scores.device)
    if count:
        order = torch.sort(unit_scores.to(torch.float64), stable=True).indices
        keep[order[:count]] = False
    return keep


state = copy.deepcopy(model.state_dict())
p._apply({n: 0.6 for n in p.settings})  # a schedule's first update computes the factors
times = {"old": [], "new": []}
results = {}
for r in range(4):
    for name in ("old", "new"):
        masks.prune_lowest = old_lowest if name == "old" else new_lowest
        pruner_mod.Pruner._sparsegpt_factor = ((lambda self, *a: None) if name == "old"
                                               else new_factor)
        model.load_state_dict(state)
        t = time.perf_counter()
        p._apply({n: 0.6 for n in p.settings})
        times[name].append(time.perf_counter() - t)
        results[name] = [m.weight.detach().clone() for m in p.layers.values()]
    assert all(torch.equal(a, b) for a, b in zip(results["old"], results["new"]))
for k, v in times.items():
    print(k, [f"{x:.2f}" for x in v], "median", f"{statistics.median(v):.2f} s")
print(f"speedup {statistics.median(times['old']) / statistics.median(times['new']):.2f}x "
      "(weights identical)")
