import pytest
import torch

from sparseprune import masks


def test_unstructured_exact_count_and_ties():
    scores = torch.tensor([[1.0, 1.0, 1.0, 2.0], [0.5, 3.0, 1.0, 1.0]])
    keep = masks.unstructured(scores, 0.5)
    assert keep.sum() == 4
    # the lowest (0.5) goes first, then the 1.0s in flat order
    assert keep.tolist() == [[False, False, False, True], [False, True, True, True]]


@pytest.mark.parametrize("shape", [(7, 13), (4, 3, 3, 3)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 1.0])
def test_unstructured_counts(shape, sparsity):
    scores = torch.rand(shape)
    keep = masks.unstructured(scores, sparsity)
    assert keep.shape == scores.shape and keep.dtype == torch.bool
    assert (~keep).sum() == round(sparsity * scores.numel())


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 8), (5, 32)])
@pytest.mark.parametrize("cols", [1, 3, 8, 13, 70])
def test_n_m_groups(n, m, cols):
    scores = torch.rand(6, cols)
    keep = masks.n_m(scores, n, m)
    for g in range(0, cols, m):
        group = keep[:, g:g + m]
        assert (group.sum(1) == min(n, group.shape[1])).all()
        # the kept ones are the largest of their group
        kept_min = torch.where(group, scores[:, g:g + m], torch.inf).min(1).values
        dropped_max = torch.where(group, -torch.inf, scores[:, g:g + m]).max(1).values
        assert (kept_min >= dropped_max).all()


def test_n_m_ties_keep_lower_index():
    keep = masks.n_m(torch.ones(1, 4), 2, 4)
    assert keep.tolist() == [[True, True, False, False]]


def test_block_ragged_edges():
    scores = torch.rand(10, 7)
    keep = masks.block(scores, 0.5, block=(4, 3))  # 3x3 blocks, ragged at both edges
    nblocks = 9
    kept_blocks = 0
    for i in range(0, 10, 4):
        for j in range(0, 7, 3):
            tile = keep[i:i + 4, j:j + 3]
            assert tile.all() or not tile.any()
            kept_blocks += bool(tile.all())
    assert kept_blocks == nblocks - round(0.5 * nblocks)


def test_channel_rows_and_columns():
    scores = torch.tensor([[1.0, 0.0], [3.0, 0.1], [0.2, 0.2]])
    assert masks.channel(scores, 1 / 3, dim=0).tolist() == [[True, True], [True, True],
                                                             [False, False]]
    assert masks.channel(scores, 0.5, dim=1).tolist() == [[True, False]] * 3


@pytest.mark.parametrize("call,err", [
    (lambda: masks.unstructured(torch.rand(3, 3), 1.5), ValueError),
    (lambda: masks.unstructured(torch.rand(3), 0.5), ValueError),
    (lambda: masks.unstructured([[1.0]], 0.5), TypeError),
    (lambda: masks.n_m(torch.rand(3, 4), 4, 4), ValueError),
    (lambda: masks.n_m(torch.rand(3, 4), 2, 64), ValueError),
    (lambda: masks.block(torch.rand(3, 4), 0.5, block=(0, 2)), ValueError),
    (lambda: masks.channel(torch.rand(3, 4), 0.5, dim=2), ValueError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
