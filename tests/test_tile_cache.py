"""The per-weight N:M tile copies (sparseprune.tile_cache) and the ops behind them."""

import copy
import pickle

import pytest
import torch

import sparseprune as sp
from sparseprune import masks, tile_cache

from sparseprune._ext import _C

AVX512 = "avx512" in sp.available_isas()
# (rows per tile, smallest and largest batch that use the copy) under the active kernels:
# (16, 1, no limit) with AVX-512, (8, measured limits) with AVX2, zeros for the scalar
# reference.
WIDTH, MIN_BATCH, MAX_BATCH = _C.nm_tile_copy()
needs_tiles = pytest.mark.skipif(WIDTH == 0,
                                 reason="the tile copies need the AVX2 or AVX-512 kernels")


@pytest.fixture
def cache_on():
    before = tile_cache.nm_tile_cache_enabled()
    sp.set_nm_tile_cache(True)
    yield
    sp.set_nm_tile_cache(before)


def _packed(out, inn, n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inn, generator=g)
    return sp.NMWeight.from_dense(w, n, m, masks.n_m(w.abs(), n, m))


def _ref(x, packed, bias=None):
    y = x.double() @ packed.to_dense().double().T
    return y + bias.double() if bias is not None else y


@needs_tiles
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (2, 8), (4, 8), (1, 2), (5, 16), (3, 8)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (16, 16), (33, 50), (100, 70), (257, 1040)])
def test_cached_product_matches_reference_and_tiles_path(cache_on, nm, shape, monkeypatch):
    n, m = nm
    packed = _packed(*shape, n, m, seed=shape[0] + m)
    g = torch.Generator().manual_seed(7)
    fits = WIDTH % m == 0  # m = 16 is too wide for the 8-row AVX2 tiles
    for batch in (1, 2, 3, 8, 13, 16, 17, 24, 25, 33, 130):
        x = torch.randn(batch, shape[1], generator=g)
        bias = torch.randn(shape[0], generator=g) if batch % 2 else None
        with torch.no_grad():
            tile_cache._copies.pop(packed, None)
            y = packed.linear(x, bias)
            used = fits and MIN_BATCH <= batch <= MAX_BATCH
            assert (packed in tile_cache._copies) == used
            ref = _ref(x, packed, bias)
            tol = 1e-5 * (x.double().abs() @ packed.to_dense().double().abs().T).max() + 1e-6
            assert (y.double() - ref).abs().max() <= tol
            if not used:
                continue
            # The same arithmetic as the per-call tiles kernel: bitwise equal.
            sp.set_nm_tile_cache(False)
            monkeypatch.setenv("SPARSEPRUNE_NM", "tiles")
            y_tiles = packed.linear(x, bias)
            monkeypatch.delenv("SPARSEPRUNE_NM")
            sp.set_nm_tile_cache(True)
            assert torch.equal(y, y_tiles)


@needs_tiles
def test_copy_is_remade_when_values_change_in_place(cache_on):
    packed = _packed(48, 64, 2, 4)
    x = torch.randn(5, 64)
    with torch.no_grad():
        packed.linear(x)
        first = tile_cache._copies[packed][1][0]
        packed.values.mul_(2)
        y = packed.linear(x)
    assert tile_cache._copies[packed][1][0] is not first
    assert torch.allclose(y.double(), _ref(x, packed), rtol=1e-5, atol=1e-4)


@needs_tiles
def test_sparse_linear_uses_the_copy_in_inference_only(cache_on):
    lin = torch.nn.Linear(64, 40)
    with torch.no_grad():
        lin.weight.mul_(masks.n_m(lin.weight.abs(), 2, 4))
    sl = sp.SparseLinear.from_linear(lin, "nm", n=2, m=4)
    keys = set(sl.state_dict())
    x = torch.randn(9, 64, requires_grad=True)
    y = sl(x)  # grad enabled, x requires grad: the autograd op, no copy
    assert sl not in tile_cache._copies
    y.sum().backward()
    assert torch.allclose(x.grad, lin.weight.sum(0).expand(9, 64), atol=1e-5)
    with torch.inference_mode():
        y2 = sl(x.detach())
    assert sl in tile_cache._copies
    torch.testing.assert_close(y2, lin(x).detach(), rtol=1e-5, atol=1e-5)
    # Not in the state dict, and copies / pickles do not carry it.
    assert set(sl.state_dict()) == keys
    clone = copy.deepcopy(sl)
    assert clone not in tile_cache._copies
    assert pickle.loads(pickle.dumps(sl)) not in tile_cache._copies


@needs_tiles
def test_other_isas_dtypes_and_devices_take_the_plain_op(cache_on):
    packed = _packed(32, 64, 2, 4)
    x = torch.randn(4, 64)
    with torch.no_grad():
        with sp.use_isa("ref"):
            y = packed.linear(x)
        assert packed not in tile_cache._copies
        torch.testing.assert_close(y.double(), _ref(x, packed), rtol=1e-5, atol=1e-4)
        w = torch.randn(32, 64).bfloat16()
        bf = sp.NMWeight.from_dense(w, 2, 4, masks.n_m(w.float().abs(), 2, 4))
        bf.linear(x.bfloat16())
        assert bf not in tile_cache._copies
        wide = _packed(16, 64, 2, 32)  # m = 32 does not divide the tile width
        wide.linear(x)
        assert wide not in tile_cache._copies
        if MIN_BATCH > 1:  # AVX2: batch 1 takes the plain op
            packed.linear(torch.randn(64))
            packed.linear(torch.randn(1, 64))
            assert packed not in tile_cache._copies
        if MAX_BATCH < 2**62:  # AVX2: larger batches take the plain op
            packed.linear(torch.randn(MAX_BATCH + 1, 64))
            assert packed not in tile_cache._copies
            packed.linear(torch.randn(2, MAX_BATCH // 2 + 1, 64))  # leading dims count
            assert packed not in tile_cache._copies
            packed.linear(torch.randn(MAX_BATCH, 64))
            assert packed in tile_cache._copies


@pytest.mark.skipif(not AVX512, reason="needs both the AVX-512 and the AVX2 kernels")
def test_copy_follows_the_active_isa(cache_on):
    packed = _packed(40, 96, 2, 4)
    x = torch.randn(5, 96)
    with torch.no_grad():
        with sp.use_isa("avx512"):
            y16 = packed.linear(x)
            tv16, tc16 = tile_cache._copies[packed][1]
        assert tv16.shape[-1] == 16
        with sp.use_isa("avx2"):
            y8 = packed.linear(x)  # remade for 8-row tiles
            assert tile_cache._copies[packed][1][0].shape[-1] == 8
            with pytest.raises(ValueError, match="tile_values must be"):
                torch.ops.sparseprune.linear_nm_tiles(x, tv16, tc16, None, 2, 4, 40)
    torch.testing.assert_close(y8, y16, rtol=1e-5, atol=1e-5)


def test_switch_validates_and_clears(cache_on):
    with pytest.raises(TypeError, match="enabled must be a bool"):
        sp.set_nm_tile_cache(1)
    sp.set_nm_tile_cache(False)
    assert len(tile_cache._copies) == 0 and not tile_cache.nm_tile_cache_enabled()


@needs_tiles
def test_op_errors():
    packed = _packed(32, 64, 2, 4)
    tv, tc = torch.ops.sparseprune.nm_tiles_pack(packed.values, packed.metadata, 2, 4, 64)
    assert tv.shape == tc.shape == tile_cache.copy_shape(32, 64, 2, 4) and tc.dtype == torch.uint8
    assert tv.shape == ((2, 32, 16) if WIDTH == 16 else (4, 32, 8))
    x = torch.randn(3, 64)
    with pytest.raises(ValueError, match=f"m dividing {WIDTH}"):
        torch.ops.sparseprune.nm_tiles_pack(packed.values, packed.metadata, 2, 32, 64)
    with pytest.raises(ValueError, match="values must be"):
        torch.ops.sparseprune.nm_tiles_pack(packed.values, packed.metadata, 2, 4, 60)
    with pytest.raises(TypeError, match="values must be float32"):
        torch.ops.sparseprune.nm_tiles_pack(packed.values.bfloat16(), packed.metadata, 2, 4, 64)
    with pytest.raises(ValueError, match="tile_values must be"):
        torch.ops.sparseprune.linear_nm_tiles(x, tv[:1], tc[:1], None, 2, 4, 32)
    with pytest.raises(ValueError, match="tile_cols must have the shape"):
        torch.ops.sparseprune.linear_nm_tiles(x, tv, tc[:, :8], None, 2, 4, 32)
    with pytest.raises(TypeError, match="tile_cols must be uint8"):
        torch.ops.sparseprune.linear_nm_tiles(x, tv, tc.int(), None, 2, 4, 32)
    with sp.use_isa("ref"), pytest.raises(RuntimeError, match="needs the AVX2 or AVX-512 kernels"):
        torch.ops.sparseprune.linear_nm_tiles(x, tv, tc, None, 2, 4, 32)
    y = torch.ops.sparseprune.linear_nm_tiles(torch.empty(0, 64), tv, tc, None, 2, 4, 32)
    assert y.shape == (0, 32)


@needs_tiles
def test_ops_pass_opcheck():
    packed = _packed(32, 64, 2, 4)
    tv, tc = torch.ops.sparseprune.nm_tiles_pack(packed.values, packed.metadata, 2, 4, 64)
    x = torch.randn(5, 64)
    torch.library.opcheck(torch.ops.sparseprune.nm_tiles_pack.default,
                          (packed.values, packed.metadata, 2, 4, 64),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.sparseprune.linear_nm_tiles.default,
                          (x, tv, tc, None, 2, 4, 32),
                          test_utils=("test_schema", "test_faketensor"))


@needs_tiles
def test_copy_nbytes_matches_the_copy(cache_on):
    for out, inn, n, m in ((33, 50, 2, 4), (100, 70, 1, 4), (16, 64, 2, 8)):
        packed = _packed(out, inn, n, m)
        with torch.no_grad():
            packed.linear(torch.randn(2, inn))
        tv, tc = tile_cache._copies[packed][1]
        assert tile_cache.copy_nbytes(packed) == tv.numel() * 4 + tc.numel()
        assert tile_cache.used_at(packed, 2) == (WIDTH % m == 0)
        assert not tile_cache.used_at(packed, MIN_BATCH - 1)
        if MAX_BATCH < 2**62:
            assert not tile_cache.used_at(packed, MAX_BATCH + 1)
    sp.set_nm_tile_cache(False)
    assert not tile_cache.used_at(packed, 2)
