"""The MiniLM recovery experiment of issue 9: prune all-MiniLM-L6-v2 (Wanda: 2:4, 70%,
90% gradual, 16x16 blocks at 50%), recover by distillation from the dense model, measure
held-out quality and the sparse kernels' speed. Writes recover.json / recover.md.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/recover_minilm.py --out recover-out

(the same as ``sparseprune recover``; see sparseprune/bench/recovery.py)."""

import sys

from sparseprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["recover", *sys.argv[1:]]))
