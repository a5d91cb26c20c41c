"""The MiniLM recovery experiment (``sparseprune recover``, benchmarks/recover_minilm.py).

all-MiniLM-L6-v2's 36 encoder Linears are pruned (Wanda, calibrated on pydoc_data
paragraphs), then recovered by distillation from the dense model (:mod:`sparseprune.recover`)
on the training part of :mod:`sparseprune.corpus` (other pydoc_data paragraphs and standard
library docstrings). Quality is measured on held-out pydoc_data paragraphs never seen in
training or calibration: mean and minimum cosine between pruned and dense sentence
embeddings, and top-10 retrieval agreement. The recovered model is then swapped onto the
sparse kernels and timed against the dense model at batch 32 x 128 tokens, interleaved.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import random
import time
from pathlib import Path

import torch

from .. import corpus
from ..nn import sparsify
from ..pruning import CubicSchedule, PruneConfig, Pruner
from ..recover import RecoverConfig, distill
from .minilm import calibration_batches, load_minilm, top_k_agreement
from .timing import interleaved

ENCODER = "encoder.layer.*"


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    pattern: str
    sparsity: float | None
    gradual: bool = False   # prune along a cubic schedule during the first part of training
    criterion: str = "wanda"
    # PruneConfig.overrides: another sparsity for some layer types (first matching glob).
    overrides: tuple[tuple[str, float], ...] = ()

    def config(self, schedule: CubicSchedule | None = None) -> PruneConfig:
        """The PruneConfig of this setting over the encoder's Linears."""
        return PruneConfig(pattern=self.pattern, sparsity=self.sparsity,
                           criterion=self.criterion, include=ENCODER, schedule=schedule,
                           overrides={g: {"sparsity": s} for g, s in self.overrides} or None)


SETTINGS = {
    "2:4": Setting("2:4", "2:4", None),
    "70%": Setting("70%", "unstructured", 0.7),
    "90%": Setting("90%", "unstructured", 0.9, gradual=True),
    "16x16@50%": Setting("16x16@50%", "block:16x16", 0.5),
    # SparseGPT starts from a better one-shot model (it also updates the kept weights).
    "2:4/sparsegpt": Setting("2:4/sparsegpt", "2:4", None, criterion="sparsegpt"),
    "70%/sparsegpt": Setting("70%/sparsegpt", "unstructured", 0.7, criterion="sparsegpt"),
    # SparseGPT along the gradual schedule (each step re-solves with the dense model's input
    # statistics) and SparseGPT's weight update for a fixed block mask.
    "90%/sparsegpt": Setting("90%/sparsegpt", "unstructured", 0.9, gradual=True,
                             criterion="sparsegpt"),
    "16x16@50%/sparsegpt": Setting("16x16@50%/sparsegpt", "block:16x16", 0.5,
                                   criterion="sparsegpt"),
    # The blocks removed along the gradual schedule, SparseGPT re-solving at every step.
    "16x16@50%/gradual-sparsegpt": Setting("16x16@50%/gradual-sparsegpt", "block:16x16", 0.5,
                                           gradual=True, criterion="sparsegpt"),
    # 50% of the encoder's weights in blocks, spread by layer type after the one-shot
    # sensitivity (benchmarks/autoplan/sparsegpt-session5/sensitivity.json: at 16x16 blocks
    # 50%, the summed drops of the attention projections, FFN inputs and FFN outputs, a third
    # of the weights each, were 0.31, 0.18 and 0.09): 35% / 50% / 65%.
    "16x16@50%/sparsegpt-by-type": Setting(
        "16x16@50%/sparsegpt-by-type", "block:16x16", 0.5, criterion="sparsegpt",
        overrides=(("*.attention.*", 0.35), ("*.intermediate.dense", 0.5),
                   ("*.output.dense", 0.65))),
    # Further the same way (25% / 50% / 75%): the least summed one-shot drop on a 5% grid
    # when each type's drop is interpolated through its 50% and 80% points and 0 at 0%.
    "16x16@50%/sparsegpt-by-type-skewed": Setting(
        "16x16@50%/sparsegpt-by-type-skewed", "block:16x16", 0.5, criterion="sparsegpt",
        overrides=(("*.attention.*", 0.25), ("*.intermediate.dense", 0.5),
                   ("*.output.dense", 0.75))),
    # The same by layer (36 sparsities): least_drop_split of that sensitivity run (measured
    # on planning paragraphs of the training split), each layer dense, at 50% or at 80%
    # (its measured points), one attention projection at 20% to prune exactly half of the
    # encoder; a test recomputes it from the committed file.
    "16x16@50%/sparsegpt-by-layer": Setting(
        "16x16@50%/sparsegpt-by-layer", "block:16x16", 0.5, criterion="sparsegpt",
        overrides=tuple((f"*encoder.layer.{i}.output.dense", 0.8) for i in range(4))
        + tuple((f"*encoder.layer.{name}", 0.0) for name in (
            "2.attention.self.key", "3.attention.self.key", "3.attention.output.dense",
            "4.attention.self.key", "4.attention.self.value", "4.attention.output.dense",
            "5.attention.self.key", "5.attention.self.value", "5.attention.output.dense"))
        + (("*encoder.layer.2.attention.self.value", 0.2),)),
    # 90% of the encoder's weights, gradual with SparseGPT as "90%/sparsegpt", by layer type
    # (85% / 90% / 95%; one-shot drops at 90% unstructured summed 0.54 / 0.36 / 0.18).
    "90%/sparsegpt-by-type": Setting(
        "90%/sparsegpt-by-type", "unstructured", 0.9, gradual=True, criterion="sparsegpt",
        overrides=(("*.attention.*", 0.85), ("*.intermediate.dense", 0.9),
                   ("*.output.dense", 0.95))),
}
DEFAULT_SETTINGS = ("2:4", "70%", "90%", "16x16@50%")

#: The best measured recipe per setting (benchmarks/RESULTS.md, "Recovery", sessions 9 and
#: 20-22): setting -> (steps, lr), or (steps, lr, {option: value}) to override BEST_OPTIONS
#: (options from RECIPE_OPTIONS) for one setting; each fits the 20-minute budget on the
#: project's 2-core machine (sessions 21-22: 16.8-17.5 min; the gradual 90% runs its steps
#: x1.3, its schedule reaching 90% at 75% of them, with 31 SparseGPT re-solves, and
#: weighs the per-layer hidden states twice, as do the blocks). The 16x16 blocks spread by
#: layer recover further (0.934 against 0.907 uniform) but leave nine attention projections
#: dense (~1.5x against 1.77x dense end to end).
BEST = {"2:4/sparsegpt": (2600, 4e-4), "70%/sparsegpt": (2600, 7e-4),
        "90%/sparsegpt": (2000, 1.8e-3, {"prune_end": 0.75, "layer_weight": 2.0}),
        "16x16@50%/sparsegpt-by-layer": (2700, 1e-3, {"layer_weight": 2.0})}
#: The options a recipe in :func:`run` may set for its own setting.
RECIPE_OPTIONS = ("eager_attention", "prune_end", "layer_weight")
BEST_OPTIONS = dict(layer_weight=1.0, in_domain_repeat=4, by_length=True, cache_teacher=True,
                    freeze_embeddings=True, eager_attention=True, prune_end=0.6)


def least_drop_split(rows, pattern: str, sparsity: float,
                     levels=(0.0, 0.5, 0.8), grid: float = 0.05) -> dict[str, float]:
    """Per-layer sparsities that prune ``sparsity`` of the weights of the layers in
    ``rows`` (sensitivity rows: ``layer``, ``shape``, ``pattern``, ``sparsity``, ``drop``,
    as written by ``sparseprune autoplan``) for the least summed one-shot drop: each layer
    takes one of ``levels`` (its drop interpolated linearly between the measured points, 0
    at 0%), stepped up greedily by drop per pruned weight; the overshoot of the last step is
    given back by the layer whose last step cost most per weight, among those where it is a
    whole number of ``grid`` steps. How ``16x16@50%/sparsegpt-by-layer`` was made."""
    drops, sizes = {}, {}
    for r in rows:
        if r["pattern"] == pattern:
            drops.setdefault(r["layer"], {0.0: 0.0})[r["sparsity"]] = r["drop"]
            sizes[r["layer"]] = r["shape"][0] * r["shape"][1]
    if not drops:
        raise ValueError(f"no sensitivity rows of pattern {pattern!r}")

    points = {n: sorted(d.items()) for n, d in drops.items()}

    def drop(layer, s):
        for (s0, d0), (s1, d1) in zip(points[layer], points[layer][1:]):
            if s0 <= s <= s1:
                return d0 + (d1 - d0) * (s - s0) / (s1 - s0)
        raise ValueError(f"{layer}: no measured drop around sparsity {s}")

    def step_cost(layer, i):  # from levels[i - 1] to levels[i]
        a, b = levels[i - 1], levels[i]
        return (drop(layer, b) - drop(layer, a)) / (sizes[layer] * (b - a))

    level = dict.fromkeys(drops, 0)
    budget, pruned = sparsity * sum(sizes.values()), 0.0
    while pruned < budget:
        up = [n for n in drops if level[n] + 1 < len(levels)]
        if not up:
            raise ValueError(f"levels {levels} cannot prune {sparsity:.0%}")
        best = min(up, key=lambda n: step_cost(n, level[n] + 1))
        level[best] += 1
        pruned += sizes[best] * (levels[level[best]] - levels[level[best] - 1])
    split = {n: levels[i] for n, i in level.items()}
    over = pruned - budget
    if over > 1e-6:
        def whole(n):
            k = over / sizes[n] / grid
            return level[n] > 0 and abs(k - round(k)) < 1e-6 and \
                over / sizes[n] <= levels[level[n]] - levels[level[n] - 1]
        trim = max([n for n in drops if whole(n)] or [n for n in drops if level[n] > 0],
                   key=lambda n: step_cost(n, level[n]))
        split[trim] = round(split[trim] - over / sizes[trim], 9)
    return split


def _encode(st, texts, batch=32):
    with torch.inference_mode():
        return st.encode(texts, batch_size=batch, convert_to_tensor=True,
                         normalize_embeddings=True)


def quality(dense_emb: torch.Tensor, emb: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(dense_emb.float(), emb.float(), dim=1)
    return {"mean_cosine": cos.mean().item(), "min_cosine": cos.min().item(),
            "top10_agreement": top_k_agreement(dense_emb, emb, 10)}


# Texts per length-sorted chunk when grouping by length: sorting the whole corpus would make
# every batch's neighbours the same from epoch to epoch; 50 batches keep most of the gain.
GROUP_CHUNK_BATCHES = 50


def group_by_length(texts: list[str], lengths: list[int], batch_size: int, seed: int) -> list[str]:
    """``texts`` shuffled (seeded), then sorted by length inside chunks of
    ``GROUP_CHUNK_BATCHES`` batches, so that a batch holds paragraphs of similar length and
    pads few tokens (the padded tokens of a batch are computed and thrown away)."""
    if len(lengths) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(lengths)} lengths")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    chunk = batch_size * GROUP_CHUNK_BATCHES
    out = []
    for c in range(0, len(order), chunk):
        out.extend(texts[i] for i in sorted(order[c:c + chunk], key=lambda i: lengths[i]))
    return out


def train_batches(tokenizer, texts, batch_size: int, max_tokens: int, *,
                  by_length: bool = False, seed: int = 0) -> list[dict]:
    """Tokenised batches of ``batch_size`` paragraphs (padded within a batch); with
    ``by_length``, of paragraphs of similar length (:func:`group_by_length`)."""
    if by_length:
        ids = tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
        texts = group_by_length(list(texts), [len(i) for i in ids], batch_size, seed)
    out = []
    for i in range(0, len(texts) - batch_size + 1, batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                        truncation=True, max_length=max_tokens)
        out.append(dict(enc))
    return out


def run_setting(setting: Setting, dense_st, calib_batches, batches, eval_texts, dense_emb,
                *, steps: int, lr: float, seed: int, checkpoint_dir: Path | None,
                time_rounds: int, progress: bool, bf16: bool | str = "auto",
                layer_weight: float = 0.0, cache_teacher: bool = False,
                freeze_embeddings: bool = False, eager_attention: bool = False,
                prune_end: float = 0.6) -> dict:
    if setting.gradual:  # the schedule takes the first prune_end of the steps: give recovery
        steps = int(steps * 1.3)  # about as many as the others get
    st = copy.deepcopy(dense_st)
    model = st[0].auto_model
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    schedule = (CubicSchedule(start=0, end=max(1, int(steps * prune_end)),
                              frequency=max(1, steps // 40)) if setting.gradual else None)
    pruner = Pruner(model, setting.config(schedule))
    model.eval()
    t0 = time.perf_counter()
    pruner.calibrate(calib_batches)
    if setting.gradual:
        one_shot_model = copy.deepcopy(st)
        p2 = Pruner(one_shot_model[0].auto_model, setting.config())
        p2.stats = pruner.stats
        p2.prune().finalize()
        one_shot = quality(dense_emb, _encode(one_shot_model, eval_texts))
        del one_shot_model
    else:
        pruner.prune()
        one_shot = quality(dense_emb, _encode(st, eval_texts))
    ckpt = checkpoint_dir / f"recover-{setting.name.replace(':', '_').replace('%', 'pct')}.pt" \
        if checkpoint_dir else None
    # Hidden states of every layer are returned only while distilling with layer_weight.
    for m in (st, dense_st):
        m[0].auto_model.config.output_hidden_states = layer_weight > 0
    rcfg = RecoverConfig(steps=steps, lr=lr, seed=seed, checkpoint=ckpt, checkpoint_every=50,
                         progress=progress, bf16=bf16, layer_weight=layer_weight,
                         cache_teacher=cache_teacher,
                         attn_implementation="eager" if eager_attention else None)
    try:
        res = distill(st, dense_st, batches, pruner=pruner,
                      config=rcfg)
    finally:
        for m in (st, dense_st):
            m[0].auto_model.config.output_hidden_states = False
    train_s = time.perf_counter() - t0
    before_s = train_s - res.seconds
    rows = pruner.report()
    achieved = sum(r.zeros for r in rows) / sum(r.numel for r in rows)
    pruner.finalize()
    st.eval()
    recovered = quality(dense_emb, _encode(st, eval_texts))

    # The layers pruned below 45% (by-type settings) stay dense.
    report = sparsify(st, min_sparsity=0.45, include=f"*{ENCODER}")
    sparse_q = quality(dense_emb, _encode(st, eval_texts))
    tok = st.tokenizer
    feats = dict(tok(eval_texts[:32], return_tensors="pt", padding="max_length",
                     truncation=True, max_length=128))
    with torch.inference_mode():
        t = interleaved({"dense": lambda: dense_st(dict(feats)),
                         "sparse": lambda: st(dict(feats))}, rounds=time_rounds, warmup=2)
    return {"setting": setting.name, "pattern": setting.pattern, "gradual": setting.gradual,
            "criterion": setting.criterion, "layer_weight": layer_weight,
            "overrides": dict(setting.overrides),
            "bf16_autocast": rcfg.use_bf16(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "sparsity_of_pruned_layers": achieved, "steps": steps, "lr": lr,
            "one_shot": one_shot, "recovered": recovered, "recovered_on_sparse_kernels": sparse_q,
            "train_seconds": train_s, "prune_and_evaluate_seconds": before_s,
            "freeze_embeddings": freeze_embeddings, "eager_attention": eager_attention,
            "prune_end": prune_end if setting.gradual else None,
            "final_loss": res.losses[-1], "first_loss": res.losses[0],
            "swapped_layers": len(report.swapped),
            "formats": sorted({r.format for r in report.swapped}),
            "speedup_b32x128": t["dense"].median / t["sparse"].median}


def load_split(n_eval: int, n_calib: int, *, seed: int, max_tokens: int = 128):
    """The dense MiniLM (eval mode), the seeded :func:`sparseprune.corpus.split` (training
    texts, calibration batches, held-out evaluation paragraphs) shared by the MiniLM
    experiments."""
    dense_st = load_minilm(max_tokens)
    dense_st.eval()
    train, calib, evaluation = corpus.split(n_eval, n_calib, seed=seed)
    calib_batches = calibration_batches(dense_st.tokenizer, calib, max_tokens)
    return dense_st, train, calib_batches, evaluation


def run(settings=DEFAULT_SETTINGS, *, steps: int = 700, lr: float = 2e-4,
        batch_size: int = 16, max_tokens: int = 128, n_eval: int = 500, n_calib: int = 64,
        seed: int = 0, out: str | os.PathLike = "recover-out", resume: bool = False,
        time_rounds: int = 9, progress: bool = True, bf16: bool | str = "auto",
        layer_weight: float = 0.0, in_domain_repeat: int = 1,
        by_length: bool = False, cache_teacher: bool = False,
        freeze_embeddings: bool = False, eager_attention: bool = False,
        prune_end: float = 0.6, recipes: dict[str, tuple] | None = None) -> list[dict]:
    """Runs ``settings`` one after the other (every one with ``steps`` and ``lr``, or with
    its own ``recipes[name] = (steps, lr)`` or ``(steps, lr, {option: value})`` with
    options from :data:`RECIPE_OPTIONS`; :data:`BEST` for the published runs) and writes
    recover.json / recover.md to ``out``. ``prune_end``: the fraction of a gradual
    setting's steps by which its schedule reaches the final sparsity."""
    if in_domain_repeat < 1:
        raise ValueError(f"in_domain_repeat must be >= 1, got {in_domain_repeat}")
    plans = {}
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}; choose from {sorted(SETTINGS)}")
        recipe = tuple((recipes or {}).get(name, (steps, lr)))
        own = recipe[2] if len(recipe) == 3 else None
        if len(recipe) not in (2, 3) or (len(recipe) == 3 and not (
                isinstance(own, dict) and set(own) <= set(RECIPE_OPTIONS))):
            raise ValueError(f"recipe of {name!r}: (steps, lr) or (steps, lr, {{option: "
                             f"value}}) with options from {RECIPE_OPTIONS}, got {recipe!r}")
        options = {"eager_attention": eager_attention, "prune_end": prune_end,
                   "layer_weight": layer_weight, **(own or {})}
        if not 0 < options["prune_end"] <= 1:
            raise ValueError(f"prune_end must be in (0, 1], got {options['prune_end']!r} "
                             f"({name})")
        plans[name] = (recipe[0], recipe[1], options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dense_st, train, calib_batches, evaluation = load_split(n_eval, n_calib, seed=seed,
                                                            max_tokens=max_tokens)
    # The training pydoc_data paragraphs (the evaluation's domain, never its paragraphs) can
    # be repeated: they are 357 of the 4,393 training texts. With no repeat the batches are
    # the ones of the published runs (one list, pydoc_data first).
    pydoc = set(corpus.pydoc_paragraphs())
    in_domain = [t for t in train if t in pydoc]
    make = functools.partial(train_batches, dense_st.tokenizer, batch_size=batch_size,
                             max_tokens=max_tokens, by_length=by_length, seed=seed)
    if in_domain_repeat == 1:
        batches = make(train)
    else:
        other = [t for t in train if t not in pydoc]
        batches = make(in_domain) * in_domain_repeat + make(other)
    padded = sum(b["input_ids"].numel() for b in batches)
    dense_emb = _encode(dense_st, evaluation)
    print(f"# MiniLM recovery: {len(train)} training texts ({len(in_domain)} pydoc_data, "
          f"batches x{in_domain_repeat}; {len(batches)} batches of {batch_size}"
          f"{', grouped by length' if by_length else ''}, {padded} padded tokens), "
          f"{len(calib_batches)} calibration, {len(evaluation)} held-out evaluation "
          f"paragraphs; {torch.get_num_threads()} threads", flush=True)
    results = []
    for name in settings:
        n_steps, n_lr, options = plans[name]
        r = run_setting(SETTINGS[name], dense_st, calib_batches, batches, evaluation,
                        dense_emb, steps=n_steps, lr=n_lr, seed=seed,
                        checkpoint_dir=out if resume else None, time_rounds=time_rounds,
                        progress=progress, bf16=bf16, cache_teacher=cache_teacher,
                        freeze_embeddings=freeze_embeddings, **options)
        r["in_domain_repeat"] = in_domain_repeat
        r["cache_teacher"] = cache_teacher
        r["by_length"] = by_length
        r["padded_tokens_per_epoch"] = padded
        results.append(r)
        print(_line(r), flush=True)
        (out / "recover.json").write_text(json.dumps(results, indent=1))
    (out / "recover.md").write_text(table(results))
    print(table(results))
    return results


def _line(r):
    return (f"{r['setting']}: one-shot cos {r['one_shot']['mean_cosine']:.3f} -> recovered "
            f"{r['recovered']['mean_cosine']:.3f} (min {r['recovered']['min_cosine']:.3f}, "
            f"top-10 {r['recovered']['top10_agreement']:.3f}) in {r['train_seconds']:.0f} s; "
            f"sparse kernels {r['speedup_b32x128']:.2f}x dense")


def table(results) -> str:
    lines = ["| setting | criterion, distillation | sparsity | one-shot mean cos | recovered mean cos | min cos | "
             "top-10 agreement | on sparse kernels | train time | steps | speed vs dense "
             "(b32 x 128) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rec = r["recovered"]
        lines.append(
            f"| {r['setting']}{' (gradual)' if r['gradual'] else ''} | "
            f"{r.get('criterion', 'wanda')}, "
            f"{'+ layers' if r.get('layer_weight') else 'embedding + tokens'} | "
            f"{r['sparsity_of_pruned_layers']:.1%} | {r['one_shot']['mean_cosine']:.3f} | "
            f"{rec['mean_cosine']:.3f} | {rec['min_cosine']:.3f} | "
            f"{rec['top10_agreement']:.3f} | "
            f"{r['recovered_on_sparse_kernels']['mean_cosine']:.3f} | "
            f"{r['train_seconds'] / 60:.1f} min | {r['steps']} | "
            f"{r['speedup_b32x128']:.2f}x |")
    return "\n".join(lines) + "\n"
