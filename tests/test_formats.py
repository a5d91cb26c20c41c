"""Packed formats: round trips on awkward shapes, and validation of raw constructors."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparseprune as sp
from sparseprune.formats import FormatError, csr_index_dtype, nm_decode, nm_encode

from .conftest import SHAPES, sparse_weight

DTYPES = [torch.float32, torch.bfloat16]


def nm_weight(out_f, in_f, n, m, dtype=torch.float32):
    w = torch.randn(out_f, in_f)
    w = w * sp.masks.n_m(w.abs(), n, m)
    w[1::3] = 0
    return w.to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_csr_round_trip(shape, dtype, density):
    w = sparse_weight(*shape, density, dtype=dtype)
    packed = sp.CSRWeight.from_dense(w)
    assert packed.nnz == int((w != 0).sum())
    assert packed.col_indices.dtype == torch.uint16
    assert torch.equal(packed.to_dense(), w)


def test_csr_wide_matrix_uses_int32_indices():
    w = torch.zeros(2, 70000)
    w[0, 69999] = 1.5
    w[1, 3] = -2.0
    packed = sp.CSRWeight.from_dense(w)
    assert packed.col_indices.dtype == torch.int32 == csr_index_dtype(70000)
    assert torch.equal(packed.to_dense(), w)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [(1, 1), (4, 1), (1, 4), (3, 5), (16, 16), (128, 128)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bsr_round_trip(shape, block, dtype):
    w = sparse_weight(*shape, 0.2, dtype=dtype)
    packed = sp.BSRWeight.from_dense(w, block)
    assert packed.block == block
    assert torch.equal(packed.to_dense(), w)
    # every stored block holds a nonzero; every nonzero lies in a stored block
    assert packed.nnzb == int((packed.blocks != 0).flatten(1).any(1).sum())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 8), (3, 7), (1, 2), (5, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_round_trip(shape, n, m, dtype):
    w = nm_weight(*shape, n, m, dtype)
    packed = sp.NMWeight.from_dense(w, n, m)
    groups = -(-shape[1] // m)
    assert packed.values.shape == (shape[0], groups * n)
    assert torch.equal(packed.to_dense(), w)


def test_nm_metadata_is_two_bits_per_slot_for_2_4():
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0]])
    packed = sp.NMWeight.from_dense(w, 2, 4)
    assert packed.metadata.shape == (1, 1)  # 4 slots x 2 bits
    # slots hold in-group indices 1, 3 | 0, 3, LSB first
    assert packed.metadata.item() == 1 | 3 << 2 | 0 << 4 | 3 << 6
    assert packed.values.tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_nm_rejects_weight_that_is_not_n_m():
    w = torch.ones(2, 8)
    with pytest.raises(ValueError, match="not 2:4 sparse: row 0, group 0"):
        sp.NMWeight.from_dense(w, 2, 4)


def test_mask_keeps_explicit_zeros():
    w = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])
    packed = sp.CSRWeight.from_dense(w, mask=mask)
    assert packed.nnz == 2 and packed.values.tolist() == [0.0, 1.0]
    assert torch.equal(packed.to_dense(), w * mask)


@pytest.mark.parametrize("fmt,kw", [("csr", {}), ("csr", {"index_bits": 8}),
                                    ("bsr", {"block": (2, 2)}), ("nm", {"n": 2, "m": 4})])
def test_masked_out_entries_never_reach_the_packed_values(fmt, kw):
    # What a mask drops is not read: a NaN or Inf there is not an error.
    mask = sp.masks.n_m(torch.rand(6, 10), 2, 4)
    w = torch.randn(6, 10)
    w[~mask] = float("nan")
    w[0, ~mask[0]] = float("inf")
    packed = sp.pack(w, fmt, mask=mask, **kw)
    assert torch.equal(packed.to_dense(), torch.where(mask, w, 0))


@settings(max_examples=60, deadline=None)
@given(out_f=st.integers(0, 12), in_f=st.integers(0, 40), m=st.integers(2, 32),
       data=st.data())
def test_nm_encode_decode_property(out_f, in_f, m, data):
    n = data.draw(st.integers(1, m - 1))
    slots = -(-in_f // m) * n
    idx = torch.randint(0, m, (out_f, slots))
    assert torch.equal(nm_decode(nm_encode(idx, in_f, n, m), in_f, n, m), idx)


@settings(max_examples=40, deadline=None)
@given(out_f=st.integers(0, 9), in_f=st.integers(0, 30), bh=st.integers(1, 6),
       bw=st.integers(1, 6), density=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_any_weight_round_trips_through_csr_and_bsr(out_f, in_f, bh, bw, density, seed):
    gen = torch.Generator().manual_seed(seed)
    w = sparse_weight(out_f, in_f, density, gen=gen, zero_rows=False)
    assert torch.equal(sp.CSRWeight.from_dense(w).to_dense(), w)
    assert torch.equal(sp.BSRWeight.from_dense(w, (bh, bw)).to_dense(), w)


def test_nbytes_and_density():
    w = sparse_weight(64, 64, 0.1)
    packed = sp.CSRWeight.from_dense(w)
    assert packed.nbytes == 65 * 8 + packed.nnz * (2 + 4)
    assert packed.density == pytest.approx(packed.nnz / 4096)
    nm = sp.NMWeight.from_dense(nm_weight(64, 64, 2, 4), 2, 4)
    assert nm.nbytes == 64 * 32 * 4 + 64 * 8  # values + 2 bits x 32 slots per row


def test_to_dtype_and_repr():
    packed = sp.CSRWeight.from_dense(sparse_weight(8, 8, 0.5))
    half = packed.to(torch.bfloat16)
    assert half.values.dtype == torch.bfloat16 and half.col_indices.dtype == torch.uint16
    assert torch.equal(half.to_dense(), packed.to_dense().to(torch.bfloat16))
    assert "CSRWeight(shape=(8, 8)" in repr(packed)
    with pytest.raises(TypeError):
        packed.to(torch.int32)


# ----------------------------------------------------------------- malformed raw tensors


def _csr():
    return sp.CSRWeight.from_dense(sparse_weight(6, 10, 0.5, zero_rows=False))


def _bsr():
    return sp.BSRWeight.from_dense(sparse_weight(6, 10, 0.5, zero_rows=False), (2, 4))


def _nm():
    return sp.NMWeight.from_dense(nm_weight(6, 10, 2, 4), 2, 4)


def _with(packed, **changes):
    fields = {f.name: getattr(packed, f.name) for f in dataclasses.fields(packed)}
    fields.update(changes)
    return type(packed)(**fields)


MALFORMED = [
    # (make the bad weight, field named in the error)
    (lambda p: _with(p, row_offsets=p.row_offsets.int()), "row_offsets", _csr),
    (lambda p: _with(p, row_offsets=p.row_offsets[:-1]), "row_offsets", _csr),
    (lambda p: _with(p, row_offsets=p.row_offsets.flip(0)), "row_offsets", _csr),
    (lambda p: _with(p, row_offsets=p.row_offsets + 1), "row_offsets", _csr),
    (lambda p: _with(p, row_offsets=torch.tensor([0, 5, 2, 6, 7, 8, p.nnz])), "row_offsets",
     _csr),
    (lambda p: _with(p, col_indices=p.col_indices.int()), "col_indices", _csr),
    (lambda p: _with(p, col_indices=torch.full_like(p.col_indices, 10)), "col_indices", _csr),
    (lambda p: _with(p, col_indices=p.col_indices[:-1]), "col_indices", _csr),
    (lambda p: _with(p, col_indices=p.col_indices.int().flip(0).to(torch.uint16)), "col_indices",
     _csr),
    (lambda p: _with(p, col_indices=torch.zeros_like(p.col_indices)), "col_indices", _csr),
    (lambda p: _with(p, values=p.values.double()), "values", _csr),
    (lambda p: _with(p, values=torch.full_like(p.values, float("nan"))), "values", _csr),
    (lambda p: _with(p, values=p.values[None]), "values", _csr),
    (lambda p: _with(p, values=p.values.tolist()), "values", _csr),
    (lambda p: _with(p, shape=(6, -1)), "shape", _csr),
    (lambda p: _with(p, shape=(6,)), "shape", _csr),
    (lambda p: _with(p, shape=(6.0, 10)), "shape", _csr),
    # 1-wide blocks over 2 columns: block column 2 no longer exists
    (lambda p: _with(p, blocks=p.blocks[:, :, :1].contiguous(), shape=(6, 2)),
     "block_col_indices", _bsr),
    (lambda p: _with(p, blocks=p.blocks.flatten(1)), "blocks", _bsr),
    (lambda p: _with(p, block_col_indices=p.block_col_indices + 3), "block_col_indices", _bsr),
    (lambda p: _with(p, block_col_indices=-p.block_col_indices - 1), "block_col_indices", _bsr),
    (lambda p: _with(p, block_row_offsets=p.block_row_offsets[1:]), "block_row_offsets", _bsr),
    (lambda p: _with(p, blocks=p.blocks.transpose(1, 2)), "blocks", _bsr),
    (lambda p: _with(p, blocks=torch.full_like(p.blocks, float("inf"))), "blocks", _bsr),
    (lambda p: _with(p, m=4, n=4), "n", _nm),
    (lambda p: _with(p, m=64), "m", _nm),
    (lambda p: _with(p, n=1), "values", _nm),
    (lambda p: _with(p, metadata=p.metadata.to(torch.int8)), "metadata", _nm),
    (lambda p: _with(p, metadata=p.metadata[:, :-1]), "metadata", _nm),
    # in_features=10 at m=4: the last group has columns 8, 9 only, so index 3 is out of range
    (lambda p: _with(p, metadata=torch.full_like(p.metadata, 0xFF)), "metadata", _nm),
    (lambda p: _with(p, values=p.values.t().contiguous().t()), "values", _nm),
]


@pytest.mark.parametrize("corrupt,field,make", MALFORMED)
def test_malformed_raw_tensors_name_the_field(corrupt, field, make):
    with pytest.raises(FormatError, match=rf"\.{field}"):
        corrupt(make())


def test_csr_rows_may_start_anywhere_in_the_columns():
    # the last column of one row followed by column 0 of the next is sorted per row
    w = torch.zeros(3, 4)
    w[0, 3] = w[1, 0] = w[1, 2] = w[2, 1] = 1.0
    packed = sp.CSRWeight.from_dense(w)
    assert packed.col_indices.tolist() == [3, 0, 2, 1]
    assert torch.equal(packed.to_dense(), w)


@pytest.mark.parametrize("shape", [(3, 0), (0, 300), (1, 1), (5, 255), (5, 256), (7, 257),
                                   (4, 1000), (2, 70001)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_8bit_csr_round_trip(shape, dtype):
    w = sparse_weight(*shape, 0.3, dtype=dtype)
    packed = sp.CSRWeight.from_dense(w, index_bits=8)
    assert packed.col_indices.dtype == torch.uint8 and packed.index_bits == 8
    assert packed.row_offsets.shape == (shape[0] * -(-shape[1] // 256) + 1,)
    assert torch.equal(packed.to_dense(), w)
    wide = packed.with_index_bits(None)
    assert wide.index_bits in (16, 32) and torch.equal(wide.to_dense(), w)
    ref = sp.CSRWeight.from_dense(w)
    assert torch.equal(wide.row_offsets, ref.row_offsets)
    assert torch.equal(wide.col_indices, ref.col_indices)
    back = wide.with_index_bits(8)
    assert torch.equal(back.row_offsets, packed.row_offsets)
    assert torch.equal(back.col_indices, packed.col_indices)


def test_8bit_csr_keeps_explicit_zeros_and_packs_under_15_percent_at_90():
    torch.manual_seed(0)
    w = torch.randn(512, 4096)
    keep = torch.rand(512, 4096).argsort(1) < 410  # 410 of 4096 kept per row: 90%
    w[~keep] = 0
    w[0, 5] = 0.0
    keep[0, 5] = True
    packed = sp.CSRWeight.from_dense(w, mask=keep, index_bits=8)
    assert packed.nnz == int(keep.sum())
    dense_bytes = w.numel() * 4
    assert packed.nbytes / dense_bytes < 0.134
    assert sp.CSRWeight.from_dense(w, mask=keep).nbytes / dense_bytes > 0.150


def test_8bit_csr_rejects_bad_index_bits():
    with pytest.raises(ValueError, match="index_bits"):
        sp.CSRWeight.from_dense(torch.ones(2, 2), index_bits=4)
    with pytest.raises(ValueError, match="index_bits"):
        _csr().with_index_bits(16)


def _csr8():
    w = sparse_weight(4, 300, 0.5, zero_rows=False)
    w[:, 256:] = 1.0  # every row holds the 44 columns of the ragged last segment
    return sp.CSRWeight.from_dense(w, index_bits=8)


@pytest.mark.parametrize("corrupt", [
    lambda p: _with(p, row_offsets=p.row_offsets[::2].contiguous()),  # one run per row
    # past the 44 columns of the last segment (the first entry of row 0's last run)
    lambda p: _with(p, col_indices=p.col_indices.clone().index_fill_(
        0, p.row_offsets[1:2], 200)),
    lambda p: _with(p, col_indices=p.col_indices.flip(0).contiguous()),
])
def test_malformed_8bit_csr_names_the_field(corrupt):
    with pytest.raises(FormatError, match=r"\.(row_offsets|col_indices)"):
        corrupt(_csr8())


def test_format_error_is_value_error():
    assert issubclass(FormatError, ValueError)


def test_mixed_devices_rejected():
    p = _csr()
    with pytest.raises(FormatError, match="is on meta"):
        _with(p, values=p.values.to("meta"))


@pytest.mark.parametrize("call,err", [
    (lambda: sp.CSRWeight.from_dense(torch.ones(3)), ValueError),
    (lambda: sp.CSRWeight.from_dense(torch.ones(3, 3, dtype=torch.float64)), ValueError),
    (lambda: sp.CSRWeight.from_dense("w"), TypeError),
    (lambda: sp.CSRWeight.from_dense(torch.ones(3, 3), mask=torch.ones(3, 3)), TypeError),
    (lambda: sp.CSRWeight.from_dense(torch.ones(3, 3), mask=torch.ones(2, 3).bool()),
     ValueError),
    (lambda: sp.BSRWeight.from_dense(torch.ones(3, 3), (0, 1)), ValueError),
    (lambda: sp.NMWeight.from_dense(torch.ones(3, 4), 3, 2), ValueError),
    (lambda: sp.NMWeight.from_dense(torch.ones(3, 4), 2.0, 4), TypeError),
    (lambda: sp.pack(torch.ones(3, 4), "coo"), ValueError),
])
def test_from_dense_bad_arguments(call, err):
    with pytest.raises(err):
        call()


def test_pack_front_door():
    w = nm_weight(8, 16, 2, 4)
    assert isinstance(sp.pack(w, "csr"), sp.CSRWeight)
    assert sp.pack(w, "bsr", block=(4, 4)).block == (4, 4)
    assert sp.pack(w, "nm", n=2, m=4).n == 2
