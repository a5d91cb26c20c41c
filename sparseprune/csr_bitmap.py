"""A per-weight bitmap view of CPU CSR weights, for products at batch 1.

At batch 1 a CSR product streams its weight once: bytes decide. A half-dense weight in
8-bit CSR moves 5 bytes per stored entry (value + column byte); the same entries as a
bitmap (one bit per weight) and the CSR's own values move 4 bytes per entry plus 1/8 byte
per weight, and the kernel reads the activations contiguously instead of gathering them
(csrc/cpu/spmm_csr_bitmap_avx2.cpp). On the AVX2 machine (Zen 3, 2 threads) 50% sparse
weights ran 1.1-1.4x faster this way than through the gather kernel from 768x3072 up (fp32;
bf16 1.3-1.7x); from about 70% sparsity on the gather kernel wins (benchmarks/RESULTS.md,
"AVX2: a bitmap view of CSR at batch 1").

The view is made on the first batch-1 product of a weight (a bitmap of
``out * ceil(in / 16) * 2`` bytes, 1/32 of the dense fp32 weight, plus ``out + 1`` row
starts) and reused while the weight's offsets and indices are unchanged; the values are
the CSR's own tensor, read in place (edits through ``.data``, which bump no version
counter, are not seen: repack or replace the tensors instead). It is used for inference only (no gradient needed),
on the CPU, for bfloat16 weights and float32 weights of at least :data:`MIN_FP32_WEIGHTS`
entries, holding at least :data:`MIN_DENSITY` of their entries, while the AVX2 kernels are
active (AVX-512 keeps its gather kernel until the view
is measured there). Like the N:M tile copies (:mod:`sparseprune.tile_cache`) it lives in
a weak map beside its owner, never in a ``state_dict`` or a checkpoint.
:func:`set_csr_bitmap` or ``SPARSEPRUNE_CSR_BITMAP=0`` (read at import) turns it off.
"""

from __future__ import annotations

import os
import weakref

import torch

from ._ext import cpu_capability

__all__ = ["set_csr_bitmap", "csr_bitmap_enabled", "csr_bitmap", "MIN_DENSITY"]

#: Stored entries per weight from which batch-1 products take the bitmap view. Same-process
#: A/B on 4096x4096 fp32 (Zen 3, 2 threads), view / gather kernel: 60% sparse 1.05x, 70%
#: 0.97-1.06x, 75% 0.86x, 80% 0.65x (the view's loop costs the same per 8 columns at any
#: density, the gather kernel's per stored entry).
MIN_DENSITY = 0.35
#: fp32 weights smaller than this keep the gather kernel: on 1536x384 and 384x1536 at 50%
#: the view ran 0.89-1.03x of it (the weight's stream is short next to the per-call costs),
#: against 1.1-1.4x from 768x3072 up. bfloat16 weights take the view at any size (1.26x on
#: 1536x384, 1.7x from 768x3072 up).
MIN_FP32_WEIGHTS = 1 << 20

_enabled = os.environ.get("SPARSEPRUNE_CSR_BITMAP", "") != "0"
_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_csr_bitmap(enabled: bool) -> None:
    """Turns the batch-1 bitmap views of CSR weights on or off (off drops every view)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _enabled = enabled
    if not enabled:
        _views.clear()


def csr_bitmap_enabled() -> bool:
    return _enabled


def view_of(owner) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``owner``'s current view (row_starts, bitmap), or None where it has none."""
    entry = _views.get(owner)
    return None if entry is None else entry[3]


def view_nbytes(owner) -> int | None:
    """Bytes a batch-1 product through ``owner``'s bitmap view streams (its values, bitmap
    and row starts), or None where ``owner`` has no view."""
    view = view_of(owner)
    if view is None:
        return None
    row_starts, bitmap = view
    values = owner.values  # a CSRWeight's or a CSR SparseLinear's
    return (values.numel() * values.element_size() + bitmap.numel() +
            row_starts.numel() * row_starts.element_size())


def row_bytes(in_features: int) -> int:
    """Bitmap bytes per row: whole 16-column words."""
    return (in_features + 15) // 16 * 2


def csr_bitmap(row_offsets: torch.Tensor, col_indices: torch.Tensor,
               shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_starts int64 ``[out + 1]``, bitmap uint8 ``[out, row_bytes(in)]``) of a CSR
    weight (16-, 32- or 8-bit indices), the inputs of ``linear_csr_bitmap``."""
    from .formats import csr_coords, csr_segments  # formats imports this module

    out_f, in_f = shape
    nbytes = row_bytes(in_f)
    rows, cols = csr_coords(row_offsets, col_indices, shape)
    bit = rows * (nbytes * 8) + cols
    # A CSR stores each (row, column) once, so adding the bits sets them.
    words = torch.zeros(out_f * nbytes, dtype=torch.int32, device=row_offsets.device)
    words.index_add_(0, bit // 8, torch.ones_like(bit, dtype=torch.int32) << (bit % 8).int())
    segs = csr_segments(in_f) if col_indices.dtype == torch.uint8 else 1
    row_starts = row_offsets[::max(segs, 1)].contiguous()
    return row_starts, words.to(torch.uint8).view(out_f, nbytes)


def _eligible(row_offsets, values) -> bool:
    """The rest of whether a weight takes the view (checked once per weight and key)."""
    if type(values) not in (torch.Tensor, torch.nn.Parameter):
        return False  # fake / meta / subclass tensors take the plain op
    if values.device.type != "cpu" or row_offsets.device.type != "cpu":
        return False
    if values.dtype not in (torch.float32, torch.bfloat16):
        return False
    return True


def csr_bitmap_linear(owner, x, row_offsets, col_indices, values, bias, out_features):
    """``x W^T + bias`` through ``owner``'s bitmap view of the CSR weight, made or remade as
    needed; None where the view does not apply (the caller runs ``linear_csr``). Called on
    every CSR product, so the cheap refusals come first (this path costs ~1 us)."""
    if not _enabled or type(x) is not torch.Tensor or x.dim() == 0 or torch.jit.is_tracing():
        return None  # subclass / fake inputs; a traced graph must not hold a view
    in_f = x.shape[-1]
    if x.numel() != in_f:
        return None  # batch rows other than one
    weights, nnz = out_features * in_f, values.numel()
    if nnz == 0 or nnz < MIN_DENSITY * weights or \
            (weights < MIN_FP32_WEIGHTS and values.dtype == torch.float32):
        return None  # too sparse or too small: no view to look up
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return None
    if torch.compiler.is_compiling() or cpu_capability() != "avx2":
        return None
    try:
        key = (row_offsets._version, col_indices._version, values.dtype, nnz, out_features,
               in_f)
    except RuntimeError:  # inference tensors carry no version counter
        return None
    entry = _views.get(owner)
    # The index tensors themselves (held by the entry, so no new tensor can reuse their
    # memory) and their version counters; edits through .data bump no counter and are not
    # seen, as for torch's own caches.
    if entry is None or entry[0] is not row_offsets or entry[1] is not col_indices or \
            entry[2] != key:
        view = None
        if x.device.type == "cpu" and _eligible(row_offsets, values):
            with torch.no_grad():
                view = csr_bitmap(row_offsets, col_indices, (out_features, in_f))
        entry = (row_offsets, col_indices, key, view)  # view None: the gather kernel
        _views[owner] = entry
    if entry[3] is None:
        return None
    row_starts, bitmap = entry[3]
    return torch.ops.sparseprune.linear_csr_bitmap(x, row_starts, bitmap, values, bias,
                                                   out_features)
