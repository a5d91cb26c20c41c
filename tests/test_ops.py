"""Every op against a float64 dense reference, per ISA; opcheck; torch.compile; errors."""

import pytest
import torch
import torch.nn.functional as F

import sparseprune as sp

from .conftest import SHAPES, assert_matches, reference, sparse_weight

DTYPES = [torch.float32, torch.bfloat16]
NM = [(2, 4), (1, 4), (2, 8), (4, 8), (3, 7), (5, 32)]
# Every batch-1 BSR body: tall (bw 1), wide (bh 1), generic narrow, and row dot products
# along widths that are multiples of 8 (8, 16, 24, 32).
BLOCKS = [(4, 1), (8, 1), (1, 4), (1, 2), (3, 5), (8, 8), (16, 16), (2, 24), (32, 32)]
# leading dims of x: batch 1, a batch of 5, an empty batch, 2x3 (as in [B, T, in])
LEADING = [(1,), (5,), (0,), (2, 3)]


def packings(w, dtype):
    """(name, packed, dense it stands for) for every format and pattern of the test."""
    out = [("csr", sp.CSRWeight.from_dense(w), w),
           ("csr8", sp.CSRWeight.from_dense(w, index_bits=8), w)]
    out += [(f"bsr{b}", sp.BSRWeight.from_dense(w, b), w) for b in BLOCKS]
    for n, m in NM:
        wn = (w.float() * sp.masks.n_m(w.float().abs(), n, m)).to(dtype)
        out.append((f"nm{n}:{m}", sp.NMWeight.from_dense(wn, n, m), wn))
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_op_matches_float64(isa, shape, dtype):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    w = sparse_weight(*shape, 0.4, dtype=dtype, gen=gen)
    bias = torch.randn(shape[0], generator=gen).to(dtype)
    for name, packed, dense in packings(w, dtype):
        for lead in LEADING:
            x = torch.randn(*lead, shape[1], generator=gen).to(dtype)
            for b in (bias, None):
                y = packed.linear(x, b)
                assert y.shape == (*lead, shape[0]) and y.dtype == dtype, name
                assert_matches(y, reference(x, dense, b), dtype)


@pytest.mark.parametrize("batch", [1, 3, 16, 33, 70, 161])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_layers_use_threads_correctly(isa, batch, dtype):
    # big enough to be split across threads, with uneven rows (some empty, some dense);
    # the batches cover every activation chunk width and ragged tails; from 128 rows
    # (2 threads) the batch is split instead of the rows (ops.cpp, run_by_batch)
    torch.manual_seed(batch)
    w = sparse_weight(300, 700, 0.1, dtype=dtype)
    w[7] = torch.randn(700).to(dtype)
    x, bias = torch.randn(batch, 700).to(dtype), torch.randn(300).to(dtype)
    for name, packed, dense in packings(w, dtype):
        assert_matches(packed.linear(x, bias), reference(x, dense, bias), dtype)


@pytest.mark.parametrize("path", ["tiles", "batched"])
@pytest.mark.parametrize("batch", [1, 5, 8, 13, 40, 161])
def test_both_nm_paths_match_float64(isa, path, batch, monkeypatch):
    # fp32 N:M with m dividing 16 runs the row-tile kernel from batch 8 (ops.cpp,
    # run_nm_tiles) and the batched body otherwise: force each on every batch; the shape
    # spans two 16-row tiles plus a ragged one and windows with a masked tail
    monkeypatch.setenv("SPARSEPRUNE_NM", path)
    torch.manual_seed(batch)
    w = sparse_weight(37, 300, 0.6)
    x, bias = torch.randn(batch, 300), torch.randn(37)
    for n, m in [(2, 4), (1, 4), (2, 8), (4, 8), (1, 2), (5, 16), (3, 7)]:
        wn = w * sp.masks.n_m(w.abs(), n, m)
        packed = sp.NMWeight.from_dense(wn, n, m)
        assert_matches(packed.linear(x, bias), reference(x, wn, bias), torch.float32)
        y3 = packed.linear(x.view(1, batch, 300))
        assert_matches(y3, reference(x, wn, None).view(1, batch, 37), torch.float32)


@pytest.mark.parametrize("batch", [2, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_column_tiles_8_lanes(isa, batch, dtype):
    # 1:4, 2:8 and 4:16 at 8 lanes take the column tiles once a row's activations pass 64 KB
    # (2300 columns x 32 bytes); 2:4 does not; 40 rows = 1 block + 8
    torch.manual_seed(batch)
    w = sparse_weight(40, 2300, 0.5)
    x, bias = torch.randn(batch, 2300), torch.randn(40)
    threads = torch.get_num_threads()
    for n, m in [(1, 4), (2, 8), (4, 16), (2, 4)]:
        wn = (w * sp.masks.n_m(w.abs(), n, m)).to(dtype)
        xd, bd = x.to(dtype), bias.to(dtype)
        packed = sp.NMWeight.from_dense(wn, n, m)
        assert_matches(packed.linear(xd, bd), reference(xd, wn, bd), dtype)
        try:  # one thread: the 40 rows cross a 32-row block of the tile loop
            torch.set_num_threads(1)
            assert_matches(packed.linear(xd, bd), reference(xd, wn, bd), dtype)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
@pytest.mark.parametrize("in_features", [16, 31, 48, 64, 80, 129, 257, 1000])
def test_nm_small_batch_windows_match_float64(isa, in_features, batch):
    # batch 1-4 N:M (AVX2: row_dot_decode8, rows_dot_decode8 for fp32 x at 2-4): an unrolled
    # loop over the steps whose window and 32-bit metadata word lie inside the row (in-lane
    # quads for 2:4, 1:2, 1:4), then the checked steps, then the scalar slots of a partial
    # step; these widths give even and odd step counts, no unrolled step at all, and windows
    # that end inside x
    torch.manual_seed(in_features + batch)
    w = sparse_weight(23, in_features, 0.3)
    x, bias = torch.randn(batch, in_features), torch.randn(23)
    for n, m in [(2, 4), (1, 2), (1, 4), (4, 8), (2, 8), (1, 8)]:
        wn = w * sp.masks.n_m(w.abs(), n, m)
        for dtype in DTYPES:
            wd, xd, bd = wn.to(dtype), x.to(dtype), bias.to(dtype)
            packed = sp.NMWeight.from_dense(wd, n, m)
            assert_matches(packed.linear(xd, bd), reference(xd, wd, bd), dtype)


@pytest.mark.parametrize("batch", [1, 8, 9, 16, 24, 32, 40, 70, 161])
@pytest.mark.parametrize("block", [(16, 16), (32, 32), (13, 16), (24, 20), (8, 8), (6, 40),
                                   (7, 3), (48, 16), (24, 8)])
def test_bsr_register_passes_match_float64(isa, block, batch):
    # the batched BSR bodies (batched.h): register passes of 16/8 (AVX-512) or 8/6 (AVX2)
    # rows, then 8/4/2/1, over whole block rows or (blocks taller than a pass, AVX2: at
    # least 16 wide) block by block; on AVX2 the 6- and 4-row passes take a 32-lane chunk
    # (batch >= 17) as two 16-lane halves. Batch 1 (bsr_batch1.h): passes of 32, 16, 8, 4, 2
    # and 1 rows. 45 output rows (61 for 48-row blocks) leave a ragged edge block row.
    torch.manual_seed(batch * 100 + block[0])
    w = sparse_weight(61 if block[0] > 32 else 45, 70, 0.5)
    w = w * sp.masks.block(w.abs(), 0.5, block)
    x, bias = torch.randn(batch, 70), torch.randn(w.shape[0])
    for dtype in DTYPES:
        wd, xd, bd = w.to(dtype), x.to(dtype), bias.to(dtype)
        packed = sp.BSRWeight.from_dense(wd, block)
        assert_matches(packed.linear(xd, bd), reference(xd, wd, bd), dtype)


@pytest.mark.parametrize("batch", [1, 5, 17, 40, 161])
def test_bf16_outputs_round_to_nearest_even(isa, batch):
    # y = 1 * x + bias with x and bias chosen so that the fp32 sum falls exactly halfway
    # between two bf16 values (ties go to the even one), just above halfway, past the
    # largest bf16 (inf), or is NaN (from the bias: x stays finite, as BSR blocks hold
    # explicit zeros and 0 * inf is NaN): every kernel's bf16 store (scalar and vectorized,
    # full and ragged 16- and 8-wide groups of outputs) must round as torch's conversion does
    specials = torch.tensor([1.0, 1 + 2**-7, -1.0, -(1 + 2**-7), 3e38, -3e38, 0.0,
                             2**-8]).to(torch.bfloat16)
    offsets = torch.tensor([2**-8, 1.5 * 2**-8, -(2**-8), 3e38, -3e38, 0.0, float("nan"),
                            float("inf")]).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(batch)
    x = specials[torch.randint(len(specials), (batch, 40), generator=gen)]
    bias = offsets[torch.randint(len(offsets), (40,), generator=gen)]
    expected = (x.float() + bias.float()).to(torch.bfloat16)
    for name, packed, _ in packings(torch.eye(40, dtype=torch.bfloat16), torch.bfloat16):
        got = packed.linear(x, bias)
        assert torch.equal(got.isnan(), expected.isnan()), name
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), name


def test_nm_path_override_is_checked(monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_NM", "fastest")
    w = sp.NMWeight.from_dense(torch.randn(16, 32) * sp.masks.n_m(torch.rand(16, 32), 2, 4), 2, 4)
    with pytest.raises(ValueError, match="SPARSEPRUNE_NM"):
        w.linear(torch.randn(20, 32))


@pytest.mark.parametrize("batch", [1, 3, 37, 150, 161, 162, 164])
def test_repeated_calls_and_thread_counts_are_bitwise_identical(isa, batch):
    # every output element is summed by one thread in a fixed order, so neither a second
    # call nor another thread count may change a single bit (162, 164: the batch split
    # between threads leaves a part of 2 or 4 rows, which must not take the small-batch
    # kernels that a whole batch of 2-4 takes)
    torch.manual_seed(3)
    w = sparse_weight(257, 300, 0.3)
    x, bias = torch.randn(batch, 300), torch.randn(257)
    threads = torch.get_num_threads()
    try:
        for _, packed, _ in packings(w, torch.float32):
            first = packed.linear(x, bias)
            assert torch.equal(packed.linear(x, bias), first)
            torch.set_num_threads(1)
            assert torch.equal(packed.linear(x, bias), first)
            torch.set_num_threads(max(2, threads))
    finally:
        torch.set_num_threads(threads)


def test_wide_csr_with_int32_indices(isa):
    w = sparse_weight(9, 70001, 0.01)
    x = torch.randn(3, 70001)
    packed = sp.CSRWeight.from_dense(w)
    assert packed.col_indices.dtype == torch.int32
    assert_matches(packed.linear(x), reference(x, w), torch.float32)


@pytest.mark.parametrize("in_f", [255, 256, 257, 600, 1000])
@pytest.mark.parametrize("batch", [1, 5, 16, 33, 161])
@pytest.mark.parametrize("dtype", DTYPES)
def test_8bit_csr_over_segments(isa, in_f, batch, dtype):
    # several 256-column segments, the last one ragged or full, whole segments empty in
    # some rows (columns 256-511 zeroed in rows 0-9), one dense row, an all-zero row
    gen = torch.Generator().manual_seed(in_f * 1000 + batch)
    w = sparse_weight(70, in_f, 0.15, dtype=dtype, gen=gen)
    w[:10, 256:512] = 0
    w[11] = torch.randn(in_f, generator=gen).to(dtype)
    w[12] = 0
    packed = sp.CSRWeight.from_dense(w, index_bits=8)
    assert packed.index_bits == 8 and packed.segments == -(-in_f // 256)
    x, bias = torch.randn(batch, in_f, generator=gen).to(dtype), torch.randn(70).to(dtype)
    assert_matches(packed.linear(x, bias), reference(x, w, bias), dtype)
    y = packed.linear(x, bias)
    assert torch.equal(packed.linear(x, bias), y)  # repeated calls: bitwise the same


@pytest.mark.parametrize("batch", [1, 2, 17])
def test_8bit_csr_many_segment_starts_per_vector(isa, batch):
    # rows so sparse that one vector of 16 entries spans many 256-column segments (the
    # batch-1 AVX-512 gather handles two segment starts per vector without a loop, more in
    # a fallback loop), empty segments between kept ones, and full segments around them
    gen = torch.Generator().manual_seed(batch)
    w = torch.zeros(8, 4096)
    w[0, ::256] = 1.0                                   # one entry in each of 16 segments
    w[1, 255::256] = 2.0                                # the last column of each segment
    w[2, [0, 1300, 1301, 4095]] = 3.0                   # segments 0, 5 and 15 only
    w[3, 512:1024] = torch.randn(512, generator=gen)    # two full segments
    w[3, [3, 2000]] = 1.5
    w[4, ::97] = torch.randn(43, generator=gen)         # ~2-3 entries per segment
    w[6] = torch.randn(4096, generator=gen) * (torch.rand(4096, generator=gen) < 0.02)
    w[7, 4000:] = 1.0                                   # the ragged end of the last segment
    packed = sp.CSRWeight.from_dense(w, index_bits=8)
    x = torch.randn(batch, 4096, generator=gen)
    assert_matches(packed.linear(x), reference(x, w), torch.float32)
    narrow = w[:, :3000].contiguous()  # a ragged last segment (3000 = 11 * 256 + 184)
    packed = sp.CSRWeight.from_dense(narrow, index_bits=8)
    assert_matches(packed.linear(x[:, :3000]), reference(x[:, :3000], narrow), torch.float32)


@pytest.mark.parametrize("in_f", [600, 1100])
@pytest.mark.parametrize("batch", [9, 16, 33, 161])
@pytest.mark.parametrize("dtype", DTYPES)
def test_8bit_csr_dense_enough_for_segment_major(isa, in_f, batch, dtype):
    # >= 64 entries per (row, segment) on average and activation chunks past L1: the
    # kernels go segment by segment over blocks of 32 rows (csr_rows.h; AVX2 from 16 lanes,
    # AVX-512 from 32: batch 33 and 161); 70 rows = two
    # full blocks and a ragged one, segments empty in some rows, an all-zero row, a ragged
    # last segment (1100 = 4 * 256 + 76)
    gen = torch.Generator().manual_seed(in_f + batch)
    w = sparse_weight(70, in_f, 0.7, dtype=dtype, gen=gen, zero_rows=False)
    w[:5, 256:512] = 0
    w[40] = 0
    packed = sp.CSRWeight.from_dense(w, index_bits=8)
    x, bias = torch.randn(batch, in_f, generator=gen).to(dtype), torch.randn(70).to(dtype)
    y = packed.linear(x, bias)
    assert_matches(y, reference(x, w, bias), dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the rows split otherwise: the same bits
        assert torch.equal(packed.linear(x, bias), y)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("index_bits", [8, 16])
@pytest.mark.parametrize("batch", [5, 9, 16, 17, 32, 40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_csr_every_entry_count_at_widths_16_and_32(isa, index_bits, batch, dtype):
    # From batch 9 the kernels take eight entries per step (values broadcast in registers),
    # then pairs, then an odd last one (AVX-512 also at batch 2-8 on layers of <= 1536
    # inputs: eight, then fours, then single ones): every count from 0 to 40 per row (8-bit:
    # per row and segment), in rows dense enough for the segment-major walk and sparse ones
    gen = torch.Generator().manual_seed(index_bits * 100 + batch)
    in_f = 700 if index_bits == 8 else 1500
    w = torch.zeros(82, in_f)
    for r in range(82):
        count = r % 41
        for s0 in range(0, in_f, 256) if index_bits == 8 else [0]:
            width = min(256, in_f - s0) if index_bits == 8 else in_f
            cols = torch.randperm(width, generator=gen)[:count] + s0
            w[r, cols] = torch.randn(len(cols), generator=gen)
    w[41:] += torch.randn(41, in_f, generator=gen) * (torch.rand(41, in_f, generator=gen) < 0.5)
    w = w.to(dtype)
    packed = sp.CSRWeight.from_dense(w, index_bits=8 if index_bits == 8 else None)
    assert packed.col_indices.dtype == (torch.uint8 if index_bits == 8 else torch.uint16)
    x, bias = torch.randn(batch, in_f, generator=gen).to(dtype), torch.randn(82).to(dtype)
    y = packed.linear(x, bias)
    assert_matches(y, reference(x, w, bias), dtype)
    assert torch.equal(packed.linear(x, bias), y)


@pytest.mark.parametrize("batch", [9, 16, 33, 161])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_column_tiles(isa, batch, dtype, monkeypatch):
    # N:M with a row's activations past L1 takes the AVX2 batched body's column tiles
    # (spmm_nm_avx2.cpp): 2:4, 4:8 and 1:2 from 16 lanes, 1:4 and 2:8 from 64 KB of them
    # (16 lanes here; at 8 lanes see test_nm_column_tiles_8_lanes); 1101 columns end in a
    # ragged group; 70 rows = 2 blocks + 6
    monkeypatch.setenv("SPARSEPRUNE_NM", "batched")
    gen = torch.Generator().manual_seed(batch)
    w = sparse_weight(70, 1101, 0.8, gen=gen)
    x, bias = torch.randn(batch, 1101, generator=gen), torch.randn(70)
    threads = torch.get_num_threads()
    for n, m in [(2, 4), (4, 8), (1, 2), (1, 4), (2, 8)]:
        wn = (w * sp.masks.n_m(w.abs(), n, m)).to(dtype)
        packed = sp.NMWeight.from_dense(wn, n, m)
        xd, bd = x.to(dtype), bias.to(dtype)
        y = packed.linear(xd, bd)
        assert_matches(y, reference(xd, wn, bd), dtype)
        try:
            torch.set_num_threads(1)
            assert torch.equal(packed.linear(xd, bd), y)
        finally:
            torch.set_num_threads(threads)


def test_8bit_csr_opcheck():
    torch.manual_seed(3)
    w = sparse_weight(9, 600, 0.2)
    csr = sp.CSRWeight.from_dense(w, index_bits=8)
    for grad in (False, True):
        x = torch.randn(2, 3, 600, requires_grad=grad)
        values = csr.values.detach().clone().requires_grad_(grad)
        torch.library.opcheck(torch.ops.sparseprune.linear_csr.default,
                              (x, csr.row_offsets, csr.col_indices, values, None, 9))


def test_8bit_csr_raw_op_checks_offsets_length():
    csr = sp.CSRWeight.from_dense(sparse_weight(4, 600, 0.3), index_bits=8)
    x = torch.randn(2, 600)
    with pytest.raises(ValueError, match="row_offsets"):
        torch.ops.sparseprune.linear_csr(x, csr.row_offsets[:5].contiguous(), csr.col_indices,
                                         csr.values, None, 4)
    # the same offsets read as one run per row do not fit 16-bit indices either
    with pytest.raises(ValueError, match="row_offsets"):
        torch.ops.sparseprune.linear_csr(x, csr.row_offsets, csr.col_indices.to(torch.uint16),
                                         csr.values, None, 4)


def test_non_contiguous_input_is_handled(isa):
    w = sparse_weight(12, 20, 0.5)
    x = torch.randn(20, 6).t()  # [6, 20], not contiguous
    assert not x.is_contiguous()
    for _, packed, dense in packings(w, torch.float32):
        assert_matches(packed.linear(x), reference(x, dense), torch.float32)


def test_all_zero_and_empty_weights(isa):
    for out_f, in_f in [(5, 8), (0, 8), (5, 0)]:
        w = torch.zeros(out_f, in_f)
        x, bias = torch.randn(3, in_f), torch.randn(out_f)
        for name, packed, dense in packings(w, torch.float32):
            assert_matches(packed.linear(x, bias), reference(x, dense, bias), torch.float32)


def test_results_do_not_depend_on_isa():
    torch.manual_seed(0)
    w = sparse_weight(40, 90, 0.3)
    x = torch.randn(7, 90)
    packed = sp.CSRWeight.from_dense(w)
    outs = {}
    for isa in sp.available_isas():
        with sp.use_isa(isa):
            outs[isa] = packed.linear(x)
    for y in outs.values():
        torch.testing.assert_close(y, outs["ref"], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- opcheck, compile


def op_calls(requires_grad):
    """(op, args) for each op, with x, values and bias requiring grad as asked."""
    torch.manual_seed(0)
    w = sparse_weight(11, 13, 0.5)
    wn = w * sp.masks.n_m(w.abs(), 2, 4)
    csr, bsr = sp.CSRWeight.from_dense(w), sp.BSRWeight.from_dense(w, (4, 4))
    nm = sp.NMWeight.from_dense(wn, 2, 4)

    def leaf(t):
        return t.detach().clone().requires_grad_(requires_grad)

    x, bias = leaf(torch.randn(2, 3, 13)), leaf(torch.randn(11))
    ops = torch.ops.sparseprune
    return [
        (ops.linear_csr.default, (x, csr.row_offsets, csr.col_indices, leaf(csr.values), bias, 11)),
        (ops.linear_bsr.default,
         (x, bsr.block_row_offsets, bsr.block_col_indices, leaf(bsr.blocks), bias, 11)),
        (ops.linear_nm.default, (x, leaf(nm.values), nm.metadata, bias, 2, 4)),
        (ops.linear_csr.default, (x, csr.row_offsets, csr.col_indices, leaf(csr.values), None, 11)),
    ]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("index", range(4))
def test_opcheck(index, requires_grad):
    op, args = op_calls(requires_grad)[index]
    torch.library.opcheck(op, args)


PACKERS = [
    ("csr", lambda w: sp.CSRWeight.from_dense(w)),
    ("csr8", lambda w: sp.CSRWeight.from_dense(w, index_bits=8)),
    ("bsr", lambda w: sp.BSRWeight.from_dense(w, (8, 8))),
    ("nm", lambda w: sp.NMWeight.from_dense(w * sp.masks.n_m(w.abs(), 2, 4), 2, 4)),
]


@pytest.mark.parametrize("name,make", PACKERS)
def test_gradients_match_dense(name, make):
    torch.manual_seed(1)
    packed = make(sparse_weight(20, 30, 0.5))
    dense = packed.to_dense()
    x = torch.randn(4, 30, requires_grad=True)
    bias = torch.randn(20, requires_grad=True)
    values = packed.values_tensor.clone().requires_grad_(True)
    packed = packed.with_values(values)
    packed.linear(x, bias).pow(2).sum().backward()
    gx, gb, gv = x.grad, bias.grad, values.grad
    x.grad = bias.grad = None
    w = dense.clone().requires_grad_(True)
    F.linear(x, w, bias).pow(2).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gb, bias.grad)
    # no bias, x without a gradient: only the values' gradient, the same as with them
    values.grad = None
    packed.linear(x.detach()).pow(2).sum().backward()
    w2 = dense.clone().requires_grad_(True)
    F.linear(x.detach(), w2).pow(2).sum().backward()
    stored2 = packed.with_values(torch.ones_like(values)).to_dense() != 0
    torch.testing.assert_close(packed.with_values(values.grad).to_dense(), w2.grad * stored2)
    # a stored tensor changed in place after forward: autograd refuses the backward
    y = packed.linear(x)
    with torch.no_grad():
        values.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    with torch.no_grad():
        values.div_(2)
    # every stored entry (zeros inside blocks and N:M filler slots too) gets dL/dW at
    # its position
    stored = packed.with_values(torch.ones_like(gv)).to_dense() != 0
    torch.testing.assert_close(packed.with_values(gv).to_dense(), w.grad * stored)


@pytest.mark.parametrize("name,make", PACKERS)
def test_gradient_of_gradient_matches_dense(name, make):
    # the backward ops are CompositeImplicitAutograd: their gradients come from the torch
    # ops of their formulas (d/dvalues and d/dbias of |dL/dx|^2 for L = sum(y^2))
    torch.manual_seed(3)
    packed = make(sparse_weight(12, 30, 0.5))
    x = torch.randn(5, 30, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    values = packed.values_tensor.clone().requires_grad_(True)
    gx, = torch.autograd.grad(packed.with_values(values).linear(x, bias).pow(2).sum(), x,
                              create_graph=True)
    gv, gb = torch.autograd.grad(gx.pow(2).sum(), (values, bias))
    w = packed.to_dense().requires_grad_(True)
    gx_ref, = torch.autograd.grad(F.linear(x, w, bias).pow(2).sum(), x, create_graph=True)
    gw_ref, gb_ref = torch.autograd.grad(gx_ref.pow(2).sum(), (w, bias))
    # second derivatives of size ~10-100 summed in different orders: fp32 rounding
    tol = dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gx, gx_ref, **tol)
    torch.testing.assert_close(gb, gb_ref, **tol)
    stored = packed.with_values(torch.ones_like(gv)).to_dense() != 0
    torch.testing.assert_close(packed.with_values(gv).to_dense(), gw_ref * stored, **tol)


@pytest.mark.parametrize("name,make", PACKERS)
def test_calls_without_gradients_run_no_python(name, make):
    # the autograd kernels are C++ (csrc/autograd.cpp): under no_grad, with values that
    # require grad as a layer's nn.Parameter does, the op runs no Python function past
    # torch's own OpOverload.__call__ (the Python autograd kernel of register_autograd
    # cost ~16 us per call); with gradients on, it records a node and no Python either
    import sys
    packed = make(sparse_weight(12, 30, 0.5))
    values = torch.nn.Parameter(packed.values_tensor.clone())
    packed = packed.with_values(values)
    fields = [getattr(packed, f) for f in packed._tensor_fields]
    op = {"csr": torch.ops.sparseprune.linear_csr, "csr8": torch.ops.sparseprune.linear_csr,
          "bsr": torch.ops.sparseprune.linear_bsr}.get(name)
    args = ((torch.randn(2, 30), *fields, None, 12) if op is not None else
            (torch.randn(2, 30), *fields, None, 2, 4))
    op = op or torch.ops.sparseprune.linear_nm
    called = []

    def profile(frame, event, arg):
        if event == "call":
            called.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            op.default(*args)  # warm: first calls may import
            called.clear()
            sys.setprofile(profile)
            try:
                y = op.default(*args)
            finally:
                sys.setprofile(None)
        assert [c for c in called if not c.endswith("_ops.py:__call__")] == [], called
        assert y.requires_grad == grad


class _SparseMLP(torch.nn.Module):
    def __init__(self, packed, bias):
        super().__init__()
        self.packed, self.bias = packed, bias

    def forward(self, x):
        return torch.relu(self.packed.linear(x, self.bias)) * 2 + 1


@pytest.mark.parametrize("fmt", ["csr", "csr8", "bsr", "nm"])
def test_torch_compile_fullgraph_matches_eager(fmt):
    torch.manual_seed(2)
    w = sparse_weight(24, 40, 0.3)
    packed = {"csr": lambda: sp.CSRWeight.from_dense(w),
              "csr8": lambda: sp.CSRWeight.from_dense(w, index_bits=8),
              "bsr": lambda: sp.BSRWeight.from_dense(w, (4, 4)),
              "nm": lambda: sp.NMWeight.from_dense(w * sp.masks.n_m(w.abs(), 1, 4), 1, 4)}[fmt]()
    model = _SparseMLP(packed, torch.randn(24))
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    for batch in (3, 5):
        x = torch.randn(batch, 40)
        torch.testing.assert_close(compiled(x), model(x))


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def csr():
    return sp.CSRWeight.from_dense(sparse_weight(6, 10, 0.5))


def test_wrong_in_features(csr):
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 10\]"):
        csr.linear(torch.randn(3, 9))


def test_wrong_dtype(csr):
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        csr.linear(torch.randn(3, 10, dtype=torch.float64))
    with pytest.raises(TypeError, match="BFloat16 but x is Float|bfloat16"):
        csr.to(torch.bfloat16).linear(torch.randn(3, 10))


def test_wrong_bias(csr):
    with pytest.raises(ValueError, match=r"bias must have shape \[6\]"):
        csr.linear(torch.randn(3, 10), torch.randn(5))
    with pytest.raises(TypeError, match="bias"):
        csr.linear(torch.randn(3, 10), torch.randn(6, dtype=torch.float64))


def test_not_a_tensor(csr):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        csr.linear([[1.0] * 10])
    with pytest.raises(TypeError, match="packed weight"):
        sp.ops.linear(torch.randn(2, 10), torch.randn(6, 10))


def test_scalar_input(csr):
    with pytest.raises(ValueError):
        csr.linear(torch.tensor(1.0))


def test_raw_op_checks_sizes(csr):
    ops = torch.ops.sparseprune
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="row_offsets must be 1-D with 6 elements"):
        ops.linear_csr(x, csr.row_offsets, csr.col_indices, csr.values, None, 5)
    with pytest.raises(ValueError, match="col_indices must be 1-D"):
        ops.linear_csr(x, csr.row_offsets, csr.col_indices[:-1], csr.values, None, 6)
    with pytest.raises(TypeError, match="col_indices must be uint16, int32 or uint8"):
        ops.linear_csr(x, csr.row_offsets, csr.col_indices.long(), csr.values, None, 6)
    bad_end = csr.row_offsets.clone()
    bad_end[-1] -= 1
    with pytest.raises(ValueError, match="row_offsets must start at 0 and end at"):
        ops.linear_csr(x, bad_end, csr.col_indices, csr.values, None, 6)
    with pytest.raises(ValueError, match="need 1 <= n < m <= 32"):
        ops.linear_nm(x, torch.zeros(6, 10), torch.zeros(6, 10, dtype=torch.uint8), None, 2, 33)
    with pytest.raises(ValueError, match="values must have 6 slots"):
        ops.linear_nm(x, torch.zeros(6, 5), torch.zeros(6, 2, dtype=torch.uint8), None, 2, 4)
    with pytest.raises(ValueError, match="metadata must have shape"):
        ops.linear_nm(x, torch.zeros(6, 6), torch.zeros(6, 1, dtype=torch.uint8), None, 2, 4)
    with pytest.raises(ValueError, match="blocks must have shape"):
        ops.linear_bsr(x, torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.int32),
                       torch.zeros(0, 4), None, 6)
