"""The ``bench`` and ``report`` subcommands; :func:`add_parsers` hooks them into
``sparseprune.cli`` so that file needs only a two-line change."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import shapes as S

QUICK_ROUNDS = dict(rounds=7, min_rounds=3, budget_s=0.4)


def _arg(parse, *extra):
    def f(text):
        try:
            return parse(text, *extra)
        except S.ChoiceError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return f


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        v = -1
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def add_parsers(sub) -> None:
    b = sub.add_parser(
        "bench", help="time the sparse kernels against dense and torch sparse over shapes x "
        "patterns x batches x dtypes x threads; JSON + Markdown + PNG",
        description="Sweep the sparse kernels against dense F.linear (fp32 and bf16) and torch "
        "CSR/BSR matmul. Without selection flags: every DESIGN.md shape, pattern and batch "
        "(fp32, current threads); --quick: a subset that finishes in under 2 minutes.")
    b.add_argument("--out", default="bench-out", help="output folder (bench-out)")
    b.add_argument("--quick", action="store_true",
                   help="2 shapes x 3 patterns x 2 batches, fp32, fewer rounds (< 2 minutes)")
    b.add_argument("--shapes", type=_arg(S.parse_shapes),
                   help=f"comma-separated OUTxIN and/or sets: {', '.join(S.SHAPE_SETS)}, all "
                        "(all)")
    b.add_argument("--shapes-from", metavar="MODEL",
                   help="add the Linear (and 1x1 conv) shapes of a model: minilm or "
                        "package.module:factory")
    b.add_argument("--patterns", type=_arg(S.parse_patterns),
                   help=f"comma-separated names or groups ({', '.join(S.PATTERN_GROUPS)}); "
                        f"names: {', '.join(S.PATTERNS)} (all)".replace("%", "%%"))
    b.add_argument("--batches", type=_arg(S.parse_positive_ints, "batches"),
                   help=f"comma-separated ({','.join(map(str, S.BATCHES))})")
    b.add_argument("--dtypes", type=_arg(S.parse_dtypes),
                   help=f"comma-separated from {', '.join(S.DTYPES)} (float32)")
    b.add_argument("--threads", type=_arg(S.parse_positive_ints, "threads"),
                   help="comma-separated torch thread counts (current)")
    b.add_argument("--rounds", type=_arg(S.parse_positive_ints, "rounds"),
                   help="most timed rounds per case (15; --quick 7)")
    b.add_argument("--budget-s", type=_positive_float,
                   help="seconds of timing per case; rounds shrink to fit, down to 5 (1.5)")
    b.add_argument("--rotate-mb", type=_positive_float, default=96,
                   help="each candidate cycles through copies of its weights totalling this "
                        "many MB, so no layer is timed from cache (96 = 3x a 32 MB L3)")
    b.add_argument("--no-baselines", action="store_true", help="skip torch CSR/BSR matmul")
    b.add_argument("--max-baseline-s", type=_positive_float, default=0.25,
                   help="skip a torch sparse call predicted to take longer (0.25)")
    b.add_argument("--model", choices=["minilm"],
                   help="instead of the kernel sweep, time the model end to end, dense vs "
                        "pruned + sparsified")
    b.add_argument("--recipes", type=_arg(S.parse_patterns), default=("2:4", "90%"),
                   help="--model: patterns to prune to (2:4,90%%)")
    b.add_argument("--seq-len", type=_arg(S.parse_positive_ints, "seq-len"), default=(128,),
                   help="--model: sequence length (128)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(handler=run_bench)

    from . import cuda

    c = sub.add_parser("bench-cuda", help="time the CUDA kernels against dense cuBLAS and "
                       "torch's semi-structured 2:4 on a GPU; JSON + Markdown",
                       description=cuda.__doc__.split("\n\n")[0])
    cuda.add_arguments(c)
    c.set_defaults(handler=lambda args, parser=None: cuda.run_cli(args, c))

    from .recovery import DEFAULT_SETTINGS, SETTINGS

    rc = sub.add_parser("recover", help="prune MiniLM and recover it by distillation from the "
                        "dense model; held-out quality, training time, sparse speed",
                        description="The MiniLM recovery experiment (sparseprune/bench/"
                        "recovery.py): Wanda or SparseGPT pruning, then distillation with masks "
                        "locked on "
                        "pydoc_data + stdlib docstrings, evaluated on held-out pydoc_data "
                        "paragraphs.")
    rc.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                    help=f"comma-separated from {', '.join(SETTINGS)}".replace("%", "%%"))
    rc.add_argument("--steps", type=int, default=700,
                    help="optimizer steps per setting (x1.3 for the gradual 90%%) (700)")
    rc.add_argument("--lr", type=float, default=2e-4)
    rc.add_argument("--batch-size", type=int, default=16)
    rc.add_argument("--eval", type=int, default=500, help="held-out paragraphs (500)")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--fp32", action="store_true",
                    help="no bf16 autocast (default: bf16 autocast where the CPU has native "
                    "bf16, AVX512-BF16 or AMX; fp32 elsewhere)")
    rc.add_argument("--layer-weight", type=float, default=0.0,
                    help="also match every encoder layer's hidden states, with this weight")
    rc.add_argument("--in-domain-repeat", type=int, default=1,
                    help="batches of the training pydoc_data paragraphs (the evaluation's "
                    "domain) appear this many times per epoch (1)")
    rc.add_argument("--group-by-length", action="store_true",
                    help="batch paragraphs of similar length together (fewer padded tokens, "
                    "more steps per minute)")
    rc.add_argument("--cache-teacher", action="store_true",
                    help="keep the dense teacher's outputs of every batch after its first use "
                    "(one teacher forward per batch, not per step; memory for all of them)")
    rc.add_argument("--freeze-embeddings", action="store_true",
                    help="do not train the student's word embeddings (half of MiniLM's "
                    "parameters, never pruned): a cheaper backward and optimizer step")
    rc.add_argument("--eager-attention", action="store_true",
                    help="train the student with transformers' explicit attention "
                    "(softmax(QK^T)V) instead of torch's SDPA, whose CPU flash-attention "
                    "backward is slow: 1.4x faster forward + backward here")
    rc.add_argument("--prune-end", type=float, default=0.6,
                    help="gradual settings: the fraction of the steps by which the schedule "
                    "reaches the final sparsity (0.6)")
    rc.add_argument("--best", action="store_true",
                    help="the four SparseGPT settings with the best measured recipe each "
                    "(sparseprune/bench/recovery.py, BEST; ~20 min each): replaces "
                    "--settings, --steps, --lr, --layer-weight, --in-domain-repeat, "
                    "--group-by-length, --cache-teacher, --freeze-embeddings, "
                    "--eager-attention and --prune-end")
    rc.add_argument("--resume", action="store_true",
                    help="checkpoint every 50 steps in --out and resume from there")
    rc.add_argument("--out", default="recover-out")
    rc.add_argument("--no-progress", action="store_true")
    rc.set_defaults(handler=run_recover)

    sh = sub.add_parser("shrink", help="structured pruning of MiniLM: remove FFN neurons and "
                        "attention heads, distil, measure quality, size and dense speed",
                        description="The MiniLM structured-pruning experiment "
                        "(sparseprune/bench/structured.py).")
    sh.add_argument("--ffn", type=float, default=0.5, help="share of FFN neurons removed (0.5)")
    sh.add_argument("--heads", type=float, default=0.25,
                    help="share of attention heads removed (0.25)")
    sh.add_argument("--criterion", default="wanda", choices=("magnitude", "wanda"))
    sh.add_argument("--steps", type=int, default=1500, help="distillation steps (1500)")
    sh.add_argument("--lr", type=float, default=3e-4)
    sh.add_argument("--layer-weight", type=float, default=1.0)
    sh.add_argument("--round-to", type=int, default=16)
    sh.add_argument("--gradual", action="store_true",
                    help="remove the units along a cubic schedule during the first half of "
                         "distillation (masks, then shrink) instead of one shot")
    sh.add_argument("--no-refit", action="store_true",
                    help="do not refit the readers of removed units (least squares)")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", default="shrink-out")
    sh.add_argument("--no-progress", action="store_true")
    sh.add_argument("--time-plan", metavar="PLAN_JSON",
                    help="only time dense vs a MiniLM shrunk with this saved plan (31 rounds "
                         "at batch 32, 8, 1 x 128 tokens)")
    sh.set_defaults(handler=run_shrink)

    sd = sub.add_parser("shrink-digits", help="structured pruning of a residual CNN trained on "
                        "sklearn digits: accuracy, FLOPs, latency")
    sd.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    sd.add_argument("--sparsity", type=float, default=0.5, help="share of filters removed")
    sd.add_argument("--criterion", default="taylor", choices=("magnitude", "wanda", "taylor"))
    sd.add_argument("--epochs", type=int, default=30)
    sd.add_argument("--finetune-epochs", type=int, default=15)
    sd.add_argument("--out", default="shrink-digits-out")
    sd.set_defaults(handler=run_shrink_digits)

    pl = sub.add_parser("plan", help="MiniLM: per-layer sensitivity and kernel speed, then the "
                        "fastest per-layer plan within a quality budget (YAML), compared with "
                        "uniform settings", description="sparseprune/bench/autoplan.py")
    pl.add_argument("--min-cosine", type=float, default=0.95,
                    help="budget: held-out mean cosine to dense (0.95)")
    pl.add_argument("--criterion", default="wanda", choices=("magnitude", "wanda", "sparsegpt"))
    pl.add_argument("--batch", type=int, default=1, help="timed batch (1)")
    pl.add_argument("--seq", type=int, default=128, help="timed tokens per sentence (128)")
    pl.add_argument("--layers", default="encoder.layer.*", help="glob of the Linears to plan")
    pl.add_argument("--plan-paragraphs", type=int, default=96)
    pl.add_argument("--eval", type=int, default=500)
    pl.add_argument("--rounds", type=int, default=15)
    pl.add_argument("--candidates", default="50%,70%,90%,2:4,16x16@50%,16x16@80%",
                    help="per-layer choices, comma-separated: unstructured 'NN%%', N:M 'n:m', "
                    "blocks 'BHxBW@NN%%' (default: %(default)s)")
    pl.add_argument("--out", default="plan-out")
    pl.add_argument("--no-progress", action="store_true")
    pl.set_defaults(handler=run_plan)

    pr = sub.add_parser("prune", help="MiniLM: prune the encoder with a YAML PruneConfig (e.g. "
                        "from `sparseprune plan`), measure held-out quality and speed, save "
                        "the sparse checkpoint")
    pr.add_argument("--config", required=True, help="YAML written by `sparseprune plan` or "
                    "sparseprune.pruning.save_config")
    pr.add_argument("--batch", type=int, default=1)
    pr.add_argument("--seq", type=int, default=128)
    pr.add_argument("--eval", type=int, default=500)
    pr.add_argument("--out", default="prune-out")
    pr.set_defaults(handler=run_prune)

    r = sub.add_parser("report", help="re-render the Markdown table and PNG plots of a "
                       "bench results.json")
    r.add_argument("results", help="results.json written by `sparseprune bench`")
    r.add_argument("--out", help="output folder (the JSON's folder)")
    r.set_defaults(handler=run_report)


def _config(args):
    from .sweep import SweepConfig

    kw = {}
    if args.quick:
        kw.update(S.QUICK)
        kw.update(QUICK_ROUNDS)
    shapes = list(args.shapes or kw.get("shapes") or SweepConfig().shapes)
    if args.shapes_from:
        found = S.shapes_from_module(S.load_module(args.shapes_from))
        if not found:
            raise S.ChoiceError(f"{args.shapes_from} has no nn.Linear or 1x1 Conv2d layers")
        shapes = list(found) if args.shapes is None else shapes + [
            s for s in found if s not in shapes]
    kw["shapes"] = tuple(shapes)
    for name in ("patterns", "batches", "dtypes", "threads"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.rounds is not None:
        kw["rounds"] = args.rounds[0]
    if args.budget_s is not None:
        kw["budget_s"] = args.budget_s
    kw["min_rounds"] = min(kw.get("min_rounds", 5), kw.get("rounds", 15))
    kw["rotate_bytes"] = int(args.rotate_mb * 2**20)
    kw["baselines"] = not args.no_baselines
    kw["max_baseline_s"] = args.max_baseline_s
    return SweepConfig(**kw)


def run_bench(args, parser=None) -> int:
    from . import report, sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    machine = report.machine_info()
    if args.model:
        from tqdm.auto import tqdm

        from .model import bench_minilm

        threads = args.threads[0] if args.threads else None
        batches = args.batches or (1, 32)
        rounds = args.rounds[0] if args.rounds else 7
        results = {"machine": machine, "model": bench_minilm(
            args.recipes, batches, args.seq_len[0], threads, rounds,
            progress=lambda it, **kw: tqdm(it, disable=args.no_progress, **kw))}
    else:
        try:
            cfg = _config(args)
        except S.ChoiceError as e:
            print(f"sparseprune bench: error: {e}", file=sys.stderr)
            return 2
        load = machine["load_average"]
        if load and load[0] >= 1.0:
            # seen here: with another job on the cores, multi-threaded calls stall for whole
            # scheduler ticks (times in multiples of ~4 ms) and ratios become meaningless
            print(f"sparseprune bench: warning: load average {load[0]:.1f} before starting; "
                  "other jobs share the cores and the timings will be noisy", file=sys.stderr)
        print(f"sparseprune bench: {len(cfg.shapes)} shapes x {len(cfg.patterns)} patterns x "
              f"{len(cfg.batches)} batches x {len(cfg.dtypes)} dtypes x {len(cfg.threads)} "
              f"thread counts; kernels {machine['isa']}; load average {machine['load_average']}",
              flush=True)
        partial = out / "results.partial.json"

        def checkpoint(done):
            report.write_json({"machine": machine, "partial": True, **done}, partial)

        results = {"machine": machine, **sweep.run(cfg, progress=not args.no_progress,
                                                   checkpoint=checkpoint)}
        partial.unlink(missing_ok=True)
        sweep.add_limits_percent(results)
        results["break_even"] = sweep.break_even(results["results"])
    import os

    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = round(time.time() - start, 1)
    report.write_json(results, out / "results.json")
    written = report.render(results, out)
    print(f"wrote {out / 'results.json'}, " + ", ".join(str(p) for p in written)
          + f" ({results['wall_s']:.0f} s)")
    return 0


def run_recover(args, parser=None) -> int:
    import os

    from .recovery import BEST, BEST_OPTIONS, run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    options = dict(layer_weight=args.layer_weight, in_domain_repeat=args.in_domain_repeat,
                   by_length=args.group_by_length, cache_teacher=args.cache_teacher,
                   freeze_embeddings=args.freeze_embeddings,
                   eager_attention=args.eager_attention, prune_end=args.prune_end)
    settings = tuple(s for s in args.settings.split(",") if s)
    recipes = None
    if args.best:
        settings, recipes = tuple(BEST), BEST
        options.update(BEST_OPTIONS)
    run(settings, steps=args.steps, lr=args.lr, batch_size=args.batch_size, n_eval=args.eval,
        seed=args.seed, out=args.out, resume=args.resume, progress=not args.no_progress,
        bf16=False if args.fp32 else "auto", recipes=recipes, **options)
    return 0


def run_shrink(args, parser=None) -> int:
    import os

    from .structured import run, time_plan

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.time_plan:
        import json

        rows = time_plan(args.time_plan)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "timing.json").write_text(json.dumps(rows, indent=1))
        return 0
    run(ffn=args.ffn, heads=args.heads, criterion=args.criterion, steps=args.steps, lr=args.lr,
        layer_weight=args.layer_weight, round_to=args.round_to, refit=not args.no_refit,
        gradual=args.gradual,
        seed=args.seed, out=args.out,
        progress=not args.no_progress)
    return 0


def run_shrink_digits(args, parser=None) -> int:
    import json

    from .digits import run, table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        results.append(run(epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                           sparsity=args.sparsity, criterion=args.criterion, seed=seed))
        print(table(results[-1:]), flush=True)
    (out / "shrink_digits.json").write_text(json.dumps(results, indent=1))
    (out / "shrink_digits.md").write_text(table(results))
    print(table(results))
    return 0


def run_plan(args, parser=None) -> int:
    import os

    from .autoplan import run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        candidates = parse_candidates(args.candidates)
    except ValueError as e:
        if parser is not None:
            parser.error(str(e))
        print(f"sparseprune plan: error: {e}", file=sys.stderr)
        return 2
    run(min_cosine=args.min_cosine, criterion=args.criterion, batch=args.batch, seq=args.seq,
        layers=args.layers, n_plan=args.plan_paragraphs, n_eval=args.eval, rounds=args.rounds,
        out=args.out, progress=not args.no_progress, candidates=candidates)
    return 0


def parse_candidates(text: str):
    """'50%,2:4,16x16@80%' -> sensitivity Candidates; ValueError naming the valid forms."""
    import re

    from ..pruning.sensitivity import Candidate

    out = []
    for item in (t.strip() for t in text.split(",")):
        if m := re.fullmatch(r"(\d+(?:\.\d+)?)%", item):
            c = Candidate("unstructured", float(m[1]) / 100)
        elif m := re.fullmatch(r"(\d+):(\d+)", item):
            c = Candidate(item)
        elif m := re.fullmatch(r"(\d+)x(\d+)@(\d+(?:\.\d+)?)%", item):
            c = Candidate(f"block:{m[1]}x{m[2]}", float(m[3]) / 100)
        else:
            raise ValueError(f"--candidates: {item!r} is not 'NN%', 'n:m' or 'BHxBW@NN%'")
        if c.sparsity is not None and not 0 < c.sparsity < 1:
            raise ValueError(f"--candidates: {item!r} needs a sparsity between 0% and 100%")
        out.append(c)
    if not out:
        raise ValueError("--candidates: give at least one")
    return tuple(out)


def run_prune(args, parser=None) -> int:
    import os

    from .autoplan import prune_cli

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        prune_cli(args.config, out=args.out, n_eval=args.eval, batch=args.batch, seq=args.seq)
    except (OSError, ValueError) as e:
        print(f"sparseprune prune: error: {e}", file=sys.stderr)
        return 2
    return 0


def run_report(args, parser=None) -> int:
    from . import report

    try:
        results = report.load_json(args.results)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"sparseprune report: error: {e}", file=sys.stderr)
        return 2
    if results.get("results") and "break_even" not in results:
        # a results.partial.json left by a cut-short sweep: derive what the full run adds
        from . import sweep

        sweep.add_limits_percent(results)
        results["break_even"] = sweep.break_even(results["results"])
    out = Path(args.out) if args.out else Path(args.results).parent
    written = report.render(results, out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv=None) -> int:
    """``python -m sparseprune.bench.cli bench ...`` without the package CLI."""
    parser = argparse.ArgumentParser(prog="sparseprune")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
