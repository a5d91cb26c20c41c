"""Sparsity patterns as objects: parse ``PruneConfig.pattern`` once, then make masks.

A pattern turns ``(scores, sparsity)`` into a keep-mask through :mod:`sparseprune.masks`.
Patterns that can be ranked across layers (``scope="global"``) also split scores into
units (entries, blocks, channels) and expand a unit keep-mask back to entries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

from .. import masks

__all__ = ["Pattern", "Unstructured", "NM", "Block", "Channel", "Head", "Custom",
           "parse_pattern", "PATTERN_HELP"]

PATTERN_HELP = ('"unstructured", "N:M" with 1 <= N < M <= 32 (e.g. "2:4", "1:4", "2:8"), '
                '"block:BHxBW" (e.g. "block:16x16"), "channel" (output rows) or "channel:in" '
                '(input columns), "head" (attention heads; structured=True only), or a callable '
                '(scores, sparsity) -> bool mask')


class Pattern:
    """Base: ``mask(scores, sparsity)``; global ranking through ``unit_scores``/``expand``."""

    name: str = ""
    rankable = True  # can be ranked across layers (scope="global")

    def mask(self, scores: torch.Tensor, sparsity: float, *, per_row: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def unit_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """1-D unit scores, lowest pruned first."""
        raise NotImplementedError

    def expand(self, keep_units: torch.Tensor, shape) -> torch.Tensor:
        raise NotImplementedError

    def implied_sparsity(self) -> float | None:
        """The sparsity the pattern itself fixes (N:M), else None."""
        return None

    def __repr__(self) -> str:
        return self.name


class Unstructured(Pattern):
    name = "unstructured"

    def mask(self, scores, sparsity, *, per_row=False):
        return masks.unstructured(scores, sparsity, per_row=per_row)

    def unit_scores(self, scores):
        return masks.as_2d(scores).reshape(-1)

    def expand(self, keep_units, shape):
        return keep_units.reshape(shape)


class NM(Pattern):
    """Keeps ``n`` of every ``m``. Below the final sparsity (gradual schedules) it keeps
    ``m - round(sparsity * m)`` of every ``m``, e.g. 2:4 passes through 3:4."""

    rankable = False

    def __init__(self, n: int, m: int):
        if not 1 <= n < m <= masks.MAX_M:
            raise ValueError(f"N:M needs 1 <= N < M <= {masks.MAX_M}, got {n}:{m}")
        self.n, self.m = n, m
        self.name = f"{n}:{m}"

    def implied_sparsity(self):
        return 1.0 - self.n / self.m

    def mask(self, scores, sparsity, *, per_row=False):
        masks.check_sparsity(sparsity)
        keep = max(self.n, self.m - round(sparsity * self.m))
        if keep >= self.m:
            return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        return masks.n_m(scores, keep, self.m)


class Block(Pattern):
    def __init__(self, bh: int, bw: int):
        if bh < 1 or bw < 1:
            raise ValueError(f"block sizes must be positive, got {bh}x{bw}")
        self.block = (bh, bw)
        self.name = f"block:{bh}x{bw}"

    def mask(self, scores, sparsity, *, per_row=False):
        return masks.block(scores, sparsity, block=self.block)

    def unit_scores(self, scores):
        return masks.block_unit_scores(scores, self.block).reshape(-1)

    def expand(self, keep_units, shape):
        rows, cols = shape[0], math.prod(shape[1:])
        grid = (-(-rows // self.block[0]), -(-cols // self.block[1]))
        return masks.block_expand(keep_units.reshape(grid), self.block, shape)


class Channel(Pattern):
    def __init__(self, dim: int = 0):
        self.dim = dim
        self.name = "channel" if dim == 0 else "channel:in"

    def mask(self, scores, sparsity, *, per_row=False):
        return masks.channel(scores, sparsity, dim=self.dim)

    def unit_scores(self, scores):
        return masks.channel_unit_scores(scores, self.dim)

    def expand(self, keep_units, shape):
        return masks.channel_expand(keep_units, shape, self.dim)


class Head(Pattern):
    """Whole attention heads: only meaningful on dependency groups (``structured=True``),
    where the Pruner removes heads with their query/key/value rows and output columns."""

    name = "head"

    def mask(self, scores, sparsity, *, per_row=False):
        raise ValueError('pattern "head" removes attention heads across several layers; use '
                         'PruneConfig(pattern="head", structured=True)')


class Custom(Pattern):
    """A user callable ``(scores, sparsity) -> bool mask``; its output is validated."""

    rankable = False

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def mask(self, scores, sparsity, *, per_row=False):
        keep = self.fn(scores, sparsity)
        if (not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool
                or keep.shape != scores.shape):
            raise ValueError(f"pattern callable {self.name} must return a bool tensor of shape "
                             f"{tuple(scores.shape)}, got "
                             f"{getattr(keep, 'dtype', type(keep).__name__)} "
                             f"{tuple(getattr(keep, 'shape', ()))}")
        return keep.to(scores.device)


_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block:(\d+)x(\d+)$")


def parse_pattern(pattern) -> Pattern:
    """``PruneConfig.pattern`` -> :class:`Pattern`; ValueError listing what is valid."""
    if isinstance(pattern, Pattern):
        return pattern
    if callable(pattern):
        return Custom(pattern)
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string or a callable, got {type(pattern).__name__}; "
                        f"valid: {PATTERN_HELP}")
    p = pattern.strip().lower()
    if p == "unstructured":
        return Unstructured()
    if p in ("channel", "channel:out"):
        return Channel(0)
    if p == "channel:in":
        return Channel(1)
    if p == "head":
        return Head()
    if mt := _NM.match(p):
        n, m = int(mt.group(1)), int(mt.group(2))
        if not 1 <= n < m <= masks.MAX_M:
            raise ValueError(f"pattern {pattern!r}: N:M needs 1 <= N < M <= {masks.MAX_M}")
        return NM(n, m)
    if mt := _BLOCK.match(p):
        bh, bw = int(mt.group(1)), int(mt.group(2))
        if bh < 1 or bw < 1:
            raise ValueError(f"pattern {pattern!r}: block sizes must be positive")
        return Block(bh, bw)
    raise ValueError(f"unknown pattern {pattern!r}; valid: {PATTERN_HELP}")
