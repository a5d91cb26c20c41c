import pytest
import torch
from torch import nn

import sparseprune as sp
from sparseprune import scores
from sparseprune.pruning.calibration import LayerStats, calibrate


def test_magnitude_is_abs():
    w = torch.tensor([[-2.0, 0.5], [0.0, -0.25]])
    assert torch.equal(scores.magnitude(w), w.abs())


def test_taylor_sums_absolute_products_over_batches():
    w = torch.tensor([[1.0, -2.0]])
    g1 = torch.tensor([[0.5, 0.5]])
    g2 = torch.tensor([[-0.5, 1.0]])
    # opposite gradients on w[0, 0] must not cancel
    assert torch.equal(scores.taylor(w, [g1, g2]), torch.tensor([[1.0, 3.0]]))
    assert torch.equal(scores.taylor(w, g1), torch.tensor([[0.5, 1.0]]))


def test_wanda_scales_columns_by_input_norm():
    w = torch.tensor([[1.0, -1.0, 2.0], [0.5, 3.0, -1.0]])
    norm = torch.tensor([2.0, 0.0, 1.0])
    assert torch.equal(scores.wanda(w, norm), torch.tensor([[2.0, 0.0, 2.0], [1.0, 0.0, 1.0]]))
    conv = torch.randn(4, 2, 3, 3)
    s = scores.wanda(conv, torch.rand(18))
    assert s.shape == conv.shape


@pytest.mark.parametrize("call,err,match", [
    (lambda: scores.magnitude(torch.rand(3)), ValueError, "2 dims"),
    (lambda: scores.magnitude([[1.0]]), TypeError, "Tensor"),
    (lambda: scores.taylor(torch.rand(2, 2), torch.rand(2, 3)), ValueError, "shape"),
    (lambda: scores.taylor(torch.rand(2, 2), []), ValueError, "at least one"),
    (lambda: scores.wanda(torch.rand(2, 3), torch.rand(4)), ValueError, "shape"),
    (lambda: scores.wanda(torch.rand(2, 3), -torch.ones(3)), ValueError, "non-negative"),
])
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


def _layer_stats(module, batches, **kw):
    model = nn.Sequential(module)
    stats = {}
    calibrate(model, {"0": module}, batches, stats, gradients=False, gram=False, **kw)
    return stats["0"]


def test_linear_input_norms_over_all_tokens():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    batches = [torch.randn(2, 4, 5), torch.randn(3, 5)]  # leading dims are tokens too
    stats = _layer_stats(lin, batches)
    tokens = torch.cat([b.reshape(-1, 5) for b in batches]).double()
    torch.testing.assert_close(stats.input_norm(3), tokens.norm(dim=0))
    assert stats.tokens == 11 and stats.batches == 2


@pytest.mark.parametrize("kw", [dict(padding=1, stride=2), dict(padding=0, dilation=2),
                                dict(padding=1, groups=2), dict(padding="same"),
                                dict(padding=1, padding_mode="reflect")])
def test_conv_input_norms_match_explicit_patches(kw):
    """The norms of the im2col columns, computed here patch by patch with plain loops."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **kw)
    x = torch.randn(2, 4, 7, 6)
    stats = _layer_stats(conv, [x])
    g = conv.groups
    cin = 4 // g
    kh, kw_ = conv.kernel_size
    d, s = conv.dilation, conv.stride
    pad = conv._reversed_padding_repeated_twice
    xp = torch.nn.functional.pad(x, pad, mode=conv.padding_mode if conv.padding_mode != "zeros"
                                 else "constant").double()
    out_h = (xp.shape[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    out_w = (xp.shape[3] - d[1] * (kw_ - 1) - 1) // s[1] + 1
    expected = torch.zeros(g, cin * kh * kw_, dtype=torch.float64)
    for grp in range(g):
        for c in range(cin):
            for i in range(kh):
                for j in range(kw_):
                    patch = xp[:, grp * cin + c,
                               i * d[0]: i * d[0] + s[0] * (out_h - 1) + 1: s[0],
                               j * d[1]: j * d[1] + s[1] * (out_w - 1) + 1: s[1]]
                    expected[grp, (c * kh + i) * kw_ + j] = patch.pow(2).sum()
    norm = stats.input_norm(6)
    if g == 1:
        torch.testing.assert_close(norm, expected[0].sqrt())
    else:
        torch.testing.assert_close(norm, expected.sqrt().repeat_interleave(6 // g, dim=0))
    # and a real forward agrees on the output size (the patch count)
    assert stats.tokens == 2 * conv(x).shape[2] * conv(x).shape[3]


class WithLoss(nn.Module):
    """A model whose forward(x, y) returns the loss: calibrate() uses a scalar output as is."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, y):
        return nn.functional.cross_entropy(self.net(x), y)


def test_taylor_calibration_matches_per_batch_autograd():
    torch.manual_seed(0)
    model = WithLoss(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)))
    data = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(3)]
    first = model.net[0]
    expected = torch.zeros_like(first.weight)
    for x, y in data:
        model.zero_grad()
        model(x, y).backward()
        expected += (first.weight * first.weight.grad).abs()
    model.zero_grad(set_to_none=True)
    pruner = sp.Pruner(model, sp.PruneConfig(criterion="taylor", sparsity=0.5))
    pruner.calibrate(data)  # tuples are fed as model(x, y)
    torch.testing.assert_close(pruner.layer_scores("net.0"), expected)
    assert first.weight.grad is None  # calibration leaves .grad alone
    # with an explicit loss_fn on a plain model: the same scores
    pruner2 = sp.Pruner(model.net, sp.PruneConfig(criterion="taylor", sparsity=0.5))
    labels = iter([y for _, y in data])
    pruner2.calibrate([x for x, _ in data],
                      loss_fn=lambda out, x: nn.functional.cross_entropy(out, next(labels)))
    torch.testing.assert_close(pruner2.layer_scores("0"), expected)


def test_wanda_prunes_small_weights_on_loud_inputs_less():
    """Column 0 has small weights but inputs 100x larger: Wanda keeps it, magnitude drops it."""
    lin = nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 1.0]] * 4))
    x = torch.tensor([[100.0, 1.0]] * 8)
    by_wanda = sp.Pruner(nn.Sequential(lin), sp.PruneConfig(criterion="wanda", sparsity=0.5))
    by_wanda.calibrate([x]).prune()
    assert lin.weight[:, 0].ne(0).all() and lin.weight[:, 1].eq(0).all()
    lin2 = nn.Linear(2, 4, bias=False)
    with torch.no_grad():
        lin2.weight.copy_(torch.tensor([[0.1, 1.0]] * 4))
    sp.Pruner(nn.Sequential(lin2), sp.PruneConfig(sparsity=0.5)).prune()
    assert lin2.weight[:, 0].eq(0).all() and lin2.weight[:, 1].ne(0).all()


def test_stats_without_inputs_raise():
    with pytest.raises(ValueError, match="no input"):
        LayerStats().input_norm(3)
