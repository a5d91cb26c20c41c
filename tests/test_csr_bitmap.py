"""The batch-1 bitmap view of CSR weights (sparseprune.csr_bitmap) and its op."""

import pytest
import torch

import sparseprune as sp
from sparseprune import csr_bitmap

from .conftest import assert_matches, reference, sparse_weight

OP = torch.ops.sparseprune.linear_csr_bitmap
AVX2 = "avx2" in sp.available_isas()
needs_avx2 = pytest.mark.skipif(not AVX2, reason="the view is used with the AVX2 kernels")


@pytest.fixture
def view_on(monkeypatch):
    """The view on, for fp32 weights of any size too (the tests' weights are small)."""
    before = csr_bitmap.csr_bitmap_enabled()
    sp.set_csr_bitmap(True)
    monkeypatch.setattr(csr_bitmap, "MIN_FP32_WEIGHTS", 0)
    yield
    sp.set_csr_bitmap(before)


def _view(w, index_bits=8):
    csr = sp.CSRWeight.from_dense(w, index_bits=index_bits)
    return csr, csr_bitmap.csr_bitmap(csr.row_offsets, csr.col_indices, csr.shape)


def test_bitmap_marks_exactly_the_stored_entries():
    g = torch.Generator().manual_seed(0)
    for shape, bits in [((1, 1), 8), ((7, 13), 8), ((5, 300), None), ((9, 600), 8)]:
        w = sparse_weight(*shape, 0.5, gen=g)
        csr, (starts, bitmap) = _view(w, bits)
        assert bitmap.dtype == torch.uint8 and bitmap.shape == (shape[0], (shape[1] + 15) // 16 * 2)
        unpacked = (bitmap.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
        mask = unpacked.reshape(shape[0], -1).bool()
        assert torch.equal(mask[:, :shape[1]], w != 0)
        assert not mask[:, shape[1]:].any()  # padding bits stay clear
        assert torch.equal(starts, torch.cat([torch.zeros(1, dtype=torch.int64),
                                              (w != 0).sum(1).cumsum(0)]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (13, 17), (33, 129), (5, 70), (40, 520),
                                   (3, 16), (64, 1000)])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.5, 1.0])
def test_op_matches_float64_reference(isa, dtype, shape, density):
    g = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    w = sparse_weight(*shape, density, dtype=dtype, gen=g)
    csr, (starts, bitmap) = _view(w, 8 if shape[1] % 3 else None)
    bias = torch.randn(shape[0], generator=g).to(dtype)
    for lead in [(1,), (0,), (2, 3), (4,)]:
        x = torch.randn(*lead, shape[1], generator=g).to(dtype)
        for b in (None, bias):
            y = OP(x, starts, bitmap, csr.values, b, shape[0])
            assert y.shape == (*lead, shape[0]) and y.dtype == dtype
            assert_matches(y, reference(x, w, b), dtype)


def test_op_non_contiguous_input_and_repeat_is_bitwise(isa):
    g = torch.Generator().manual_seed(5)
    w = sparse_weight(48, 300, 0.5, gen=g)
    csr, (starts, bitmap) = _view(w)
    x = torch.randn(300, 2, generator=g)[:, 1]  # stride 2
    assert not x.is_contiguous()
    y = OP(x, starts, bitmap, csr.values, None, 48)
    assert_matches(y, reference(x, w), torch.float32)
    assert torch.equal(OP(x.contiguous(), starts, bitmap, csr.values, None, 48), y)


def test_op_is_bitwise_equal_across_thread_counts():
    g = torch.Generator().manual_seed(9)
    w = sparse_weight(700, 1000, 0.5, gen=g)
    csr, (starts, bitmap) = _view(w)
    x = torch.randn(1000, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y2 = OP(x, starts, bitmap, csr.values, None, 700)
        torch.set_num_threads(1)
        assert torch.equal(OP(x, starts, bitmap, csr.values, None, 700), y2)
    finally:
        torch.set_num_threads(threads)


def test_op_rejects_bad_inputs():
    w = sparse_weight(6, 40, 0.5)
    csr, (starts, bitmap) = _view(w)
    x = torch.randn(40)
    with pytest.raises(ValueError, match="bitmap must be"):
        OP(x, starts, bitmap[:, :2].contiguous(), csr.values, None, 6)
    with pytest.raises(TypeError, match="bitmap must be uint8"):
        OP(x, starts, bitmap.to(torch.int32), csr.values, None, 6)
    with pytest.raises(ValueError, match="row_starts"):
        OP(x, starts[:-1].contiguous(), bitmap, csr.values, None, 6)
    with pytest.raises(ValueError, match="end at"):
        OP(x, starts, bitmap, csr.values[:-1].contiguous(), None, 6)
    bad = starts.clone()
    bad[2] = int(starts[3]) + 1  # row 1 ends after row 2 does
    with pytest.raises(ValueError, match="must not decrease"):
        OP(x, bad, bitmap, csr.values, None, 6)
    with pytest.raises(TypeError, match="float32"):
        OP(x.double(), starts, bitmap, csr.values, None, 6)


def test_op_with_more_bits_than_values_stays_inside_the_values(isa):
    # Bits without values (a view that does not match its CSR): no read past any row's
    # values (the sanitizer run checks it), and finite results.
    g = torch.Generator().manual_seed(2)
    w = sparse_weight(9, 200, 0.3, gen=g)
    csr, (starts, bitmap) = _view(w)
    full = torch.full_like(bitmap, 255)
    y = OP(torch.randn(200, generator=g), starts, full, csr.values, None, 9)
    assert torch.isfinite(y).all()


def test_opcheck():
    g = torch.Generator().manual_seed(4)
    w = sparse_weight(9, 600, 0.5, gen=g)
    csr, (starts, bitmap) = _view(w)
    x = torch.randn(600, generator=g)
    torch.library.opcheck(OP.default, (x, starts, bitmap, csr.values, None, 9))


@needs_avx2
def test_weight_linear_uses_the_view_at_batch_one_only(view_on):
    g = torch.Generator().manual_seed(1)
    w = sparse_weight(80, 200, 0.6, gen=g)
    csr = sp.CSRWeight.from_dense(w, index_bits=8)
    with sp.use_isa("avx2"), torch.no_grad():
        csr.linear(torch.randn(2, 200, generator=g))
        assert csr not in csr_bitmap._views
        x = torch.randn(1, 200, generator=g)
        y = csr.linear(x)
        assert csr in csr_bitmap._views
        assert csr_bitmap.view_nbytes(csr) == csr.values.numel() * 4 + 80 * 26 + 81 * 8
        assert torch.equal(y, OP(x, *csr_bitmap.view_of(csr), csr.values, None, 80))
        assert_matches(y, reference(x, w), torch.float32)
        # not where gradients are wanted, nor when turned off, nor on the scalar kernels
        sparse = sp.CSRWeight.from_dense(w, index_bits=8)
        sp.set_csr_bitmap(False)
        sparse.linear(x)
        sp.set_csr_bitmap(True)
        with sp.use_isa("ref"):
            sparse.linear(x)
        assert sparse not in csr_bitmap._views
        assert csr_bitmap.view_nbytes(sparse) is None
    with sp.use_isa("avx2"), torch.enable_grad():
        xg = x.clone().requires_grad_()
        sparse.linear(xg).sum().backward()
        assert sparse not in csr_bitmap._views and xg.grad is not None


@needs_avx2
def test_too_sparse_weights_keep_the_gather_kernel(view_on):
    w = sparse_weight(40, 300, 0.1, zero_rows=False)
    csr = sp.CSRWeight.from_dense(w)
    assert csr.nnz < csr_bitmap.MIN_DENSITY * w.numel()
    with sp.use_isa("avx2"), torch.no_grad():
        csr.linear(torch.randn(300))
    assert csr not in csr_bitmap._views  # refused before any lookup


@needs_avx2
def test_small_fp32_weights_keep_the_gather_kernel_bf16_ones_do_not(view_on, monkeypatch):
    monkeypatch.setattr(csr_bitmap, "MIN_FP32_WEIGHTS", 1 << 20)  # the default
    w = sparse_weight(40, 300, 0.7)
    assert w.numel() < csr_bitmap.MIN_FP32_WEIGHTS
    fp32 = sp.CSRWeight.from_dense(w, index_bits=8)
    bf16 = sp.CSRWeight.from_dense(w.bfloat16(), index_bits=8)
    with sp.use_isa("avx2"), torch.no_grad():
        fp32.linear(torch.randn(300))
        y = bf16.linear(torch.randn(300).bfloat16())
    assert csr_bitmap.view_of(fp32) is None
    assert csr_bitmap.view_of(bf16) is not None and y.dtype == torch.bfloat16


@needs_avx2
def test_view_is_remade_when_the_indices_change_in_place(view_on):
    g = torch.Generator().manual_seed(3)
    w = sparse_weight(30, 64, 0.5, gen=g, zero_rows=False)
    csr = sp.CSRWeight.from_dense(w)  # 16-bit indices
    x = torch.randn(64, generator=g)
    with sp.use_isa("avx2"), torch.no_grad():
        csr.linear(x)
        first = csr_bitmap.view_of(csr)[1]
        # move row 0's first entry one column left, where the row has no entry
        cols = csr.col_indices[:csr.row_offsets[1]].to(torch.int64)
        free = sorted(set(range(64)) - set(cols.tolist()))
        w2 = w.clone()
        w2[0, free[0]], w2[0, cols[0]] = w[0, cols[0]], 0
        moved = sp.CSRWeight.from_dense(w2)
        csr.col_indices.copy_(moved.col_indices)
        csr.values.copy_(moved.values)
        y = csr.linear(x)
    assert csr_bitmap.view_of(csr)[1] is not first
    assert_matches(y, reference(x, w2), torch.float32)


@needs_avx2
def test_sparse_linear_uses_the_view_in_inference(view_on):
    lin = torch.nn.Linear(200, 48)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(48, 200) < 0.5)
    sl = sp.SparseLinear.from_linear(lin, "csr")
    keys = set(sl.state_dict())
    x = torch.randn(200)
    with sp.use_isa("avx2"), torch.inference_mode():
        y = sl(x)
    assert csr_bitmap.view_of(sl) is not None
    assert set(sl.state_dict()) == keys  # the view is not state
    torch.testing.assert_close(y.double(), reference(x, lin.weight, lin.bias),
                               rtol=1e-4, atol=1e-4)


def _bf16_layer():
    lin = torch.nn.Linear(256, 96).bfloat16()
    with torch.no_grad():
        lin.weight.mul_(torch.rand(96, 256) < 0.5)
    return sp.SparseLinear.from_linear(lin, "csr")


@needs_avx2
def test_compiled_layer_matches_eager_with_the_view(view_on):
    sl = _bf16_layer()
    x = torch.randn(256).bfloat16()
    with sp.use_isa("avx2"), torch.no_grad():
        eager = sl(x)
        assert csr_bitmap.view_of(sl) is not None
        compiled = torch.compile(sl, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)


@needs_avx2
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_traced_layer_holds_no_view(view_on):
    sl = _bf16_layer()
    x = torch.randn(256).bfloat16()
    with sp.use_isa("avx2"), torch.no_grad():
        traced = torch.jit.trace(sl, (x,), check_trace=False)
        assert "linear_csr_bitmap" not in str(traced.inlined_graph)
        torch.testing.assert_close(traced(x), sl(x), rtol=2e-2, atol=2e-2)


def test_absent_weights_ignore_inf_and_nan_activations(isa):
    # The gather kernels never read x where a row has no entry; nor does the view.
    w = torch.zeros(3, 40)
    w[0, 1], w[1, 7], w[2, 39] = 1.0, 2.0, -3.0
    csr, (starts, bitmap) = _view(w)
    x = torch.randn(40)
    x[5], x[20] = float("inf"), float("nan")
    y = OP(x, starts, bitmap, csr.values, None, 3)
    assert torch.equal(y, torch.ops.sparseprune.linear_csr(x, csr.row_offsets, csr.col_indices,
                                                           csr.values, None, 3))
    assert torch.isfinite(y).all()


@needs_avx2
def test_loading_other_weights_remakes_the_view(view_on):
    g = torch.Generator().manual_seed(8)
    layers = []
    for density in (0.6, 0.45):  # other entry counts: load_state_dict makes fresh tensors
        lin = torch.nn.Linear(48, 20)
        with torch.no_grad():
            lin.weight.copy_(sparse_weight(20, 48, density, gen=g, zero_rows=False))
        layers.append((sp.SparseLinear.from_linear(lin, "csr"), lin))
    (sl, _), (other, lin2) = layers
    x = torch.randn(48, generator=g)
    with sp.use_isa("avx2"), torch.no_grad():
        sl(x)
        first = csr_bitmap.view_of(sl)
        sl.load_state_dict(other.state_dict())
        y = sl(x)
        assert csr_bitmap.view_of(sl) is not first
        torch.testing.assert_close(y.double(), reference(x, lin2.weight, lin2.bias),
                                   rtol=1e-4, atol=1e-4)
        # and an in-place change of the same tensors (version counters)
        sl.load_state_dict(layers[0][0].state_dict())
        sl.load_state_dict(other.state_dict())
        torch.testing.assert_close(sl(x).double(), reference(x, lin2.weight, lin2.bias),
                                   rtol=1e-4, atol=1e-4)
