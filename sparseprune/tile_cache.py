"""A per-weight copy of fp32 N:M weights in the layout of the CPU row-tile kernels.

Those kernels (csrc/cpu/spmm_nm_avx512.cpp: 16 output rows per vector; spmm_nm_avx2.cpp: 8)
read a weight as tiles of rows in slot-major order; without a copy they transpose every tile
on every call, which costs two thirds of their time at batch 8. With the cache on, the first
product of a weight makes the copy once (``torch.ops.sparseprune.nm_tiles_pack``) and later
products read it (``linear_nm_tiles``). With AVX-512: 1.1-2.0x faster at batch 1-32 and
1.1-1.4x at 64 on the MiniLM/BERT/4096x4096 shapes, about even at 128 (benchmarks/RESULTS.md,
"N:M tile copies"). With AVX2 only, it is used up to the batch the kernel table names
(``sparseprune._C.nm_tile_copy()``; above it the plain op is as fast or faster: RESULTS.md,
"AVX2: cached N:M row tiles"). The price is memory: the copy holds the values again plus
one byte per stored slot (about 1.25x the values' bytes, 2.2x the N:M weight in all). It is
off by default; :func:`set_nm_tile_cache` or ``SPARSEPRUNE_NM_TILE_CACHE=1`` (read at
import) turns it on.

The copy is used for inference only (no gradient flows through it), on the CPU, for
float32 weights with ``m`` dividing the tile width (16 with AVX-512, 8 with AVX2), while
those kernels are active; its layout follows the ISA active when it was made, and it is
remade if another is active later. It is kept beside its owner (a
:class:`~sparseprune.formats.NMWeight` or a :class:`~sparseprune.nn.SparseLinear`) in a weak
map, so it goes when the owner goes and never enters a ``state_dict``, a checkpoint or a
pickle; it is remade when the values or the metadata are replaced or changed in place
(tensor version counters). Weights created inside ``torch.inference_mode()`` are inference
tensors without a version counter: they take the plain op. Products run inside
``inference_mode`` on ordinary weights do use it.
"""

from __future__ import annotations

import os
import weakref

import torch

__all__ = ["set_nm_tile_cache", "nm_tile_cache_enabled"]

_enabled = os.environ.get("SPARSEPRUNE_NM_TILE_CACHE", "") == "1"
_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_nm_tile_cache(enabled: bool) -> None:
    """Turns the per-weight N:M tile copies on or off (off drops every copy made)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _enabled = enabled
    if not enabled:
        _copies.clear()


def nm_tile_cache_enabled() -> bool:
    return _enabled


def _limits() -> tuple[int, int, int]:
    """(rows per tile, smallest and largest batch that use the copy) under the active
    kernels (benchmarks/bench_tile_cache.py --all-batches replaces it to time every batch)."""
    from ._ext import _C
    return _C.nm_tile_copy()


def tile_width() -> int:
    """Rows per tile of the active ISA's cached row-tile kernel (16 with AVX-512, 8 with
    AVX2), 0 where it has none."""
    return _limits()[0]


def _serving_width(m: int, batch: int) -> int:
    """The tile width whose copy serves an fp32 N:M product of ``batch`` rows with groups of
    ``m`` under the active kernels, 0 where the plain op runs it (no row-tile kernel, m not
    dividing the width, batch outside the kernel table's range)."""
    width, min_batch, max_batch = _limits()
    if width == 0 or m > width or width % m != 0:
        return 0
    return width if min_batch <= batch <= max_batch else 0


def copy_shape(out_features: int, in_features: int, n: int, m: int,
               width: int | None = None) -> tuple[int, int, int]:
    """Shape of the tile copy's tensors for tiles of ``width`` rows (default: the active
    ISA's): [tiles, slots per tile padded to a multiple of ``width``, ``width``]
    (``nm_tile_slots`` in csrc/cpu/kernels.h)."""
    w = tile_width() if width is None else width
    if w <= 0:
        raise RuntimeError("the active ISA has no N:M row-tile kernel (AVX2 or AVX-512 needed)")
    slots = ((in_features + w - 1) // w * (w // m * n) + w - 1) // w * w
    return (out_features + w - 1) // w, slots, w


def used_at(weight, batch: int) -> bool:
    """Whether a product of the N:M ``weight`` (on the CPU, no gradient) with ``batch`` rows
    of x runs through the tile copy under the active kernels (for benchmarks: which bytes
    a product streams)."""
    return (_enabled and weight.values.dtype == torch.float32 and
            weight.values.device.type == "cpu" and _serving_width(weight.m, batch) > 0)


def copy_nbytes(weight, width: int | None = None) -> int:
    """Bytes of the tile copy of an N:M ``weight`` (float32 values and one column byte per
    slot) for tiles of ``width`` rows (default: the active ISA's)."""
    tiles, slots, rows = copy_shape(*weight.shape, weight.n, weight.m, width)
    return tiles * slots * rows * (4 + 1)


def _width_if_applies(x, values, metadata, bias, m) -> int:
    """The tile width of the copy this product would use, 0 where it takes the plain op."""
    if not _enabled:
        return 0
    if type(x) is not torch.Tensor or type(values) not in (torch.Tensor, torch.nn.Parameter):
        return 0  # fake / meta / subclass tensors take the plain op
    if x.device.type != "cpu" or values.device.type != "cpu" or metadata.device.type != "cpu":
        return 0
    if x.dtype != torch.float32 or values.dtype != torch.float32:
        return 0
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return 0
    if torch.compiler.is_compiling():
        return 0
    if x.dim() == 0 or x.shape[-1] == 0:
        return 0
    return _serving_width(m, x.numel() // x.shape[-1])


def nm_tiles_linear(owner, x, values, metadata, bias, n, m, out_features):
    """``x W^T + bias`` through ``owner``'s tile copy of ``(values, metadata)``, made or
    remade as needed; None where the copy does not apply (the caller runs ``linear_nm``)."""
    width = _width_if_applies(x, values, metadata, bias, m)
    if not width:
        return None
    try:
        key = (values.data_ptr(), values._version, metadata.data_ptr(), metadata._version,
               tuple(values.shape), n, m, x.shape[-1], width)
    except RuntimeError:  # inference tensors carry no version counter
        return None
    entry = _copies.get(owner)
    if entry is None or entry[0] != key:
        with torch.no_grad():
            copy = torch.ops.sparseprune.nm_tiles_pack(values.detach(), metadata, n, m,
                                                        x.shape[-1])
        entry = (key, copy)
        _copies[owner] = entry
    tile_values, tile_cols = entry[1]
    return torch.ops.sparseprune.linear_nm_tiles(x, tile_values, tile_cols, bias, n, m,
                                                 out_features)
