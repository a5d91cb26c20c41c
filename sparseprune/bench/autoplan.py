"""Per-layer plan for all-MiniLM-L6-v2 from measured sensitivity and measured kernel speed
(``sparseprune plan``, benchmarks/autoplan_minilm.py), and ``sparseprune prune``.

The 36 encoder Linears are scored with Wanda or SparseGPT (calibration paragraphs; SparseGPT
plans are applied with the sequential pass, :meth:`~sparseprune.Pruner.prune_sequential`). Sensitivity: each
layer alone x each candidate, metric = mean cosine of the sentence embeddings to the dense
ones on a *planning* set of paragraphs (from the training split). Kernel speed: each layer
shape x candidate at the timed batch (rows = batch x tokens). :func:`~sparseprune.pruning.
fit_plan` picks the fastest per-layer plan whose measured planning-set drop fits the budget.
Then, on held-out pydoc_data paragraphs never used for planning or calibration, the plan and
every uniform setting (all 36 layers with one candidate) are measured: mean cosine and
end-to-end speed of the sparsified model vs dense, interleaved in one process.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from ..nn import sparsify
from ..pruning import (DEFAULT_CANDIDATES, PruneConfig, Pruner, fit_plan, load_config,
                       save_config, sensitivity)
from ..pruning.config import config_to_dict
from .recovery import _encode, load_split, quality
from .timing import interleaved

ENCODER = "encoder.layer.*"


def _feats(st, texts, batch: int, seq: int) -> dict:
    return dict(st.tokenizer(texts[:batch], return_tensors="pt", padding="max_length",
                             truncation=True, max_length=seq))


def prune_minilm(st, config: PruneConfig, calib_batches) -> None:
    """Prunes the SentenceTransformer ``st`` in place with ``config`` (on its BERT model)."""
    model = st[0].auto_model
    pruner = Pruner(model, config)
    model.eval()
    if config.criterion == "sparsegpt":
        pruner.prune_sequential(calib_batches)
    else:
        if config.criterion in ("wanda", "taylor"):
            pruner.calibrate(calib_batches)
        pruner.prune()
    pruner.finalize()


def measure(dense_st, st, evaluation, dense_emb, feats, rounds: int) -> dict:
    """Held-out quality, then sparse kernels swapped in and end-to-end speed vs dense."""
    q = quality(dense_emb, _encode(st, evaluation))
    report = sparsify(st, min_sparsity=0.45, include=f"*{ENCODER}")
    with torch.inference_mode():
        t = interleaved({"dense": lambda: dense_st(dict(feats)),
                         "sparse": lambda: st(dict(feats))}, rounds=rounds, warmup=2)
    return {**q, "swapped": len(report.swapped),
            "speedup": t["dense"].median / t["sparse"].median}


def run(*, min_cosine: float = 0.95, criterion: str = "wanda",
        candidates=DEFAULT_CANDIDATES, batch: int = 1,
        seq: int = 128, n_eval: int = 500, n_plan: int = 96, seed: int = 0,
        layers: str = ENCODER, out: str | os.PathLike = "plan-out", rounds: int = 15,
        progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dense_st, train, calib_batches, evaluation = load_split(n_eval, 64, seed=seed)
    plan_texts = train[:n_plan]
    plan_dense = _encode(dense_st, plan_texts)
    eval_dense = _encode(dense_st, evaluation)
    feats = _feats(dense_st, evaluation, batch, seq)

    st = copy.deepcopy(dense_st)

    def plan_cosine(model_st) -> float:
        emb = _encode(model_st, plan_texts)
        return torch.nn.functional.cosine_similarity(plan_dense, emb, dim=1).mean().item()

    # the metric reads st, whose BERT model sensitivity() prunes layer by layer
    sens = sensitivity(st[0].auto_model, lambda _model: plan_cosine(st), candidates, include=layers, criterion=criterion,
                       calib_batches=calib_batches, batch_rows=batch * seq,
                       time_rounds=rounds, progress=progress)
    (out / "sensitivity.json").write_text(json.dumps(sens.to_json()))
    (out / "sensitivity.md").write_text(sens.table())
    sens.plot(out / "sensitivity.png")

    def prune(st_copy, cfg):  # fit_plan hands us a deep copy of the dense model
        prune_minilm(st_copy, cfg, calib_batches)
        return st_copy

    cfg, plan_metric, tries = fit_plan(dense_st, sens, plan_cosine, 1.0 - min_cosine, prune,
                                       criterion=criterion)
    save_config(cfg, out / "plan.yaml")

    results = {"min_cosine": min_cosine, "criterion": criterion, "batch": batch, "seq": seq,
               "threads": torch.get_num_threads(), "plan_tries": tries,
               "plan_layers": {k: v for k, v in config_to_dict(cfg)["overrides"].items()},
               "uniform": {}}
    planned = copy.deepcopy(dense_st)
    prune_minilm(planned, cfg, calib_batches)
    results["plan"] = measure(dense_st, planned, evaluation, eval_dense, feats, rounds)
    del planned
    for c in candidates:
        uni = copy.deepcopy(dense_st)
        prune_minilm(uni, PruneConfig(pattern=c.pattern, sparsity=c.sparsity,
                                      criterion=criterion, include=layers), calib_batches)
        results["uniform"][c.label] = measure(dense_st, uni, evaluation, eval_dense, feats,
                                              rounds)
        del uni
    meeting = {k: v for k, v in results["uniform"].items() if v["mean_cosine"] >= min_cosine}
    best = max(meeting.items(), key=lambda kv: kv[1]["speedup"], default=None)
    # Keeping every layer dense always meets the budget: 1.0x by definition.
    results["best_uniform"] = (best[0], best[1]["speedup"]) if best and \
        best[1]["speedup"] > 1.0 else ("dense (no pruning)", 1.0)
    results["plan_vs_best_uniform"] = results["plan"]["speedup"] / results["best_uniform"][1]
    (out / "plan.json").write_text(json.dumps(results, indent=1))
    (out / "plan.md").write_text(table(results))
    print(table(results))
    return results


def table(r: dict) -> str:
    lines = [f"Criterion {r.get('criterion', 'wanda')} (one-shot). "
             f"Budget: held-out mean cosine >= {r['min_cosine']}; end-to-end at batch "
             f"{r['batch']} x {r['seq']} tokens, {r['threads']} threads.", "",
             "| setting | held-out mean cos | min cos | top-10 agreement | meets budget | "
             "speed vs dense |", "|---|---|---|---|---|---|"]

    def row(name, m):
        ok = "yes" if m["mean_cosine"] >= r["min_cosine"] else "no"
        lines.append(f"| {name} | {m['mean_cosine']:.3f} | {m['min_cosine']:.3f} | "
                     f"{m['top10_agreement']:.3f} | {ok} | {m['speedup']:.2f}x |")

    row(f"auto plan ({len(r['plan_layers'])} layers pruned)", r["plan"])
    for name, m in r["uniform"].items():
        row(f"uniform {name}", m)
    lines += ["", f"Best uniform within budget: {r['best_uniform'][0]} "
                  f"({r['best_uniform'][1]:.2f}x); auto plan / best uniform = "
                  f"{r['plan_vs_best_uniform']:.2f}x.", ""]
    return "\n".join(lines)


def prune_cli(config_path: str, *, out: str | os.PathLike = "prune-out", n_eval: int = 500,
              batch: int = 1, seq: int = 128, seed: int = 0, rounds: int = 15) -> dict:
    """``sparseprune prune --config plan.yaml``: prunes MiniLM's encoder with the config,
    measures held-out quality and speed, and saves the sparse checkpoint."""
    from ..io import save

    cfg = load_config(config_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dense_st, _, calib_batches, evaluation = load_split(n_eval, 64, seed=seed)
    st = copy.deepcopy(dense_st)
    prune_minilm(st, cfg, calib_batches)
    result = measure(dense_st, st, evaluation, _encode(dense_st, evaluation),
                     _feats(dense_st, evaluation, batch, seq), rounds)
    nbytes = save(st[0].auto_model, out / "model.safetensors")
    result.update(config=str(config_path), checkpoint_bytes=nbytes, batch=batch, seq=seq)
    (out / "prune.json").write_text(json.dumps(result, indent=1))
    print(f"held-out mean cosine {result['mean_cosine']:.3f} (min {result['min_cosine']:.3f}, "
          f"top-10 {result['top10_agreement']:.3f}); {result['swapped']} layers on sparse "
          f"kernels, {result['speedup']:.2f}x dense at batch {batch} x {seq}; checkpoint "
          f"{nbytes / 2**20:.1f} MiB in {out}")
    return result


__all__ = ["run", "table", "prune_cli", "prune_minilm"]
