"""Global ranking: one ordering of the units of several layers, within per-layer bounds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["global_keep"]


def _bounds(n: int, min_density: float, max_density: float) -> tuple[int, int]:
    """Fewest and most units a layer of ``n`` units may prune."""
    # The epsilon keeps 0.3 * 10 from becoming 3.0000000000000004 -> ceil 4.
    keep_lo = min(n, math.ceil(min_density * n - 1e-9))
    keep_hi = max(keep_lo, math.floor(max_density * n + 1e-9))
    return n - keep_hi, n - keep_lo


def global_keep(unit_scores: Sequence[torch.Tensor], sparsity: float,
                min_density: Sequence[float], max_density: Sequence[float]) -> list[torch.Tensor]:
    """Prunes ``round(sparsity * total_units)`` units with the lowest scores across all
    layers, such that layer ``l`` keeps between ``ceil(min_density[l] * n_l)`` and
    ``floor(max_density[l] * n_l)`` of its units. Ties: lower layer index, then lower unit
    index, is pruned first - so one layer without bounds equals
    :func:`sparseprune.masks.prune_lowest`. Returns one 1-D keep-mask per layer.

    Exact: every layer first prunes its mandatory lowest units, the remaining budget goes
    to the globally lowest of the optional ones; as each layer's candidates are its own
    units in ascending order, the choice is a prefix per layer.
    """
    sizes = [s.numel() for s in unit_scores]
    total = sum(sizes)
    budget = round(sparsity * total)
    bounds = [_bounds(n, lo, hi) for n, lo, hi in zip(sizes, min_density, max_density)]
    must = sum(b[0] for b in bounds)
    can = sum(b[1] for b in bounds)
    if not must <= budget <= can:
        raise ValueError(f"global sparsity {sparsity} prunes {budget} of {total} units, but the "
                         f"per-layer density bounds allow only {must}..{can}; loosen "
                         f"min_density/max_density or change the sparsity")
    orders, cand_scores, cand_keys, cand_layer = [], [], [], []
    offset = 0
    for i, (s, (lo, hi)) in enumerate(zip(unit_scores, bounds)):
        s = s.reshape(-1).to(torch.float64).cpu()
        order = torch.sort(s, stable=True).indices
        orders.append(order)
        cand_scores.append(s[order[lo:hi]])
        cand_keys.append(offset + order[lo:hi])
        cand_layer.append(torch.full((hi - lo,), i, dtype=torch.long))
        offset += s.numel()
    extra = budget - must
    pruned_count = [b[0] for b in bounds]
    if extra:
        scores_all = torch.cat(cand_scores)
        keys = torch.cat(cand_keys)
        by_key = torch.argsort(keys)  # unique keys: ties in score fall back to flat index
        pick = by_key[torch.sort(scores_all[by_key], stable=True).indices[:extra]]
        layer_of = torch.cat(cand_layer)[pick]
        for i in range(len(unit_scores)):
            pruned_count[i] += int((layer_of == i).sum())
    keeps = []
    for s, order, count in zip(unit_scores, orders, pruned_count):
        keep = torch.ones(s.numel(), dtype=torch.bool)
        keep[order[:count]] = False
        keeps.append(keep.to(s.device))
    return keeps
