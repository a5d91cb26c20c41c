"""N:M channel permutation (issue 7): search efficacy and cost, and what it does for MiniLM.

1. Random 64x128 weights (five seeds), 2:4, 1:4, 2:8, 4:8: efficacy = share of the gap between
   plain N:M and unstructured pruning at the same density that the permutation closes.
2. A random 4096x4096 weight at 2:4 with a 55 s budget (the target is a search under 60 s).
3. all-MiniLM-L6-v2, 2:4 one-shot (magnitude and Wanda) with and without permutations of
   every encoder Linear (FFN neurons through their group, the rest carried into the layer):
   mean cosine to dense on held-out pydoc_data paragraphs.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/permutation.py --out permutation-out
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

import sparseprune as sp
from sparseprune.pruning.permutation import search_permutation


def random_efficacy(seeds=range(5), budget: float = 2.0) -> list[dict]:
    rows = []
    for n, m in ((2, 4), (1, 4), (2, 8), (4, 8)):
        effs, secs = [], []
        for seed in seeds:
            w = torch.randn(64, 128, generator=torch.Generator().manual_seed(seed))
            r = search_permutation(w, n, m, time_budget=budget, seed=seed)
            effs.append(r.efficacy)
            secs.append(r.seconds)
        rows.append({"pattern": f"{n}:{m}", "efficacy_median": statistics.median(effs),
                     "efficacy_min": min(effs), "efficacy_max": max(effs),
                     "seconds_median": statistics.median(secs)})
        print(rows[-1], flush=True)
    return rows


def large(budget: float = 55.0) -> dict:
    w = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    r = search_permutation(w, 2, 4, time_budget=budget)
    out = {"shape": "4096x4096", "pattern": "2:4", "seconds": time.perf_counter() - t0,
           "rounds": r.rounds, "efficacy": r.efficacy}
    print(out, flush=True)
    return out


def minilm(n_eval: int = 500, budget: float = 5.0) -> list[dict]:
    from sparseprune import corpus
    from sparseprune.bench.minilm import calibration_batches, load_minilm
    from sparseprune.bench.recovery import _encode, quality

    dense = load_minilm(128)
    dense.eval()
    _, calib, evaluation = corpus.split(n_eval, 64, seed=0)
    cb = calibration_batches(dense.tokenizer, calib, 128)
    ref = _encode(dense, evaluation)
    rows = []
    for criterion in ("magnitude", "wanda"):
        for permute in (False, True):
            st = copy.deepcopy(dense)
            model = st[0].auto_model
            t0 = time.perf_counter()
            if permute:
                sp.pruning.permute_for_nm(model, 2, 4, include="encoder.layer.*",
                                          time_budget=budget)
            t_perm = time.perf_counter() - t0
            pruner = sp.Pruner(model, sp.PruneConfig(pattern="2:4", criterion=criterion,
                                                     include="encoder.layer.*"))
            if criterion == "wanda":
                pruner.calibrate(cb)
            pruner.prune().finalize()
            q = quality(ref, _encode(st, evaluation))
            rows.append({"criterion": criterion, "permuted": permute,
                         "permutation_seconds": t_perm, **q})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="permutation-out")
    ap.add_argument("--skip-minilm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"threads": torch.get_num_threads(), "random_64x128": random_efficacy(),
           "large": large()}
    if not args.skip_minilm:
        res["minilm_2_4"] = minilm()
    (out / "permutation.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
