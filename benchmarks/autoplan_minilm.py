"""Issue 7's auto plan on all-MiniLM-L6-v2: per-layer sensitivity (Wanda, one-shot) with
measured kernel speed, the fastest per-layer plan whose held-out mean cosine stays >= 0.95,
and every uniform setting measured the same way. Writes sensitivity.{json,md,png},
plan.yaml (accepted by `sparseprune prune --config`), plan.{json,md}.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/autoplan_minilm.py --out plan-out

(the same as ``sparseprune plan``; see sparseprune/bench/autoplan.py)."""

import sys

from sparseprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["plan", *sys.argv[1:]]))
