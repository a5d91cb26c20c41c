"""The MiniLM structured-pruning experiment of issue 10: remove 50% of the FFN neurons and 25%
of the attention heads of all-MiniLM-L6-v2 (Wanda-style group scores), shrink it, distil it
from the dense model, and measure held-out quality, size and dense-kernel speed at batch
32 x 128 tokens. Writes shrink.json / shrink.md / plan.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/shrink_minilm.py --out shrink-out

(the same as ``sparseprune shrink``; see sparseprune/bench/structured.py)."""

import sys

from sparseprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["shrink", *sys.argv[1:]]))
