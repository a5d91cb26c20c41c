"""Command line: ``sparseprune demo`` (also ``python -m sparseprune``)."""

from __future__ import annotations

import argparse
import sys


def _recipes(text: str) -> tuple[str, ...]:
    from .demo import RECIPES

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in RECIPES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"recipes must be a comma-separated subset of "
                                         f"{','.join(RECIPES)}, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="prune all-MiniLM-L6-v2 (Wanda), run it on the sparse kernels, compare "
        "quality and latency with dense")
    demo.add_argument("--out", default="demo-out", help="output folder (demo-out)")
    demo.add_argument("--recipes", type=_recipes, default=("2:4", "90%"),
                      help="comma-separated, from 2:4,50%%,70%%,90%% (2:4,90%%)")
    demo.add_argument("--paragraphs", type=_positive, default=1000,
                      help="evaluation paragraphs (1000)")
    demo.add_argument("--calib", type=_positive, default=64, help="calibration paragraphs (64)")
    demo.add_argument("--batch", type=_positive, default=32, help="timed batch size (32)")
    demo.add_argument("--seq-len", type=_positive, default=128, help="timed sequence length (128)")
    demo.add_argument("--threads", type=_positive, default=2, help="torch threads (2)")
    demo.add_argument("--rounds", type=_positive, default=7, help="timed rounds (7)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--keep-checkpoints", action="store_true",
                      help="keep the dense and sparse .safetensors files in --out")
    from .bench.cli import add_parsers  # bench, report

    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "handler"):  # bench, report (sparseprune/bench/cli.py)
        return args.handler(args)
    if args.command == "demo":
        from .demo import run

        run(out=args.out, recipes=args.recipes, n_eval=args.paragraphs, n_calib=args.calib,
            batch=args.batch, seq_len=args.seq_len, threads=args.threads, rounds=args.rounds,
            seed=args.seed, keep_checkpoints=args.keep_checkpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
