"""A per-weight copy of fp32 N:M weights in the layout of the AVX-512 row-tile kernel.

That kernel (csrc/cpu/spmm_nm_avx512.cpp) reads a weight as 16-row tiles in slot-major
order; without a copy it transposes every tile on every call, which costs two thirds of its
time at batch 8. With the cache on, the first product of a weight makes the copy once
(``torch.ops.sparseprune.nm_tiles_pack``) and later products read it
(``linear_nm_tiles``): 1.1-2.0x faster at batch 1-32 and 1.1-1.4x at 64 on the
MiniLM/BERT/4096x4096 shapes, about even at 128 (benchmarks/RESULTS.md, "N:M tile copies"). The price is memory: the copy holds the values
again plus one byte per stored slot (about 1.25x the values' bytes, 2.2x the N:M weight in
all). It is off by default; :func:`set_nm_tile_cache` or ``SPARSEPRUNE_NM_TILE_CACHE=1`` (read
at import) turns it on.

The copy is used for inference only (no gradient flows through it), on the CPU, for
float32 weights with ``m`` dividing 16, while the AVX-512 kernels are active. It is kept
beside its owner (a :class:`~sparseprune.formats.NMWeight` or a
:class:`~sparseprune.nn.SparseLinear`) in a weak map, so it goes when the owner goes and
never enters a ``state_dict``, a checkpoint or a pickle; it is remade when the values or
the metadata are replaced or changed in place (tensor version counters). Weights created
inside ``torch.inference_mode()`` are inference tensors without a version counter: they
take the plain op. Products run inside ``inference_mode`` on ordinary weights do use it.
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


def copy_shape(out_features: int, in_features: int, n: int, m: int) -> tuple[int, int, int]:
    """Shape of the tile copy's tensors: [16-row tiles, slots per tile padded to whole
    16-slot steps, 16] (``nm_tile_slots`` in csrc/cpu/kernels.h)."""
    slots = ((in_features + 15) // 16 * (16 // m * n) + 15) // 16 * 16
    return (out_features + 15) // 16, slots, 16


def copy_nbytes(weight) -> int:
    """Bytes of the tile copy of an N:M ``weight`` (float32 values and one column byte per
    slot)."""
    tiles, slots, rows = copy_shape(*weight.shape, weight.n, weight.m)
    return tiles * slots * rows * (4 + 1)


def _applies(x, values, metadata, bias, m) -> bool:
    if not _enabled or m > 16 or 16 % m != 0:
        return False
    if type(x) is not torch.Tensor or type(values) not in (torch.Tensor, torch.nn.Parameter):
        return False  # fake / meta / subclass tensors take the plain op
    if x.device.type != "cpu" or values.device.type != "cpu" or metadata.device.type != "cpu":
        return False
    if x.dtype != torch.float32 or values.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad or
                                    (bias is not None and bias.requires_grad)):
        return False
    if torch.compiler.is_compiling():
        return False
    from ._ext import cpu_capability
    return cpu_capability() == "avx512"


def nm_tiles_linear(owner, x, values, metadata, bias, n, m, out_features):
    """``x W^T + bias`` through ``owner``'s tile copy of ``(values, metadata)``, made or
    remade as needed; None where the copy does not apply (the caller runs ``linear_nm``)."""
    if not _applies(x, values, metadata, bias, m):
        return None
    try:
        key = (values.data_ptr(), values._version, metadata.data_ptr(), metadata._version,
               tuple(values.shape), n, m, x.shape[-1])
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
