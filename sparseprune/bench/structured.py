"""Structured pruning of all-MiniLM-L6-v2 (``sparseprune shrink``, benchmarks/shrink_minilm.py).

FFN neurons and attention heads of every encoder layer are scored (Wanda-style: weights
times the activation norms of calibration paragraphs, summed over the whole group), the
lowest removed (with ``refit``, the layers reading them first refitted by least squares on
the calibration inputs), and the model shrunk: a smaller dense MiniLM with plain torch modules. It is
then distilled from the dense model on the training part of :mod:`sparseprune.corpus`
(the same recipe as :mod:`sparseprune.bench.recovery`) and measured on held-out pydoc_data
paragraphs. Speed: dense vs shrunk at batch 32 x 128 tokens with torch's own dense kernels,
interleaved in the same process. Size: parameters and safetensors checkpoint bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import corpus
from ..pruning import CubicSchedule, PruneConfig, Pruner
from ..recover import RecoverConfig, distill
from .minilm import load_minilm
from .recovery import _encode, load_split, quality, train_batches
from .timing import interleaved

__all__ = ["run", "table", "time_plan"]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _checkpoint_bytes(model: torch.nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path.stat().st_size


def run(*, ffn: float = 0.5, heads: float = 0.25, criterion: str = "wanda", steps: int = 600,
        lr: float = 2e-4, layer_weight: float = 1.0, batch_size: int = 16,
        max_tokens: int = 128, n_eval: int = 500, n_calib: int = 64, seed: int = 0,
        round_to: int = 16, refit: bool = True, gradual: bool = False,
        out: str | os.PathLike = "shrink-out",
        time_rounds: int = 15, progress: bool = True, bf16: bool | str = "auto") -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dense_st, train, calib_batches, evaluation = load_split(n_eval, n_calib, seed=seed,
                                                            max_tokens=max_tokens)
    batches = train_batches(dense_st.tokenizer, train, batch_size, max_tokens)
    dense_emb = _encode(dense_st, evaluation)

    st = copy.deepcopy(dense_st)
    model = st[0].auto_model
    overrides = {"*.attention.self": {"pattern": "head", "sparsity": heads}}
    cfg = PruneConfig(pattern="channel", sparsity=ffn, criterion=criterion, structured=True,
                      round_to=round_to, refit=refit, overrides=overrides)
    t0 = time.perf_counter()
    if gradual:  # remove units along a cubic schedule over the first half of distillation
        schedule = CubicSchedule(start=0, end=max(1, steps // 2),
                                 frequency=max(1, steps // 25))
        probe = copy.deepcopy(st)
        Pruner(probe[0].auto_model, cfg).calibrate(calib_batches, hessian=refit).prune()
        one_shot = quality(dense_emb, _encode(probe, evaluation))  # for reference
        del probe
        cfg = dataclasses.replace(cfg, schedule=schedule)
    pruner = Pruner(model, cfg)
    pruner.calibrate(calib_batches, hessian=refit)
    if not gradual:
        pruner.prune()
        one_shot = quality(dense_emb, _encode(st, evaluation))
        pruner.shrink()
    shrunk_check = quality(dense_emb, _encode(st, evaluation)) if not gradual else one_shot

    for m in (st, dense_st):
        m[0].auto_model.config.output_hidden_states = layer_weight > 0
    try:
        res = distill(st, dense_st, batches, pruner=pruner if gradual else None,
                      require_masks=False,
                      config=RecoverConfig(steps=steps, lr=lr, seed=seed, progress=progress,
                                           bf16=bf16, layer_weight=layer_weight))
    finally:
        for m in (st, dense_st):
            m[0].auto_model.config.output_hidden_states = False
    if gradual:
        pruner.shrink()
    groups = pruner.shrink_table()
    (out / "plan.json").write_text(json.dumps(pruner.plan))
    train_s = time.perf_counter() - t0
    st.eval()
    recovered = quality(dense_emb, _encode(st, evaluation))

    feats = dict(st.tokenizer(evaluation[:32], return_tensors="pt", padding="max_length",
                              truncation=True, max_length=128))
    with torch.inference_mode():
        t = interleaved({"dense": lambda: dense_st(dict(feats)),
                         "shrunk": lambda: st(dict(feats))}, rounds=time_rounds, warmup=2)
    dense_model = dense_st[0].auto_model
    result = {
        "ffn_removed": ffn, "heads_removed": heads, "criterion": criterion,
        "round_to": round_to, "refit": refit, "gradual": gradual, "steps": steps, "lr": lr, "layer_weight": layer_weight,
        "one_shot_masked": one_shot, "one_shot_shrunk": shrunk_check, "recovered": recovered,
        "train_seconds": train_s, "first_loss": res.losses[0], "final_loss": res.losses[-1],
        "params_dense": _params(dense_model), "params_shrunk": _params(model),
        "checkpoint_bytes_dense": _checkpoint_bytes(dense_model),
        "checkpoint_bytes_shrunk": _checkpoint_bytes(model),
        "speedup_b32x128": t["dense"].median / t["shrunk"].median,
        "dense_ms": t["dense"].median * 1e3, "shrunk_ms": t["shrunk"].median * 1e3,
        "threads": torch.get_num_threads(), "groups_table": groups,
    }
    (out / "shrink.json").write_text(json.dumps(result, indent=1))
    (out / "shrink.md").write_text(table(result))
    print(table(result))
    return result


def time_plan(plan_path: str | os.PathLike, *, shapes=((32, 128), (8, 128), (1, 128)),
              rounds: int = 31) -> list[dict]:
    """Speed of a shrunk MiniLM vs dense from its saved plan alone (weights do not change
    the time): a fresh MiniLM is shrunk with :func:`sparseprune.structured.apply_plan`, and
    both are timed interleaved at each (batch, tokens) in ``shapes``."""
    from ..structured import apply_plan, load_plan

    dense_st = load_minilm(128)
    dense_st.eval()
    st = copy.deepcopy(dense_st)
    apply_plan(st[0].auto_model, load_plan(plan_path))
    texts = corpus.pydoc_paragraphs()[:max(b for b, _ in shapes)]
    rows = []
    for batch, seq in shapes:
        feats = dict(st.tokenizer(texts[:batch], return_tensors="pt", padding="max_length",
                                  truncation=True, max_length=seq))
        with torch.inference_mode():
            t = interleaved({"dense": lambda: dense_st(dict(feats)),
                             "shrunk": lambda: st(dict(feats))}, rounds=rounds, warmup=3)
        rows.append({"batch": batch, "seq": seq, "dense_ms": t["dense"].median * 1e3,
                     "shrunk_ms": t["shrunk"].median * 1e3,
                     "speedup": t["dense"].median / t["shrunk"].median,
                     "threads": torch.get_num_threads()})
        print(f"batch {batch} x {seq}: {rows[-1]['speedup']:.2f}x dense "
              f"({rows[-1]['dense_ms']:.1f} -> {rows[-1]['shrunk_ms']:.1f} ms)", flush=True)
    return rows


def table(r: dict) -> str:
    rec = r["recovered"]
    return "\n".join([
        "| removed | criterion | one-shot mean cos | recovered mean cos | min cos | top-10 "
        "agreement | params | checkpoint | train time | steps | speed vs dense (b32 x 128) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['ffn_removed']:.0%} FFN neurons, {r['heads_removed']:.0%} heads "
        f"(round_to {r['round_to']}) | {r['criterion']}"
        f"{' + refit' if r.get('refit') else ''} | "
        f"{r['one_shot_shrunk']['mean_cosine']:.3f} | {rec['mean_cosine']:.3f} | "
        f"{rec['min_cosine']:.3f} | {rec['top10_agreement']:.3f} | "
        f"{r['params_shrunk'] / 1e6:.2f} M of {r['params_dense'] / 1e6:.2f} M | "
        f"{r['checkpoint_bytes_shrunk'] / 2**20:.1f} MiB of "
        f"{r['checkpoint_bytes_dense'] / 2**20:.1f} MiB | {r['train_seconds'] / 60:.1f} min | "
        f"{r['steps']} | {r['speedup_b32x128']:.2f}x |", ""])
