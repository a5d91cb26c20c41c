"""Structured pruning of a residual CNN trained on sklearn digits (issue 10): 50% of the
filters of every group removed, shrunk, fine-tuned; accuracy, FLOPs, parameters and latency
against the dense CNN, for three seeds. Writes shrink_digits.json / shrink_digits.md.

    .venv/bin/python benchmarks/shrink_digits.py --out shrink-digits-out

(the same as ``sparseprune shrink-digits``; see sparseprune/bench/digits.py)."""

import sys

from sparseprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["shrink-digits", *sys.argv[1:]]))
