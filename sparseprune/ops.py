"""Python side of ``torch.ops.sparseprune``: fake kernels and autograd formulas.

The schemas live in csrc/ops.cpp (the one ``TORCH_LIBRARY(sparseprune, m)``). Each op
computes ``y = x W^T + bias`` for ``x [..., in]`` with ``W`` packed (see
:mod:`sparseprune.formats`):

* ``linear_csr(x, row_offsets, col_indices, values, bias, out_features)``
* ``linear_bsr(x, block_row_offsets, block_col_indices, blocks, bias, out_features)``
* ``linear_nm(x, values, metadata, bias, n, m)``
* ``nm_tiles_pack(values, metadata, n, m, in_features)`` and
  ``linear_nm_tiles(x, tile_values, tile_cols, bias, n, m, out_features)``: an fp32 N:M
  weight's copy for the AVX-512 row-tile kernel, made once, and the product reading it
  (CPU, inference only: no autograd formula; :meth:`NMWeight.linear` uses them when
  :func:`sparseprune.formats.set_nm_tile_cache` is on)
* ``linear_csr_bitmap(x, row_starts, bitmap, values, bias, out_features)``: a CSR weight's
  bitmap view for batch 1 (CPU, inference only; :mod:`sparseprune.csr_bitmap` makes it
  and :meth:`CSRWeight.linear` uses it)

The fake (meta) kernels let ``torch.compile`` trace the ops. The autograd kernels are C++
(csrc/autograd.cpp), so a call that needs no gradient runs no Python; they give gradients
for ``x``, the packed values and the bias (not for the index tensors) through the
``linear_{csr,bsr,nm}_backward`` ops defined here, which rebuild the dense weight, so
backward costs about a dense layer's backward.

The raw ops check shapes, dtypes and the ends of the offset arrays, but trust the index
contents: build the tensors through the validating constructors of
:mod:`sparseprune.formats` (which :func:`linear` takes) rather than by hand.
"""

from __future__ import annotations

import torch

from . import _ext  # noqa: F401  (registers the schemas before the Python parts below)
from .formats import (PackedWeight, bsr_to_dense, csr_coords, csr_segments, csr_to_dense,
                      nm_columns, nm_decode)
from .tile_cache import copy_shape

__all__ = ["linear"]


def linear(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None = None):
    """``x W^T + bias`` with ``W`` a packed weight; like ``F.linear`` for ``x [..., in]``."""
    if not isinstance(weight, PackedWeight):
        raise TypeError(f"weight must be a packed weight (CSRWeight, BSRWeight, NMWeight), "
                        f"got {type(weight).__name__}")
    return weight.linear(x, bias)


# --------------------------------------------------------------------------- fake kernels


def _fake_output(op, x, values, bias, out_features):
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have at least 1 dimension")
    allowed = (torch.float32, torch.bfloat16) + ((torch.float16,) if x.is_cuda else ())
    torch._check_type(x.dtype in allowed,
                      lambda: f"{op}: x must be float32 or bfloat16 (float16 too on CUDA), "
                      f"got {x.dtype} on {x.device.type}")
    torch._check_type(values.dtype == x.dtype,
                      lambda: f"{op}: weight values are {values.dtype} but x is {x.dtype}")
    torch._check(values.device == x.device,
                 lambda: f"{op}: x is on {x.device} but the weight is on {values.device}")
    if bias is not None:
        torch._check(bias.device == x.device,
                     lambda: f"{op}: x is on {x.device} but the bias is on {bias.device}")
        torch._check_type(bias.dtype == x.dtype,
                          lambda: f"{op}: bias is {bias.dtype} but x is {x.dtype}")
        torch._check_value(bias.shape == (out_features,),
                           lambda: f"{op}: bias must have shape [{out_features}]")
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.register_fake("sparseprune::linear_csr")
def _linear_csr_fake(x, row_offsets, col_indices, values, bias, out_features):
    runs = out_features * (csr_segments(x.shape[-1]) if col_indices.dtype == torch.uint8 else 1)
    torch._check_value(row_offsets.shape == (runs + 1,),
                       lambda: "sparseprune::linear_csr: row_offsets must have out_features + 1 "
                       "entries (8-bit CSR: out_features * segments + 1)")
    torch._check_value(col_indices.shape == values.shape,
                       lambda: "sparseprune::linear_csr: col_indices and values differ in length")
    return _fake_output("sparseprune::linear_csr", x, values, bias, out_features)


@torch.library.register_fake("sparseprune::linear_bsr")
def _linear_bsr_fake(x, block_row_offsets, block_col_indices, blocks, bias, out_features):
    torch._check_value(blocks.dim() == 3,
                       lambda: "sparseprune::linear_bsr: blocks must be [nnzb, bh, bw]")
    torch._check_value(block_col_indices.shape == blocks.shape[:1],
                       lambda: "sparseprune::linear_bsr: one block column index per block")
    return _fake_output("sparseprune::linear_bsr", x, blocks, bias, out_features)


@torch.library.register_fake("sparseprune::linear_nm")
def _linear_nm_fake(x, values, metadata, bias, n, m):
    torch._check_value(values.dim() == 2, lambda: "sparseprune::linear_nm: values must be 2-D")
    torch._check_value(values.shape[1] == (x.shape[-1] + m - 1) // m * n,
                       lambda: "sparseprune::linear_nm: values do not match in_features")
    return _fake_output("sparseprune::linear_nm", x, values, bias, values.shape[0])


@torch.library.register_fake("sparseprune::nm_tiles_pack")
def _nm_tiles_pack_fake(values, metadata, n, m, in_features):
    torch._check_value(values.dim() == 2, lambda: "sparseprune::nm_tiles_pack: values must be 2-D")
    shape = copy_shape(values.shape[0], in_features, n, m)
    return values.new_empty(shape), metadata.new_empty(shape)


@torch.library.register_fake("sparseprune::linear_csr_bitmap")
def _linear_csr_bitmap_fake(x, row_starts, bitmap, values, bias, out_features):
    return _fake_output("sparseprune::linear_csr_bitmap", x, values, bias, out_features)


@torch.library.register_fake("sparseprune::linear_nm_tiles")
def _linear_nm_tiles_fake(x, tile_values, tile_cols, bias, n, m, out_features):
    torch._check_value(
        tile_values.shape == copy_shape(out_features, x.shape[-1], n, m),
        lambda: "sparseprune::linear_nm_tiles: tile_values do not match x and out_features")
    return _fake_output("sparseprune::linear_nm_tiles", x, tile_values, bias, out_features)


# --------------------------------------------------------------------------- autograd


# --------------------------------------------------------------------------- gradients
# The autograd kernels are C++ (csrc/autograd.cpp: a call that needs no gradient runs no
# Python); their backward calls these ops, CompositeImplicitAutograd so that they run on
# every device and can themselves be differentiated.


def _grads(grad_y, x, shape, output_mask, dense_weight, value_grad):
    """(grad_x, grad_values, grad_bias) given the dense W and a function that picks the
    stored entries' gradients out of dL/dW = grad_y^T x; empty where not asked for."""
    out_features, in_features = shape
    gy = grad_y.reshape(-1, out_features)
    # a fresh empty tensor per skipped output: the schema's outputs must not alias
    gx = (gy @ dense_weight()).reshape(x.shape) if output_mask[0] else gy.new_empty(0)
    gvalues = value_grad(gy.transpose(0, 1) @ x.reshape(-1, in_features)) \
        if output_mask[1] else gy.new_empty(0)
    gbias = gy.sum(0) if output_mask[2] else gy.new_empty(0)
    return gx, gvalues, gbias


def _csr_backward(grad_y, x, row_offsets, col_indices, values, out_features, output_mask):
    shape = (out_features, x.shape[-1])
    return _grads(grad_y, x, shape, output_mask,
                  lambda: csr_to_dense(row_offsets, col_indices, values, shape),
                  lambda grad_w: grad_w[csr_coords(row_offsets, col_indices, shape)])


def _bsr_backward(grad_y, x, block_row_offsets, block_col_indices, blocks, out_features,
                  output_mask):
    shape = (out_features, x.shape[-1])
    nnzb, bh, bw = blocks.shape

    def value_grad(grad_w):
        rows_b = block_row_offsets.numel() - 1
        cols_b = (shape[1] + bw - 1) // bw
        padded = grad_w.new_zeros(rows_b * bh, cols_b * bw)
        padded[: shape[0], : shape[1]] = grad_w
        tiles = padded.view(rows_b, bh, cols_b, bw).permute(0, 2, 1, 3)
        block_rows = torch.repeat_interleave(
            torch.arange(rows_b, device=blocks.device), block_row_offsets.diff(),
            output_size=nnzb)
        return tiles[block_rows, block_col_indices.to(torch.int64)]

    return _grads(grad_y, x, shape, output_mask,
                  lambda: bsr_to_dense(block_row_offsets, block_col_indices, blocks, shape),
                  value_grad)


def _nm_backward(grad_y, x, values, metadata, nm, output_mask):
    n, m = divmod(nm, 64)
    shape = (values.shape[0], x.shape[-1])
    cols = nm_columns(nm_decode(metadata, shape[1], n, m), n, m)
    return _grads(grad_y, x, shape, output_mask,
                  lambda: values.new_zeros(shape).scatter_add_(1, cols, values),
                  lambda grad_w: grad_w.gather(1, cols))


for _name, _fn in (("linear_csr_backward", _csr_backward), ("linear_bsr_backward", _bsr_backward),
                   ("linear_nm_backward", _nm_backward)):
    torch.library.impl(f"sparseprune::{_name}", "CompositeImplicitAutograd")(_fn)
