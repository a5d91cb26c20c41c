"""SparseGPT (Frantar & Alistarh, 2023): prune and reconstruct one layer from its inputs.

With ``H = X^T X`` over the calibration inputs of a layer, SparseGPT walks the input
columns left to right: for each column it chooses which weights to drop (saliency
``w^2 / [H^-1]_jj^2``, the OBS loss of removing ``w``), zeroes them, and spreads the
error ``(w - q) / [H^-1]_jj`` onto the not yet processed columns through the Cholesky
factor of ``H^-1``, so the layer's output ``X W^T`` changes as little as possible.

The mask is chosen adaptively, per block of ``blocksize`` columns, for unstructured and
N:M patterns (as in the paper); other patterns pick their mask once from the saliency of
the whole weight and then reconstruct with that mask fixed. Statistics come from one
calibration pass of the unpruned model (every layer sees dense inputs), not the paper's
layer-by-layer pass: simpler, slightly less accurate on deep stacks.
"""

from __future__ import annotations

import torch

from .. import masks
from .patterns import NM, Pattern, Unstructured

__all__ = ["sparsegpt_prune", "inverse_hessian_factor"]


def inverse_hessian_factor(gram: torch.Tensor, *, damp: float = 0.01) -> torch.Tensor:
    """The float64 upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (more
    damping if needed) that :func:`sparsegpt_prune` walks, ``H`` being ``gram`` with a unit
    diagonal on the inputs that were always zero. It depends on the Gram matrix only, so a
    caller that re-solves one layer many times (gradual pruning) computes it once and passes
    it as ``factor``."""
    h = gram.to(torch.float64, copy=True)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(6):
        chol, info = torch.linalg.cholesky_ex(h + (damp * 10 ** attempt) * mean_diag * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True)
    raise ValueError("SparseGPT: the input Gram matrix is not positive definite even with "
                     "heavy damping; calibrate with more (or more varied) batches")


def _block_counts(total_cols: int, rows: int, sparsity: float, blocksize: int) -> list[int]:
    """Entries to prune per column block so that the layer loses exactly
    ``round(sparsity * rows * cols)`` (cumulative rounding, no drift)."""
    counts, done = [], 0
    for start in range(0, total_cols, blocksize):
        end = min(total_cols, start + blocksize)
        target = round(sparsity * rows * end)
        counts.append(target - done)
        done = target
    return counts


def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, pattern: Pattern, sparsity: float,
                    *, blocksize: int = 128, damp: float = 0.01,
                    factor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prunes ``weight`` ``[out, in]`` (2-D view) to ``sparsity`` in ``pattern`` using the
    Gram matrix ``gram = X^T X`` ``[in, in]`` of its inputs. Returns ``(new_weight, keep)``
    with the weight's dtype and device; pruned entries of ``new_weight`` are exactly 0.
    ``factor``: :func:`inverse_hessian_factor` of this ``gram`` and ``damp``, if the caller
    keeps it (computed here otherwise)."""
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gram must be [in, in] = {weight.shape[1]}x{weight.shape[1]}, "
                         f"got {tuple(gram.shape)}")
    masks.check_sparsity(sparsity)
    rows, cols = weight.shape
    w = weight.detach().to(torch.float64).clone()
    h = gram.to(device=w.device, dtype=torch.float64)
    dead = torch.diagonal(h) == 0  # inputs that were always zero: their weights are free
    w[:, dead] = 0.0
    if factor is None:
        hinv = inverse_hessian_factor(h, damp=damp)
    else:
        if factor.shape != h.shape or factor.dtype != torch.float64 or \
                factor.device != w.device:
            raise ValueError(f"factor must be the float64 [in, in] = {cols}x{cols} "
                             f"inverse_hessian_factor on the weight's device ({w.device}), got "
                             f"{factor.dtype} {tuple(factor.shape)} on {factor.device}")
        hinv = factor
    diag = torch.diagonal(hinv)

    adaptive = isinstance(pattern, (Unstructured, NM))
    if isinstance(pattern, NM):
        keep_n = max(pattern.n, pattern.m - round(sparsity * pattern.m))
        blocksize = -(-blocksize // pattern.m) * pattern.m  # N:M groups never straddle blocks
    fixed_keep = None
    if not adaptive:
        fixed_keep = pattern.mask(w ** 2 / diag ** 2, sparsity)
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=w.device)
    counts = _block_counts(cols, rows, sparsity, blocksize) if isinstance(
        pattern, Unstructured) else None

    for b, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(cols, i1 + blocksize)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        d1 = torch.diagonal(h1)
        if isinstance(pattern, Unstructured):
            saliency = (w1 ** 2 / d1 ** 2).reshape(-1)
            block_keep = masks.prune_lowest(saliency, counts[b]).view(rows, i2 - i1)
            pruned[:, i1:i2] = ~block_keep
        elif fixed_keep is not None:
            pruned[:, i1:i2] = ~fixed_keep[:, i1:i2]
        for i in range(i2 - i1):
            if isinstance(pattern, NM) and i % pattern.m == 0 and keep_n < pattern.m:
                group = slice(i, min(i + pattern.m, i2 - i1))
                sal = w1[:, group] ** 2 / d1[group] ** 2
                # keep the keep_n most salient (lower index on ties), as masks.n_m does
                keep = masks.n_m(sal, keep_n, pattern.m) if sal.shape[1] > keep_n else \
                    torch.ones_like(sal, dtype=torch.bool)
                pruned[:, i1 + group.start:i1 + group.stop] = ~keep
            col = w1[:, i]
            q = torch.where(pruned[:, i1 + i], torch.zeros_like(col), col)
            e = (col - q) / d1[i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ hinv[i1:i2, i2:]
    w[pruned] = 0.0
    return w.to(weight.dtype), ~pruned
