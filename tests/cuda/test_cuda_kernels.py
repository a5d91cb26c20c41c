"""The CUDA kernels against a float64 reference, on a GPU only.

Collected only where a CUDA GPU is present (tests/cuda/conftest.py); there, an extension
built without CUDA fails test_extension_has_cuda rather than skipping.
SPARSEPRUNE_SANITIZE=1 picks a small subset (for compute-sanitizer runs).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune import _C, masks

QUICK = os.environ.get("SPARSEPRUNE_SANITIZE") == "1"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative Frobenius error against float64 from the same (rounded) inputs: output rounding
# plus fp32 accumulation order.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
# (out, in): tiny, odd, not multiples of the tiles, and the MiniLM / BERT shapes.
SHAPES = [(1, 32), (48, 64), (100, 96), (129, 160), (384, 384), (257, 1024)]
ODD_SHAPES = [(5, 7), (33, 50), (70, 130)]
BATCHES = [1, 3, 8, 9, 17, 32, 33, 64, 130]
if QUICK:
    SHAPES, ODD_SHAPES, BATCHES = [(48, 64), (129, 160)], [(33, 50)], [1, 9, 33, 130]

DEV = "cuda"


def test_extension_has_cuda():
    assert _C.cuda_built, "a GPU is present but sparseprune._C was built without CUDA"


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "NaN/Inf in the output (an element left unwritten?)"
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _poison_allocator(numel: int, dtype: torch.dtype):
    """Leaves a NaN-filled block in the caching allocator, so an output the op allocates next
    starts as NaN and an unwritten element shows."""
    t = torch.full((numel + 1024,), float("nan"), dtype=dtype, device=DEV)
    del t


def _check(packed: sp.PackedWeight, batch: int, dtype: torch.dtype, bias: bool, lead=()):
    gen = torch.Generator().manual_seed(batch * 7919 + packed.out_features)
    w = packed.to_dense()  # on the CPU, in dtype
    x = torch.randn(*lead, batch, packed.in_features, generator=gen).to(dtype)
    b = torch.randn(packed.out_features, generator=gen).to(dtype) if bias else None
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    dev_w = packed.to(DEV)
    xd, bd = x.to(DEV), None if b is None else b.to(DEV)
    # After the inputs' allocations, so that the output is the one to get the NaN block.
    _poison_allocator(x[..., :1].numel() * packed.out_features, dtype)
    y = dev_w.linear(xd, bd)
    assert y.shape == ref.shape and y.dtype == dtype and y.device.type == "cuda"
    err = _rel_err(y.cpu(), ref)
    assert err < TOL[dtype], f"relative error {err:.2e} >= {TOL[dtype]:.0e}"
    # Element by element too: one wrong element of a large output hides in the norm.
    worst = float((y.cpu().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    assert worst < 4 * TOL[dtype], f"an element is off by {worst:.2e} of the largest output"


def _weight(out, inn, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out, inn, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + ODD_SHAPES)
@pytest.mark.parametrize("density", [0.05, 0.4])
def test_csr(dtype, shape, density):
    w = _weight(*shape, dtype, 1)
    keep = masks.unstructured(w.abs().float(), 1 - density)
    packed = sp.CSRWeight.from_dense(w, keep)
    for batch in BATCHES:
        _check(packed, batch, dtype, bias=batch % 2 == 1)


CSR_VARIANTS = (getattr(_C, "cuda_csr_variants", lambda: "auto")()).split(", ")
# Rows of 0 to a few hundred nonzeros (empty rows, rows ending mid-chunk), inputs split 16
# ways by the tensor-core kernels (100 x 5000) or not at all (4000 x 300), in % 8 != 0
# (tensor-core variants fall back to the row kernels), batches not a multiple of the tiles,
# 260 (auto takes tc:64 from batch 256 at density 0.3).
CSR_SHAPES = [(70, 130), (257, 1024), (100, 5000), (4000, 300)]
CSR_BATCHES = [1, 9, 16, 17, 33, 64, 130, 260]
if QUICK:
    CSR_SHAPES, CSR_BATCHES = [(70, 130), (100, 2104)], [9, 33]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", CSR_VARIANTS)
def test_csr_variants(variant, dtype, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CUDA_CSR", variant)
    for i, shape in enumerate(CSR_SHAPES):
        w = _weight(*shape, dtype, 31 + i)
        for density in (0.05, 0.3):
            packed = sp.CSRWeight.from_dense(w, masks.unstructured(w.abs().float(), 1 - density))
            for batch in CSR_BATCHES:
                _check(packed, batch, dtype, bias=batch % 2 == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", CSR_VARIANTS)
def test_csr_row_lengths(variant, dtype, monkeypatch):
    # Rows of 0, 1, 7, 8, 9, 31, 32, 33, 64, 65 and 100 nonzeros (the 8-entry chunks of the
    # tensor-core kernels, the 32 lanes of the row kernels), empty rows back to back, rows
    # starting anywhere in a chunk.
    monkeypatch.setenv("SPARSEPRUNE_CUDA_CSR", variant)
    lengths = [0, 0, 1, 7, 8, 9, 31, 32, 33, 0, 64, 65, 100]
    out, inn = 2500, 200
    gen = torch.Generator().manual_seed(17)
    w = torch.zeros(out, inn)
    for r in range(out):
        n = lengths[r % len(lengths)]
        cols = torch.randperm(inn, generator=gen)[:n]
        w[r, cols] = torch.randn(n, generator=gen)
    packed = sp.CSRWeight.from_dense(w.to(dtype))
    for batch in (9, 17, 40):
        _check(packed, batch, dtype, bias=batch != 17)


def test_csr_variant_names():
    assert CSR_VARIANTS == ["auto", "rows", "tc:32", "tc:64"]


def test_csr_unknown_variant(monkeypatch):
    w = _weight(32, 64, torch.float16, 8)
    packed = sp.CSRWeight.from_dense(w).to(DEV)
    monkeypatch.setenv("SPARSEPRUNE_CUDA_CSR", "tiles")
    with pytest.raises(ValueError, match="SPARSEPRUNE_CUDA_CSR must be one of auto, rows"):
        packed.linear(torch.randn(40, 64, device=DEV, dtype=torch.float16))


@pytest.mark.parametrize("variant", CSR_VARIANTS)
def test_csr_int32_indices_and_empty_rows(variant, monkeypatch):
    # in > 65536 needs int32 column indices; most rows empty.
    monkeypatch.setenv("SPARSEPRUNE_CUDA_CSR", variant)
    w = torch.zeros(40, 70000)
    w[::3, ::997] = torch.randn(14, 71)
    packed = sp.CSRWeight.from_dense(w)
    assert packed.col_indices.dtype == torch.int32
    for batch in (1, 12, 40):
        _check(packed, batch, torch.float32, bias=True)


BLOCKS = [(16, 16), (32, 32), (16, 32), (48, 16), (64, 16), (4, 1), (1, 4), (8, 8), (3, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", BLOCKS)
def test_bsr(dtype, block):
    shapes = SHAPES[1:] + ODD_SHAPES
    for i, (out, inn) in enumerate(shapes):
        if block[0] > out or block[1] > inn:
            continue
        w = _weight(out, inn, dtype, 2 + i)
        keep = masks.block(w.abs().float(), 0.7, block)
        packed = sp.BSRWeight.from_dense(w, block, keep)
        for batch in BATCHES:
            _check(packed, batch, dtype, bias=batch % 2 == 0)


def test_bsr_paths():
    assert _C.cuda_bsr_path("float16", 16, 16, 64) == "tensor_core"
    assert _C.cuda_bsr_path("bfloat16", 32, 32, 1024) == "tensor_core"
    assert _C.cuda_bsr_path("float32", 32, 32, 1024) == "cuda_core"
    assert _C.cuda_bsr_path("float16", 8, 8, 64) == "cuda_core"


NM = [(2, 4), (1, 4), (2, 8), (4, 8), (3, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nm", NM)
def test_nm(dtype, nm):
    n, m = nm
    for i, (out, inn) in enumerate(SHAPES + ODD_SHAPES):
        w = _weight(out, inn, dtype, 3 + i)
        keep = masks.n_m(w.abs().float(), n, m)
        packed = sp.NMWeight.from_dense(w, n, m, keep)
        for batch in BATCHES:
            _check(packed, batch, dtype, bias=batch % 2 == 1)


# The BSR tensor-core kernels, each forced (a GEMM variant that does not fit, e.g. in % 8 != 0,
# runs the legacy kernel): every one right at every batch and block shape, since the automatic
# choice is a measured threshold that may move.
BSR_VARIANTS = (getattr(_C, "cuda_bsr_variants", lambda: "auto")()).split(", ")
# bw 16, 32 and 48 (steps of 16 and 32 inputs), bh 16-64, a partial last block row and column.
# (16, 64): two 32-input steps per block; (48, 32): bh 48 with 32-input steps; in = 1000: a
# partial last block column under 32-input steps.
BSR_BLOCKS = [(16, 16), (32, 32), (48, 16), (64, 32), (16, 48), (16, 64), (48, 32)]
BSR_SHAPES = [(48, 64), (100, 96), (129, 160), (257, 1024), (130, 1000), (70, 130)]
BSR_BATCHES = [1, 9, 33, 64, 65, 130, 257]
if QUICK:
    BSR_BLOCKS, BSR_SHAPES, BSR_BATCHES = [(32, 32), (48, 16)], [(100, 96)], [33, 130]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", BSR_VARIANTS)
def test_bsr_variants(variant, dtype, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CUDA_BSR", variant)
    for i, (out, inn) in enumerate(BSR_SHAPES):
        for j, block in enumerate(BSR_BLOCKS):
            if block[0] > out or block[1] > inn:
                continue
            w = _weight(out, inn, dtype, 21 + 7 * i + j)
            keep = masks.block(w.abs().float(), 0.6, block)
            packed = sp.BSRWeight.from_dense(w, block, keep)
            for batch in BSR_BATCHES:
                _check(packed, batch, dtype, bias=(batch + j) % 2 == 0)


@pytest.mark.parametrize("variant", BSR_VARIANTS)
def test_bsr_variants_empty_block_rows(variant, monkeypatch):
    # Block rows without blocks must still write the bias (or zeros).
    monkeypatch.setenv("SPARSEPRUNE_CUDA_BSR", variant)
    w = _weight(128, 256, torch.float16, 5)
    w[:64] = 0
    w[96:] = 0
    packed = sp.BSRWeight.from_dense(w, (32, 32))
    for batch in (40, 200):
        _check(packed, batch, torch.float16, bias=True)
        _check(packed, batch, torch.float16, bias=False)


def test_bsr_variant_names():
    assert BSR_VARIANTS[:2] == ["auto", "legacy"]
    assert "gemm:64" in BSR_VARIANTS and "gemm:128" in BSR_VARIANTS


def test_bsr_unknown_variant(monkeypatch):
    w = _weight(32, 64, torch.float16, 8)
    packed = sp.BSRWeight.from_dense(w, (16, 16)).to(DEV)
    monkeypatch.setenv("SPARSEPRUNE_CUDA_BSR", "gemm:3")
    with pytest.raises(ValueError, match="SPARSEPRUNE_CUDA_BSR must be one of auto, legacy"):
        packed.linear(torch.randn(40, 64, device=DEV, dtype=torch.float16))


# The 2:4 tensor-core kernels, each forced: every one must be right at every batch, since
# the automatic choice is a measured table that may move.
NM24_VARIANTS = (getattr(_C, "cuda_nm24_variants", lambda: "auto")()).split(", ")
# (24, 11008): 172 64-column spans, not a multiple of the wide kernels' chunks per pass,
# so their interleaved walks end part-way through a pass.
NM24_SHAPES = [(48, 64), (100, 128), (33, 192), (384, 384), (257, 1024), (24, 11008)]
NM24_BATCHES = [1, 5, 9, 16, 17, 40, 64, 130, 257]
if QUICK:
    # (70, 512): enough input steps for the GEMM kernels to split K.
    NM24_SHAPES = [(100, 128), (33, 192), (70, 512), (24, 11008)]
    NM24_BATCHES = [1, 5, 9, 17, 130]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", NM24_VARIANTS)
def test_nm24_variants(variant, dtype, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CUDA_NM24", variant)
    for i, (out, inn) in enumerate(NM24_SHAPES):
        w = _weight(out, inn, dtype, 11 + i)
        packed = sp.NMWeight.from_dense(w, 2, 4, masks.n_m(w.abs().float(), 2, 4))
        for batch in NM24_BATCHES:
            _check(packed, batch, dtype, bias=batch % 2 == 0)


def test_nm24_variant_names():
    assert NM24_VARIANTS[:2] == ["auto", "legacy"]
    assert len(NM24_VARIANTS) > 2
    assert all(v.startswith(("frag:", "ring", "wide:", "stage:", "gemm:"))
               for v in NM24_VARIANTS[2:])
    assert "wide:u1i" in NM24_VARIANTS and "wide:u2i" in NM24_VARIANTS
    assert {"stage:u2s2", "stage:u2s2i"} <= set(NM24_VARIANTS)
    assert "gemm:256x128" in NM24_VARIANTS and "gemm:128x64" in NM24_VARIANTS


def test_nm24_unknown_variant(monkeypatch):
    w = _weight(32, 64, torch.float16, 8)
    packed = sp.NMWeight.from_dense(w, 2, 4, masks.n_m(w.abs().float(), 2, 4)).to(DEV)
    monkeypatch.setenv("SPARSEPRUNE_CUDA_NM24", "frag:3x3")
    with pytest.raises(ValueError, match="SPARSEPRUNE_CUDA_NM24 must be one of auto, legacy"):
        packed.linear(torch.randn(16, 64, device=DEV, dtype=torch.float16))


def test_nm_paths():
    assert _C.cuda_nm_path("float16", 2, 4, 384) == "tensor_core"
    assert _C.cuda_nm_path("bfloat16", 2, 4, 4096) == "tensor_core"
    assert _C.cuda_nm_path("float16", 2, 4, 50) == "cuda_core"
    assert _C.cuda_nm_path("float32", 2, 4, 384) == "cuda_core"
    assert _C.cuda_nm_path("float16", 1, 4, 384) == "cuda_core"


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_leading_dims_zero_sizes_and_sliced_inputs(fmt):
    w = _weight(64, 96, torch.float16, 4)
    kw = dict(block=(16, 16)) if fmt == "bsr" else dict(n=2, m=4) if fmt == "nm" else {}
    keep = {"csr": lambda: masks.unstructured(w.abs().float(), 0.8),
            "bsr": lambda: masks.block(w.abs().float(), 0.5, (16, 16)),
            "nm": lambda: masks.n_m(w.abs().float(), 2, 4)}[fmt]()
    packed = sp.pack(w, fmt, keep, **kw)
    _check(packed, 5, torch.float16, bias=True, lead=(2, 3))
    dev = packed.to(DEV)
    assert dev.linear(torch.randn(0, 96, device=DEV, dtype=torch.float16)).shape == (0, 64)
    # A view that starts 2 bytes into its storage (vector loads must not assume alignment).
    big = torch.randn(40 * 97 + 1, dtype=torch.float16)
    x = big[1:].view(40, 97)[:, 1:]
    ref = x.double() @ packed.to_dense().double().T
    y = dev.linear(big.to(DEV)[1:].view(40, 97)[:, 1:])
    assert _rel_err(y.cpu(), ref) < TOL[torch.float16]


def test_errors():
    w = _weight(32, 64, torch.float16, 5)
    packed = sp.NMWeight.from_dense(w * masks.n_m(w.abs().float(), 2, 4), 2, 4).to(DEV)
    with pytest.raises(RuntimeError, match="x is on cpu"):
        packed.linear(torch.randn(3, 64, dtype=torch.float16))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.sparseprune.linear_nm(torch.randn(3, 64, device=DEV, dtype=torch.float64),
                                        packed.values.double(), packed.metadata, None, 2, 4)
    with pytest.raises(TypeError, match="weight values are"):
        packed.linear(torch.randn(3, 64, device=DEV))
    with pytest.raises(RuntimeError, match="metadata is on cpu"):
        torch.ops.sparseprune.linear_nm(torch.randn(3, 64, device=DEV, dtype=torch.float16),
                                        packed.values, packed.metadata.cpu(), None, 2, 4)
    with pytest.raises(RuntimeError, match="bias is on cpu"):
        packed.linear(torch.randn(3, 64, device=DEV, dtype=torch.float16),
                      torch.randn(32, dtype=torch.float16))
    csr = sp.CSRWeight.from_dense(w).to(DEV)
    with pytest.raises(ValueError, match="row_offsets must be 1-D with 33"):
        torch.ops.sparseprune.linear_csr(torch.randn(2, 64, device=DEV, dtype=torch.float16),
                                         csr.row_offsets[:-1], csr.col_indices, csr.values,
                                         None, 32)
    # float16 on the CPU kernels is a clear TypeError, not a crash.
    with pytest.raises(TypeError, match="float16 runs on CUDA only"):
        sp.CSRWeight.from_dense(w).linear(torch.randn(2, 64, dtype=torch.float16))


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_sparse_linear_moves_between_devices(fmt):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 48)
    kw = dict(block=(16, 16)) if fmt == "bsr" else dict(n=2, m=4) if fmt == "nm" else {}
    with torch.no_grad():
        keep = {"csr": lambda: masks.unstructured(lin.weight.abs(), 0.7),
                "bsr": lambda: masks.block(lin.weight.abs(), 0.5, (16, 16)),
                "nm": lambda: masks.n_m(lin.weight.abs(), 2, 4)}[fmt]()
        lin.weight.mul_(keep)
    sl = sp.SparseLinear.from_linear(lin, fmt, **kw).requires_grad_(False)
    x = torch.randn(7, 96)
    y_cpu = sl(x)
    sl_gpu = sl.to(DEV)
    y_gpu = sl_gpu(x.to(DEV))
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    half = sl_gpu.half()
    y_half = half(x.to(DEV).half())
    assert _rel_err(y_half.float().cpu(), y_cpu.double()) < 3e-3
    back = half.float().cpu()
    torch.testing.assert_close(back(x), y_cpu, rtol=2e-3, atol=2e-3)


def test_8bit_csr_repacks_when_moved_to_cuda():
    # 8-bit CSR is a CPU layout: CSRWeight.to and SparseLinear.to repack it to 16-bit
    torch.manual_seed(0)
    w = _weight(48, 600, torch.float32, 9)
    w = w * masks.unstructured(w.abs(), 0.6)
    c8 = sp.CSRWeight.from_dense(w, index_bits=8)
    moved = c8.to(DEV)
    assert moved.index_bits == 16 and torch.equal(moved.to_dense().cpu(), w)
    x = torch.randn(5, 600)
    torch.testing.assert_close(moved.linear(x.to(DEV)).cpu(), c8.linear(x), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(TypeError, match="8-bit"):
        torch.ops.sparseprune.linear_csr(x.to(DEV), c8.row_offsets.to(DEV),
                                         c8.col_indices.to(DEV), c8.values.to(DEV), None, 48)
    lin = torch.nn.Linear(600, 48)
    with torch.no_grad():
        lin.weight.copy_(w)
    sl = sp.SparseLinear.from_linear(lin, "csr").requires_grad_(False)
    assert sl.col_indices.dtype == torch.uint8
    y = sl(x)
    on_gpu = sl.to(DEV)
    assert on_gpu.col_indices.dtype == torch.uint16
    torch.testing.assert_close(on_gpu(x.to(DEV)).cpu(), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_autograd_on_cuda(fmt):
    w = _weight(32, 64, torch.float32, 6)
    kw = dict(block=(16, 16)) if fmt == "bsr" else dict(n=2, m=4) if fmt == "nm" else {}
    keep = {"csr": lambda: masks.unstructured(w.abs(), 0.7),
            "bsr": lambda: masks.block(w.abs(), 0.5, (16, 16)),
            "nm": lambda: masks.n_m(w.abs(), 2, 4)}[fmt]()
    packed = sp.pack(w, fmt, keep, **kw).to(DEV)
    x = torch.randn(5, 64, device=DEV, requires_grad=True)
    dense = packed.to_dense()
    xd = x.detach().clone().requires_grad_(True)
    packed.linear(x).square().sum().backward()
    F.linear(xd, dense).square().sum().backward()
    torch.testing.assert_close(x.grad, xd.grad, rtol=1e-4, atol=1e-4)


def test_opcheck_on_cuda():
    w = _weight(32, 64, torch.float16, 7)
    packed = sp.NMWeight.from_dense(w * masks.n_m(w.abs().float(), 2, 4), 2, 4).to(DEV)
    x = torch.randn(4, 64, device=DEV, dtype=torch.float16)
    torch.library.opcheck(torch.ops.sparseprune.linear_nm.default,
                          (x, packed.values, packed.metadata, None, 2, 4),
                          test_utils=("test_schema", "test_faketensor"))
