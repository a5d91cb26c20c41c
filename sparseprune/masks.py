"""Masks from importance scores: pure functions, ``True`` = keep.

``scores`` is a tensor ``[out, in]`` of importances (larger = more important; pass
``weight.abs()`` for magnitude pruning). Tensors with more dimensions (conv weights
``[out, in, kh, kw]``) are viewed as ``[out, in*kh*kw]``; the mask has the scores' shape
and device. Exact counts: ``round(sparsity * units)`` units are pruned. Ties are broken
deterministically: among equal scores the unit with the lower flat index is pruned first.
"""

from __future__ import annotations

import math

import torch

__all__ = ["unstructured", "n_m", "block", "channel"]


def _as_2d(scores) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() < 2:
        raise ValueError(f"scores must be at least 2-D [out, in, ...], got shape "
                         f"{tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"scores must be real, got {scores.dtype}")
    return scores.reshape(scores.shape[0], math.prod(scores.shape[1:]))


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1], got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return float(sparsity)


def _prune_lowest(unit_scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask over a 1-D tensor of unit scores with round(sparsity * n) lowest pruned."""
    count = round(sparsity * unit_scores.numel())
    keep = torch.ones_like(unit_scores, dtype=torch.bool)
    if count:
        order = torch.sort(unit_scores.to(torch.float64), stable=True).indices
        keep[order[:count]] = False
    return keep


def unstructured(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prunes the ``round(sparsity * numel)`` lowest-scoring entries."""
    flat = _as_2d(scores).reshape(-1)
    return _prune_lowest(flat, _check_sparsity(sparsity)).reshape(scores.shape)


def n_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keeps the ``n`` highest-scoring entries of every ``m`` consecutive entries along
    dim 1; a trailing partial group keeps at most ``n``. Ties keep the lower index."""
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 1 <= n < m <= 32:
        raise ValueError(f"need 1 <= n < m <= 32, got n={n}, m={m}")
    s = _as_2d(scores).to(torch.float64)
    rows, cols = s.shape
    groups = -(-cols // m)
    padded = s.new_full((rows, groups * m), float("-inf"))
    padded[:, :cols] = s
    order = padded.view(rows, groups, m).sort(dim=-1, descending=True, stable=True).indices
    keep = torch.zeros(rows, groups, m, dtype=torch.bool, device=s.device)
    keep.scatter_(-1, order[..., :n], True)
    return keep.view(rows, groups * m)[:, :cols].reshape(scores.shape)


def block(scores: torch.Tensor, sparsity: float, block: tuple[int, int]) -> torch.Tensor:
    """Prunes the ``round(sparsity * nblocks)`` blocks of ``block=(bh, bw)`` whose summed
    absolute score is lowest; edge blocks may be ragged."""
    if (not isinstance(block, (tuple, list)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"block must be (bh, bw) with positive ints, got {block!r}")
    s = _as_2d(scores).to(torch.float64).abs()
    sparsity = _check_sparsity(sparsity)
    bh, bw = block
    rows, cols = s.shape
    rb, cb = -(-rows // bh), -(-cols // bw)
    padded = s.new_zeros(rb * bh, cb * bw)
    padded[:rows, :cols] = s
    block_scores = padded.view(rb, bh, cb, bw).sum(dim=(1, 3))
    keep_blocks = _prune_lowest(block_scores.reshape(-1), sparsity).view(rb, cb)
    keep = keep_blocks.repeat_interleave(bh, 0).repeat_interleave(bw, 1)[:rows, :cols]
    return keep.reshape(scores.shape)


def channel(scores: torch.Tensor, sparsity: float, dim: int = 0) -> torch.Tensor:
    """Prunes whole rows (``dim=0``, output channels) or columns (``dim=1``) with the
    lowest L2 norm of their scores."""
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (rows) or 1 (columns), got {dim!r}")
    s = _as_2d(scores).to(torch.float64)
    norms = torch.linalg.vector_norm(s, dim=1 - dim)
    keep = _prune_lowest(norms, _check_sparsity(sparsity))
    keep = keep[:, None] if dim == 0 else keep[None, :]
    return keep.expand(s.shape).reshape(scores.shape).clone()
