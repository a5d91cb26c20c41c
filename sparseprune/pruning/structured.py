"""Choosing which units of each dependency group to remove, and masking them.

A group's score for a unit is the sum, over every Linear/Conv2d in the group, of the squared
per-entry criterion scores of the unit's slice (rows of producers, columns of consumers):
with "magnitude" that is the unit's squared L2 norm across the whole group (biases and
BatchNorm affine parameters included); with "wanda" each consumer column is weighted by its
input's activation norm; with "taylor" by the calibrated gradients.

Masks: the rows of producers and the columns of consumers of a removed unit are masked. The
consumers no longer read the unit, so the masked model computes exactly what the shrunk
model will (a BatchNorm shift or a bias on a removed channel goes nowhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .. import masks
from ..structured.groups import Group, Member, unit_slices
from .allocate import global_keep

__all__ = ["group_scores", "keep_count", "layer_keep", "global_group_keep", "group_masks"]


def group_scores(group: Group, modules: Mapping[str, nn.Module],
                 entry_scores: Callable[[str], torch.Tensor], with_extras: bool) -> torch.Tensor:
    """``[size]`` importance of each unit of ``group``; ``entry_scores(name)`` gives the
    per-entry criterion scores of a Linear/Conv2d (its weight's shape)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in group.members:
        mod = modules[m.module]
        if m.role in ("out", "in"):
            s = entry_scores(m.module).detach().to(torch.float64).reshape(mod.weight.shape)
            total += unit_slices(mod, m, group.size, s).square().sum(1).cpu()
        if not with_extras:
            continue
        extras: list[tuple[Member, torch.Tensor]] = []
        if m.role == "out" and getattr(mod, "bias", None) is not None:
            extras.append((m, mod.bias))
        if m.role == "through":
            extras += [(m, t) for t in (getattr(mod, "weight", None), getattr(mod, "bias", None))
                       if t is not None]
        for member, t in extras:
            part = unit_slices(mod, member, group.size, t.detach().to(torch.float64).reshape(
                t.shape[0], -1))
            total += part.square().sum(1).cpu()
    return total


def keep_count(size: int, sparsity: float, round_to: int, name: str) -> int:
    """Units kept: ``size - round(sparsity * size)`` rounded up to a multiple of
    ``round_to`` (at most ``size``)."""
    keep = size - round(sparsity * size)
    if keep <= 0:
        raise ValueError(f"sparsity {sparsity} would remove all {size} units of group {name!r}; "
                         f"lower it (a group must keep at least one)")
    return min(size, math.ceil(keep / round_to) * round_to)


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    return masks.prune_lowest(scores, scores.numel() - count)


def layer_keep(scores: torch.Tensor, sparsity: float, round_to: int, name: str) -> torch.Tensor:
    return _top(scores, keep_count(scores.numel(), sparsity, round_to, name))


def global_group_keep(scores: Sequence[torch.Tensor], sparsity: float,
                      min_density: Sequence[float], max_density: Sequence[float],
                      round_to: Sequence[int]) -> list[torch.Tensor]:
    """One ranking across groups (within density bounds), then every group keeps at least
    one unit and a multiple of its ``round_to``: the best-scoring removed units come back."""
    keeps = global_keep(scores, sparsity, min_density, max_density)
    out = []
    for s, keep, r in zip(scores, keeps, round_to):
        kept = int(keep.sum())
        want = min(s.numel(), max(1, math.ceil(kept / r) * r))
        out.append(keep if want == kept else _top(s, want) | keep)
    return out


def group_masks(groups: Sequence[Group], keeps: Mapping[str, torch.Tensor],
                modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Keep-mask (the weight's shape) of every Linear/Conv2d member of the groups."""
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        keep = keeps.get(g.name)
        if keep is None:
            continue
        for m in g.members:
            if m.role not in ("out", "in"):
                continue
            w = modules[m.module].weight
            mask = out.setdefault(m.module, torch.ones(w.shape, dtype=torch.bool))
            idx = m.indices(~keep.cpu())
            if m.role == "out":
                mask[idx] = False
            else:
                mask[:, idx] = False
    return out
