import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseprune import masks

PROPS = settings(max_examples=60, deadline=None)


@st.composite
def score_tensors(draw, max_rows=12, max_cols=40, min_cols=1):
    """2-D scores; integer values from a small range so ties are common."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(min_cols, max_cols))
    tie_heavy = draw(st.booleans())
    elems = (st.integers(-3, 3).map(float) if tie_heavy
             else st.floats(-1e3, 1e3, allow_nan=False, width=32))
    values = draw(st.lists(elems, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


sparsities = st.floats(0.0, 0.999, exclude_max=False)


def assert_order(keep, scores):
    """Every kept score >= every pruned one; at equal scores the lower index is pruned."""
    keep, scores = keep.reshape(-1), scores.reshape(-1)
    if keep.all() or not keep.any():
        return
    kept_min = scores[keep].min()
    pruned_max = scores[~keep].max()
    assert kept_min >= pruned_max
    if kept_min == pruned_max:  # a tie straddles the cut: pruned ones come first
        tied = (scores == kept_min).nonzero().reshape(-1)
        assert (~keep[tied]).nonzero().max() < keep[tied].nonzero().min()


# ---------------------------------------------------------------------------- unstructured
@PROPS
@given(score_tensors(), sparsities)
def test_unstructured_properties(scores, sparsity):
    keep = masks.unstructured(scores, sparsity)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    assert int((~keep).sum()) == round(sparsity * scores.numel())
    assert_order(keep, scores)


@PROPS
@given(score_tensors(), sparsities)
def test_unstructured_per_row_properties(scores, sparsity):
    keep = masks.unstructured(scores, sparsity, per_row=True)
    per_row = round(sparsity * scores.shape[1])
    assert ((~keep).sum(1) == per_row).all()
    for r in range(scores.shape[0]):
        assert_order(keep[r], scores[r])


def test_unstructured_ties_prune_lower_index_first():
    scores = torch.tensor([[1.0, 1.0, 1.0, 2.0], [0.5, 3.0, 1.0, 1.0]])
    keep = masks.unstructured(scores, 0.5)
    assert keep.tolist() == [[False, False, False, True], [False, True, True, True]]


def test_conv_weights_are_viewed_as_2d():
    scores = torch.rand(4, 3, 3, 3)
    flat = scores.reshape(4, 27)
    assert torch.equal(masks.unstructured(scores, 0.6), masks.unstructured(flat, 0.6).view_as(scores))
    assert torch.equal(masks.n_m(scores, 2, 4), masks.n_m(flat, 2, 4).view_as(scores))
    assert torch.equal(masks.block(scores, 0.5, block=(2, 9)),
                       masks.block(flat, 0.5, block=(2, 9)).view_as(scores))
    assert torch.equal(masks.channel(scores, 0.5), masks.channel(flat, 0.5).view_as(scores))


# ---------------------------------------------------------------------------- N:M
@PROPS
@given(score_tensors(max_cols=70), st.integers(2, 32), st.data())
def test_n_m_properties(scores, m, data):
    n = data.draw(st.integers(1, m - 1))
    keep = masks.n_m(scores, n, m)
    cols = scores.shape[1]
    for g in range(0, cols, m):
        group, sc = keep[:, g:g + m], scores[:, g:g + m]
        # full groups keep exactly n, a trailing partial group at most n
        assert (group.sum(1) == min(n, group.shape[1])).all()
        for r in range(scores.shape[0]):
            if group[r].all():
                continue
            # the kept are the n largest; at equal scores the lower index is kept
            assert sc[r][group[r]].min() >= sc[r][~group[r]].max()
            tie = sc[r][group[r]].min()
            if tie == sc[r][~group[r]].max():
                tied = (sc[r] == tie).nonzero().reshape(-1)
                assert group[r][tied].nonzero().max() < (~group[r][tied]).nonzero().min()


def apex_m4n2_1d(weight):
    """Independent 2:4: like Apex ASP's mn_1d_best, try all 6 patterns of 2 ones in 4 and
    keep the one with the largest sum of |w| per group."""
    patterns = torch.tensor([p for p in itertools.product([0, 1], repeat=4) if sum(p) == 2],
                            dtype=weight.dtype)
    groups = weight.abs().reshape(-1, 4)
    best = (groups @ patterns.T).argmax(dim=1)
    return patterns[best].bool().reshape(weight.shape)


@pytest.mark.parametrize("shape", [(16, 64), (7, 12), (3, 4, 2, 2)])
def test_n_m_2_4_matches_apex_style_enumeration(shape):
    torch.manual_seed(1)
    w = torch.randn(shape)  # continuous values: no ties, so the 2-largest mask is unique
    assert torch.equal(masks.n_m(w.abs(), 2, 4), apex_m4n2_1d(w))


def test_n_m_2_4_matches_torch_ao_weight_norm_sparsifier():
    sparsifier_mod = pytest.importorskip("torch.ao.pruning")
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(64, 24))
    w = model[0].weight.detach().clone()
    sparsifier = sparsifier_mod.WeightNormSparsifier(
        sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    theirs = model[0].parametrizations.weight[0].mask.bool()
    assert torch.equal(masks.n_m(w.abs(), 2, 4), theirs)


def test_n_m_ties_keep_lower_index():
    assert masks.n_m(torch.ones(1, 4), 2, 4).tolist() == [[True, True, False, False]]


# ---------------------------------------------------------------------------- block
@PROPS
@given(score_tensors(max_rows=20), st.data(), sparsities)
def test_block_properties(scores, data, sparsity):
    rows, cols = scores.shape
    bh = data.draw(st.integers(1, rows))
    bw = data.draw(st.integers(1, cols))
    keep = masks.block(scores, sparsity, block=(bh, bw))
    tiles, sums, kept = [], [], []
    for i in range(0, rows, bh):
        for j in range(0, cols, bw):
            tile = keep[i:i + bh, j:j + bw]
            assert tile.all() or not tile.any()  # a union of whole blocks
            sums.append(float(scores[i:i + bh, j:j + bw].double().abs().sum()))
            kept.append(bool(tile.all()))
    nblocks = math.ceil(rows / bh) * math.ceil(cols / bw)
    assert len(kept) == nblocks
    assert kept.count(False) == round(sparsity * nblocks)
    assert_order(torch.tensor(kept), torch.tensor(sums, dtype=torch.float64))


def test_block_ragged_edges_example():
    scores = torch.zeros(10, 7)
    scores[8:, 6:] = 5.0  # the 2x1 ragged corner block is the most important
    keep = masks.block(scores, 0.8, block=(4, 3))  # 3x3 grid of blocks, prune 7
    # kept: the corner, and of the all-zero blocks the one with the highest index
    # (lower indices are pruned first), i.e. rows 8:10, cols 3:6
    expected = torch.zeros(10, 7, dtype=torch.bool)
    expected[8:, 3:] = True
    assert torch.equal(keep, expected)


# ---------------------------------------------------------------------------- channel
@PROPS
@given(score_tensors(), st.sampled_from([0, 1]), sparsities)
def test_channel_properties(scores, dim, sparsity):
    keep = masks.channel(scores, sparsity, dim=dim)
    units = keep.all(dim=1 - dim)
    assert torch.equal(keep, units[:, None].expand_as(keep) if dim == 0
                       else units[None, :].expand_as(keep))
    assert int((~units).sum()) == round(sparsity * units.numel())
    assert_order(units, torch.linalg.vector_norm(scores.double(), dim=1 - dim))


def test_channel_rows_and_columns_example():
    scores = torch.tensor([[1.0, 0.0], [3.0, 0.1], [0.2, 0.2]])
    assert masks.channel(scores, 1 / 3, dim=0).tolist() == [[True, True], [True, True],
                                                             [False, False]]
    assert masks.channel(scores, 0.5, dim=1).tolist() == [[True, False]] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64])
def test_masks_keep_shape_and_device_for_any_real_dtype(dtype):
    s = (torch.rand(6, 8) * 100).to(dtype)
    for keep in (masks.unstructured(s, 0.5), masks.n_m(s, 1, 4), masks.block(s, 0.5, block=(2, 2)),
                 masks.channel(s, 0.5)):
        assert keep.device == s.device and keep.shape == s.shape and keep.dtype == torch.bool


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,err,match", [
    (lambda: masks.unstructured(torch.rand(3, 3), 1.0), ValueError, r"\[0, 1\)"),
    (lambda: masks.unstructured(torch.rand(3, 3), 1.5), ValueError, r"\[0, 1\)"),
    (lambda: masks.unstructured(torch.rand(3, 3), -0.1), ValueError, r"\[0, 1\)"),
    (lambda: masks.block(torch.rand(3, 3), 1.0, block=(1, 1)), ValueError, r"\[0, 1\)"),
    (lambda: masks.channel(torch.rand(3, 3), 1.0), ValueError, r"\[0, 1\)"),
    (lambda: masks.unstructured(torch.rand(3, 3), "0.5"), TypeError, "number"),
    (lambda: masks.unstructured(torch.rand(3), 0.5), ValueError, "2-D"),
    (lambda: masks.unstructured([[1.0]], 0.5), TypeError, "torch.Tensor"),
    (lambda: masks.unstructured(torch.tensor([[float("nan"), 1.0]]), 0.5), ValueError, "NaN"),
    (lambda: masks.n_m(torch.rand(3, 4), 4, 4), ValueError, "n < m"),
    (lambda: masks.n_m(torch.rand(3, 4), 5, 4), ValueError, "n < m"),
    (lambda: masks.n_m(torch.rand(3, 4), 0, 4), ValueError, "1 <= n"),
    (lambda: masks.n_m(torch.rand(3, 64), 2, 64), ValueError, "<= 32"),
    (lambda: masks.n_m(torch.rand(3, 4), 2.0, 4), TypeError, "int"),
    (lambda: masks.block(torch.rand(3, 4), 0.5, block=(0, 2)), ValueError, "positive"),
    (lambda: masks.block(torch.rand(3, 4), 0.5, block=(4, 2)), ValueError, "larger than"),
    (lambda: masks.block(torch.rand(3, 4), 0.5, block=(1, 5)), ValueError, "larger than"),
    (lambda: masks.channel(torch.rand(3, 4), 0.5, dim=2), ValueError, "dim"),
])
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, float("inf"), float("-inf"),
                                 float("nan"), 1e-300, 3.0]), min_size=1, max_size=40),
       st.integers(0, 45), st.booleans())
def test_prune_lowest_is_a_stable_sort_prefix(values, count, as_float32):
    # the selection path must prune exactly what a stable sort's first `count` are
    scores = torch.tensor(values, dtype=torch.float32 if as_float32 else torch.float64)
    want = torch.ones(len(values), dtype=torch.bool)
    want[torch.sort(scores.double(), stable=True).indices[:count]] = False
    assert torch.equal(masks.prune_lowest(scores, count), want)


def test_prune_lowest_on_many_ties_and_random_scores():
    gen = torch.Generator().manual_seed(3)
    for n, count in ((196608, 150000), (1000, 1), (1000, 999), (7, 7)):
        for scores in (torch.randn(n, generator=gen, dtype=torch.float64),
                       torch.randint(0, 5, (n,), generator=gen).double()):
            want = torch.ones(n, dtype=torch.bool)
            want[torch.sort(scores, stable=True).indices[:count]] = False
            assert torch.equal(masks.prune_lowest(scores, count), want)
