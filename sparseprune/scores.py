"""Importance criteria: one score per weight entry, larger = more important.

Pure functions of tensors; :mod:`sparseprune.pruning` collects what they need (input
activation norms, gradients) with hooks during calibration. Scores have the weight's shape.

* :func:`magnitude` - ``|w|``.
* :func:`taylor` - ``|w * dL/dw|``, the first-order Taylor estimate of the loss change when
  ``w`` is removed (Molchanov et al. 2019), summed over calibration batches.
* :func:`wanda` - ``|w_ij| * ||x_j||_2`` with ``x_j`` the j-th input feature over all
  calibration tokens (Sun et al. 2023, "Pruning by Weights and activations"). Meant to be
  compared within each output row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["magnitude", "taylor", "wanda", "CRITERIA"]

#: the built-in criteria by name (``PruneConfig(criterion=...)``). SparseGPT also rewrites
#: the kept weights, so it lives in :mod:`sparseprune.pruning.sparsegpt`, not here.
CRITERIA = ("magnitude", "taylor", "wanda", "sparsegpt")


def _check_weight(weight) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a floating tensor with at least 2 dims [out, in, ...], "
                         f"got {weight.dtype} of shape {tuple(weight.shape)}")
    return weight.detach()


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``."""
    return _check_weight(weight).abs()


def taylor(weight: torch.Tensor, grads: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_b |w * g_b|`` over per-batch gradients ``g_b`` (a single tensor counts as one
    batch). Summing absolute values, not the gradients, keeps batches whose gradients point
    opposite ways from cancelling."""
    w = _check_weight(weight)
    if isinstance(grads, torch.Tensor):
        grads = (grads,)
    total = None
    for g in grads:
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            raise ValueError(f"each gradient must be a tensor of the weight's shape "
                             f"{tuple(w.shape)}, got "
                             f"{tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__}")
        term = (w * g.detach()).abs()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("taylor needs at least one gradient (calibrate with a loss first)")
    return total


def wanda(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``|w_ij| * input_norm_j`` on the weight's 2-D view ``[out, in*kh*kw]``.

    ``input_norm`` is the L2 norm of each input feature over the calibration tokens:
    shape ``[in*kh*kw]``, or ``[out, in*kh*kw]`` where rows see different inputs (grouped
    convolutions).
    """
    w = _check_weight(weight)
    w2 = w.reshape(w.shape[0], math.prod(w.shape[1:]))
    if not isinstance(input_norm, torch.Tensor):
        raise TypeError(f"input_norm must be a torch.Tensor, got {type(input_norm).__name__}")
    if input_norm.shape not in (w2.shape[1:], w2.shape):
        raise ValueError(f"input_norm must have shape {tuple(w2.shape[1:])} or {tuple(w2.shape)} "
                         f"for a weight viewed as {tuple(w2.shape)}, got {tuple(input_norm.shape)}")
    if (input_norm < 0).any():
        raise ValueError("input_norm must be non-negative (it is an L2 norm)")
    return (w2.abs() * input_norm.to(w2.dtype)).reshape(w.shape)
