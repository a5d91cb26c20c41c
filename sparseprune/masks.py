"""Masks from importance scores: pure functions, ``True`` = keep.

``scores`` is a tensor ``[out, in]`` of importances (larger = more important; pass
``weight.abs()`` for magnitude pruning). Tensors with more dimensions (conv weights
``[out, in, kh, kw]``) are viewed as ``[out, in*kh*kw]``; the mask has the scores' shape
and device. Exact counts: ``round(sparsity * units)`` units are pruned, with ``sparsity``
in ``[0, 1)``. Ties are broken deterministically: among equal scores the unit with the
lower flat index is pruned first (and, in :func:`n_m`, kept first).

Each structured pattern is also exposed as a pair ``*_unit_scores`` / ``*_expand`` so that
a global ranking (:mod:`sparseprune.pruning`) can rank units of several layers at once and
still produce masks identical to the per-layer functions.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "unstructured",
    "n_m",
    "block",
    "channel",
    "prune_lowest",
    "block_unit_scores",
    "block_expand",
    "channel_unit_scores",
    "channel_expand",
    "MAX_M",
]

#: largest group size :func:`n_m` accepts (the packed N:M format stores up to 5-bit indices).
MAX_M = 32


def as_2d(scores) -> torch.Tensor:
    """``scores`` viewed as ``[out, prod(rest)]``; validates type, rank and NaNs."""
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() < 2:
        raise ValueError(f"scores must be at least 2-D [out, in, ...], got shape "
                         f"{tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"scores must be a real floating or integer tensor, got {scores.dtype}")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError("scores contain NaN; every score must be a number (inf is allowed)")
    return scores.reshape(scores.shape[0], math.prod(scores.shape[1:]))


def check_sparsity(sparsity) -> float:
    """``sparsity`` as a float in ``[0, 1)``; TypeError / ValueError otherwise."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (1.0 would prune everything), "
                         f"got {sparsity}")
    return float(sparsity)


def prune_lowest(unit_scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask over a 1-D tensor with the ``count`` lowest scores pruned (stable ties)."""
    keep = torch.ones(unit_scores.shape, dtype=torch.bool, device=unit_scores.device)
    if not count:
        return keep
    s = unit_scores.to(torch.float64)
    if count >= s.numel() or torch.isnan(s).any():
        order = torch.sort(s, stable=True).indices  # NaNs rank last, as a stable sort has them
        keep[order[:count]] = False
        return keep
    # What a stable sort's first ``count`` are, by selection (7x faster than sorting the
    # 196K saliencies of a SparseGPT block): every score below the count-th smallest, then
    # the lowest-index ties with it.
    kth = torch.kthvalue(s, count).values
    below = s < kth
    keep[below] = False
    ties = torch.nonzero(s == kth).flatten()
    keep[ties[:count - int(below.sum())]] = False
    return keep


def unstructured(scores: torch.Tensor, sparsity: float, *, per_row: bool = False) -> torch.Tensor:
    """Prunes the ``round(sparsity * numel)`` lowest-scoring entries.

    With ``per_row=True`` each output row is ranked on its own and loses
    ``round(sparsity * in)`` entries (the comparison group of the Wanda paper).
    """
    s = as_2d(scores)
    sparsity = check_sparsity(sparsity)
    if not per_row:
        return prune_lowest(s.reshape(-1), round(sparsity * s.numel())).reshape(scores.shape)
    count = round(sparsity * s.shape[1])
    keep = torch.ones(s.shape, dtype=torch.bool, device=s.device)
    if count:
        order = torch.sort(s.to(torch.float64), dim=1, stable=True).indices
        keep.scatter_(1, order[:, :count], False)
    return keep.reshape(scores.shape)


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def n_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keeps the ``n`` highest-scoring entries of every ``m`` consecutive entries along
    dim 1 (``1 <= n < m <= 32``); a trailing partial group keeps at most ``n``. Among
    equal scores the lower index is kept."""
    n, m = _check_int("n", n), _check_int("m", m)
    if not 1 <= n < m <= MAX_M:
        raise ValueError(f"N:M needs 1 <= n < m <= {MAX_M}, got n={n}, m={m}")
    s = as_2d(scores).to(torch.float64)
    rows, cols = s.shape
    groups = -(-cols // m)
    # -inf padding: a partial group keeps its real entries before any padding slot.
    padded = s.new_full((rows, groups * m), float("-inf"))
    padded[:, :cols] = s
    order = padded.view(rows, groups, m).sort(dim=-1, descending=True, stable=True).indices
    keep = torch.zeros(rows, groups, m, dtype=torch.bool, device=s.device)
    keep.scatter_(-1, order[..., :n], True)
    return keep.view(rows, groups * m)[:, :cols].reshape(scores.shape)


def _check_block(block, shape2d) -> tuple[int, int]:
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"block must be (bh, bw) with positive ints, got {block!r}")
    bh, bw = block
    if bh > shape2d[0] or bw > shape2d[1]:
        raise ValueError(f"block {bh}x{bw} is larger than the weight {shape2d[0]}x{shape2d[1]} "
                         f"(as 2-D); use a block that fits")
    return bh, bw


def block_unit_scores(scores: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Sum of ``|score|`` per block, ``[ceil(out/bh), ceil(in/bw)]``; ragged edges summed
    over the entries they have."""
    s = as_2d(scores)
    bh, bw = _check_block(block, s.shape)
    rows, cols = s.shape
    rb, cb = -(-rows // bh), -(-cols // bw)
    padded = s.new_zeros(rb * bh, cb * bw, dtype=torch.float64)
    padded[:rows, :cols] = s.abs()
    return padded.view(rb, bh, cb, bw).sum(dim=(1, 3))


def block_expand(keep_blocks: torch.Tensor, block: tuple[int, int], shape) -> torch.Tensor:
    """Element mask of ``shape`` from a block keep-mask ``[ceil(out/bh), ceil(in/bw)]``."""
    bh, bw = block
    rows, cols = shape[0], math.prod(shape[1:])
    keep = keep_blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]
    return keep.reshape(shape).contiguous()


def block(scores: torch.Tensor, sparsity: float, block: tuple[int, int]) -> torch.Tensor:
    """Prunes the ``round(sparsity * nblocks)`` blocks of ``block=(bh, bw)`` whose summed
    absolute score is lowest; edge blocks may be ragged. The block must fit the weight."""
    unit = block_unit_scores(scores, block)
    sparsity = check_sparsity(sparsity)
    keep_blocks = prune_lowest(unit.reshape(-1), round(sparsity * unit.numel()))
    return block_expand(keep_blocks.view(unit.shape), tuple(block), scores.shape)


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or dim not in (0, 1):
        raise ValueError(f"dim must be 0 (rows, output channels) or 1 (columns), got {dim!r}")
    return dim


def channel_unit_scores(scores: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """L2 norm of each row (``dim=0``) or column (``dim=1``) of the 2-D view."""
    dim = _check_dim(dim)
    return torch.linalg.vector_norm(as_2d(scores).to(torch.float64), dim=1 - dim)


def channel_expand(keep_units: torch.Tensor, shape, dim: int = 0) -> torch.Tensor:
    rows, cols = shape[0], math.prod(shape[1:])
    keep = keep_units[:, None] if dim == 0 else keep_units[None, :]
    return keep.expand(rows, cols).reshape(shape).clone()


def channel(scores: torch.Tensor, sparsity: float, dim: int = 0) -> torch.Tensor:
    """Prunes whole rows (``dim=0``, output channels) or columns (``dim=1``) with the
    lowest L2 norm of their scores."""
    norms = channel_unit_scores(scores, dim)
    keep = prune_lowest(norms, round(check_sparsity(sparsity) * norms.numel()))
    return channel_expand(keep, scores.shape, dim)
