"""Edge cases of the drop-in layers, every format (issue 8, item 7): empty batch, 0% and 100%
sparsity, all-zero rows and columns, shapes not divisible by M or the block, strided input,
integer input, mixed devices."""

import pytest
import torch
from torch import nn

import sparseprune as sp
from sparseprune.nn import SparseConv2d, SparseLinear

from .conftest import assert_matches, reference

FORMATS = ["csr", "bsr", "nm"]
KW = {"csr": {}, "bsr": {"block": (4, 4)}, "nm": {"n": 2, "m": 4}}


def _linear(out_f, in_f, keep=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=gen))
        lin.bias.copy_(torch.randn(out_f, generator=gen))
        if keep is not None:
            lin.weight.mul_(keep)
    return lin


def _pattern(fmt, out_f, in_f, density, seed=0):
    scores = torch.rand(out_f, in_f, generator=torch.Generator().manual_seed(seed + 1))
    if fmt == "nm":
        return sp.masks.n_m(scores, 2, 4)
    if fmt == "bsr":
        return sp.masks.block(scores, 1 - density, block=(4, 4))
    return sp.masks.unstructured(scores, 1 - density)


def _check(sl, lin, x):
    y = sl(x)
    assert y.shape == (*x.shape[:-1], lin.out_features)
    assert_matches(y, reference(x, lin.weight, lin.bias), torch.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_empty_and_small_batches(fmt, batch):
    lin = _linear(12, 16, _pattern(fmt, 12, 16, 0.5))
    sl = SparseLinear.from_linear(lin, fmt, **KW[fmt])
    _check(sl, lin, torch.randn(batch, 16))
    _check(sl, lin, torch.randn(2, batch, 16))  # empty middle dimension too


@pytest.mark.parametrize("fmt", ["csr", "bsr"])
@pytest.mark.parametrize("density", [0.0, 1.0])
def test_zero_and_full_sparsity(fmt, density):
    keep = torch.full((12, 16), density > 0)
    lin = _linear(12, 16, keep)
    sl = SparseLinear.from_linear(lin, fmt, mask=keep, **KW[fmt])
    _check(sl, lin, torch.randn(7, 16))
    if density == 0.0:  # 100% sparse: the output is the bias
        torch.testing.assert_close(sl(torch.randn(3, 16)), lin.bias.detach().expand(3, 12))


def test_nm_on_an_all_zero_weight():
    keep = torch.zeros(8, 16, dtype=torch.bool)
    lin = _linear(8, 16, keep)
    sl = SparseLinear.from_linear(lin, "nm", n=2, m=4)
    _check(sl, lin, torch.randn(3, 16))


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_rows_and_columns(fmt):
    keep = _pattern(fmt, 16, 24, 0.5)
    keep[[0, 5, 15]] = False            # whole output rows zero
    keep[:, 8:12] = False               # whole input columns zero (a full 4-wide group/block)
    lin = _linear(16, 24, keep)
    sl = SparseLinear.from_linear(lin, fmt, **KW[fmt])
    _check(sl, lin, torch.randn(9, 24))
    x = torch.randn(9, 24)
    x2 = x.clone()
    x2[:, 8:12] = 1e6                   # inputs of zero columns must not matter
    torch.testing.assert_close(sl(x), sl(x2))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", [(7, 13), (5, 18), (9, 30), (1, 3)])
def test_shapes_not_divisible_by_m_or_block(fmt, shape):
    out_f, in_f = shape
    if fmt == "nm":
        # the last group is partial: it holds in_f % 4 columns and keeps at most 2
        scores = torch.rand(out_f, in_f)
        pad = torch.zeros(out_f, -(-in_f // 4) * 4)
        pad[:, :in_f] = scores
        keep = sp.masks.n_m(pad, 2, 4)[:, :in_f]
    elif fmt == "bsr":
        keep = torch.zeros(out_f, in_f, dtype=torch.bool)
        keep[: min(4, out_f), :] = True  # ragged edge blocks at the right and the bottom
        keep[-1, -1] = True
    else:
        keep = torch.rand(out_f, in_f) < 0.4
    lin = _linear(out_f, in_f, keep)
    sl = SparseLinear.from_linear(lin, fmt, **KW[fmt])
    for batch in (1, 3, 17, 40):
        _check(sl, lin, torch.randn(batch, in_f))


@pytest.mark.parametrize("fmt", FORMATS)
def test_strided_and_transposed_inputs(fmt):
    lin = _linear(12, 16, _pattern(fmt, 12, 16, 0.5))
    sl = SparseLinear.from_linear(lin, fmt, **KW[fmt])
    base = torch.randn(20, 40)
    for x in (base[:, ::2][:, :16],            # strided last dimension
              base[::3, :16],                  # strided rows
              torch.randn(16, 9).t(),          # transposed
              torch.randn(3, 16, 4).transpose(1, 2),
              torch.randn(1, 16).expand(5, 16)):  # stride 0 (broadcast)
        assert not x.is_contiguous() or x.stride(0) == 0
        _check(sl, lin, x)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool,
                                   torch.float64, torch.float16, torch.complex64])
def test_integer_and_other_dtypes_are_rejected(fmt, dtype):
    lin = _linear(12, 16, _pattern(fmt, 12, 16, 0.5))
    sl = SparseLinear.from_linear(lin, fmt, **KW[fmt])
    with pytest.raises(TypeError, match="input is"):
        sl(torch.ones(3, 16).to(dtype))


def test_integer_input_to_conv_is_rejected():
    conv = nn.Conv2d(4, 8, 3)
    sc = SparseConv2d.from_conv(conv, "csr")
    with pytest.raises(TypeError, match="input is"):
        sc(torch.ones(1, 4, 6, 6, dtype=torch.int64))


@pytest.mark.parametrize("fmt", FORMATS)
def test_mixed_devices_are_rejected(fmt):
    # No GPU here: the meta device stands in for "another device" (a CUDA input meets the
    # same check).
    lin = _linear(12, 16, _pattern(fmt, 12, 16, 0.5))
    sl = SparseLinear.from_linear(lin, fmt, **KW[fmt])
    with pytest.raises(RuntimeError, match="input is on meta but the layer is on cpu"):
        sl(torch.ones(3, 16, device="meta"))
    packed = sl.packed_weight()
    op = {"csr": lambda x: torch.ops.sparseprune.linear_csr(
              x, packed.row_offsets, packed.col_indices, packed.values, None, 12),
          "bsr": lambda x: torch.ops.sparseprune.linear_bsr(
              x, packed.block_row_offsets, packed.block_col_indices, packed.blocks, None, 12),
          "nm": lambda x: torch.ops.sparseprune.linear_nm(
              x, packed.values, packed.metadata, None, 2, 4)}[fmt]
    with pytest.raises(RuntimeError, match="x is on meta but the weight is on cpu"):
        op(torch.ones(3, 16, device="meta"))


def test_a_model_wholly_on_meta_still_traces_shapes():
    lin = _linear(12, 16, _pattern("csr", 12, 16, 0.5))
    sl = SparseLinear.from_linear(lin, "csr").to("meta")
    y = sl(torch.ones(3, 16, device="meta"))
    assert y.shape == (3, 12) and y.device.type == "meta"
