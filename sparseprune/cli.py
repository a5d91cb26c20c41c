"""Command line: ``sparseprune demo`` (also ``python -m sparseprune``)."""

from __future__ import annotations

import argparse
import sys


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="prune a 4096x4096 Linear, time it against dense")
    demo.add_argument("--size", type=int, default=4096, help="in = out features (4096)")
    demo.add_argument("--batch", type=_positive_ints, default=(1, 8, 32),
                      help="comma-separated batch sizes (1,8,32)")
    demo.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    demo.add_argument("--rounds", type=int, default=15, help="timed rounds per case (15)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(size=args.size, batches=args.batch, threads=args.threads, rounds=args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
