import pytest
import torch
from torch import nn

import sparseprune as sp
from sparseprune import masks
from sparseprune.pruning import parse_pattern, sparsegpt_prune


def problem(seed=0, n=1500, cin=96, cout=40):
    """Correlated inputs, where reconstruction has something to gain."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cin, cin, generator=gen) / cin ** 0.5 + torch.eye(cin)
    x = (torch.randn(n, cin, generator=gen) @ mix).double()
    w = torch.randn(cout, cin, generator=gen).double()
    return x, w


def rel_err(x, w, w_new):
    return float(((x @ (w - w_new).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def least_squares(x, w, keep):
    """The best any update can do with this mask: per row, refit kept weights to X w."""
    g = x.T @ x
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        k = keep[r]
        out[r, k] = torch.linalg.solve(g[k][:, k], g[k] @ w[r])
    return out


def test_identity_gram_is_magnitude_pruning_without_updates():
    _, w = problem()
    new_w, keep = sparsegpt_prune(w, 3.0 * torch.eye(96, dtype=torch.float64),
                                  parse_pattern("unstructured"), 0.5, blocksize=96)
    assert torch.equal(keep, masks.unstructured(w.abs(), 0.5))
    torch.testing.assert_close(new_w, w * keep)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.6), ("2:4", 0.5), ("1:4", 0.75),
                                              ("block:4x8", 0.5), ("channel:in", 0.25)])
def test_exact_pattern_and_better_than_masking_alone(pattern, sparsity):
    x, w = problem()
    new_w, keep = sparsegpt_prune(w, x.T @ x, parse_pattern(pattern), sparsity, blocksize=32)
    assert (new_w[~keep] == 0).all()
    if pattern == "unstructured":
        assert int((~keep).sum()) == round(sparsity * w.numel())  # exact over 3 blocks
    elif pattern in ("2:4", "1:4"):
        assert (keep.reshape(-1, 4).sum(1) == int(pattern[0])).all()
    elif pattern.startswith("block"):
        tiles = keep.reshape(10, 4, 12, 8)
        assert (tiles.all(dim=(1, 3)) | ~tiles.any(dim=(1, 3))).all()
    else:
        assert (keep.all(0) | ~keep.any(0)).all() and int((~keep.all(0)).sum()) == 24
    err = rel_err(x, w, new_w)
    assert err < 0.9 * rel_err(x, w, w * keep)  # the updates do real work
    assert err >= rel_err(x, w, least_squares(x, w, keep)) - 1e-9  # and cannot beat LS
    if pattern == "2:4":  # and the mask beats Wanda's for the same pattern
        wanda_keep = masks.n_m(w.abs() * x.norm(dim=0), 2, 4)
        assert err < rel_err(x, w, w * wanda_keep)


def test_dead_inputs_and_bad_gram():
    x, w = problem(cin=16, cout=8)
    x[:, 3] = 0  # an input that is always zero
    new_w, keep = sparsegpt_prune(w, x.T @ x, parse_pattern("unstructured"), 0.5)
    assert (new_w[:, 3] == 0).all() and torch.isfinite(new_w).all()
    with pytest.raises(ValueError, match="gram must be"):
        sparsegpt_prune(w, torch.eye(5, dtype=torch.float64), parse_pattern("2:4"), 0.5)


def test_pruner_with_sparsegpt_beats_magnitude_on_outputs():
    torch.manual_seed(0)
    mix = torch.randn(64, 64) / 8 + torch.eye(64)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    calib = [torch.randn(32, 64) @ mix for _ in range(8)]
    test = torch.randn(256, 64) @ mix
    with torch.no_grad():
        dense_out = model(test)
    outs = {}
    for crit in ("magnitude", "sparsegpt"):
        m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
        m.load_state_dict(model.state_dict())
        pruner = sp.Pruner(m, sp.PruneConfig(pattern="2:4", criterion=crit))
        if crit == "sparsegpt":
            pruner.calibrate(calib)
        pruner.prune()
        assert all(r.sparsity == 0.5 for r in pruner.report())
        assert (m[0].weight.reshape(-1, 4) != 0).sum(1).le(2).all()
        with torch.no_grad():
            outs[crit] = float((m(test) - dense_out).pow(2).mean())
    assert outs["sparsegpt"] < 0.7 * outs["magnitude"]


def test_pruner_sparsegpt_errors():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="calibrate"):
        sp.Pruner(model, sp.PruneConfig(sparsity=0.5, criterion="sparsegpt")).prune()
    with pytest.raises(ValueError, match="scope='layer'"):
        sp.PruneConfig(sparsity=0.5, criterion="sparsegpt", scope="global")
    conv = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="grouped"):
        sp.Pruner(conv, sp.PruneConfig(sparsity=0.5, criterion="sparsegpt")).calibrate(
            [torch.randn(1, 4, 5, 5)])


def test_sparsegpt_on_conv_uses_im2col_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    ref = nn.Conv2d(3, 8, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    batches = [torch.randn(4, 3, 10, 10) for _ in range(4)]
    sp.Pruner(conv, sp.PruneConfig(sparsity=0.5, criterion="sparsegpt")).calibrate(batches).prune()
    assert int((conv.weight == 0).sum()) == round(0.5 * conv.weight.numel())
    masked = nn.Conv2d(3, 8, 3, padding=1)
    masked.load_state_dict(ref.state_dict())
    with torch.no_grad():
        masked.weight.mul_(conv.weight != 0)
        x = torch.cat(batches)
        assert (conv(x) - ref(x)).pow(2).mean() < (masked(x) - ref(x)).pow(2).mean()


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 48)
        self.fc3 = nn.Linear(48, 8)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


@pytest.mark.parametrize("criterion,pattern,sparsity", [("sparsegpt", "2:4", None),
                                                        ("sparsegpt", "unstructured", 0.6),
                                                        ("wanda", "unstructured", 0.5)])
def test_sequential_calibrates_each_layer_on_the_pruned_layers_before_it(criterion, pattern,
                                                                         sparsity):
    torch.manual_seed(0)
    model = Deep()
    batches = [torch.randn(64, 32) for _ in range(3)]
    ref = Deep()
    ref.load_state_dict(model.state_dict())
    cfg = sp.PruneConfig(pattern=pattern, sparsity=sparsity, criterion=criterion)
    pruner = sp.Pruner(model, cfg).prune_sequential(batches)
    assert all(pruner.stats[n].gram is None for n in pruner.layers)  # Hessians freed
    assert pruner.stats["fc2"].tokens == 192

    # the same, by hand: layer k is pruned from inputs through the pruned layers 1..k-1
    for name in ("fc1", "fc2", "fc3"):
        one = sp.Pruner(ref, sp.PruneConfig(pattern=pattern, sparsity=sparsity,
                                            criterion=criterion, include=name))
        one.calibrate(batches).prune()
        sp.pruning.remove_masks(ref)
    for name in ("fc1", "fc2", "fc3"):
        torch.testing.assert_close(getattr(model, name).weight, getattr(ref, name).weight,
                                   atol=1e-5, rtol=1e-5)


def test_sequential_rejects_what_it_cannot_do():
    model = Deep()
    with pytest.raises(ValueError, match="scope='layer'"):
        sp.Pruner(model, sp.PruneConfig(sparsity=0.5, scope="global")).prune_sequential(
            [torch.randn(2, 32)])
    with pytest.raises(ValueError, match="'sparsegpt', 'wanda'"):
        sp.Pruner(model, sp.PruneConfig(sparsity=0.5, criterion="taylor")).prune_sequential(
            [torch.randn(2, 32)])
    with pytest.raises(ValueError, match="no batches"):
        sp.Pruner(model, sp.PruneConfig(sparsity=0.5)).prune_sequential([])


def test_a_kept_factor_gives_the_same_result_bit_for_bit():
    from sparseprune.pruning import inverse_hessian_factor

    x, w = problem()
    x[:, 5] = 0  # a dead input: the factor must treat it as sparsegpt_prune does
    gram = (x.T @ x).float()
    factor = inverse_hessian_factor(gram)
    assert factor.dtype == torch.float64 and torch.equal(factor, factor.triu())
    for pattern, sparsity in (("unstructured", 0.7), ("2:4", 0.5), ("block:4x8", 0.5)):
        want = sparsegpt_prune(w, gram, parse_pattern(pattern), sparsity, blocksize=32)
        got = sparsegpt_prune(w, gram, parse_pattern(pattern), sparsity, blocksize=32,
                              factor=factor)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="factor must be the float64"):
        sparsegpt_prune(w, gram, parse_pattern("2:4"), 0.5, factor=factor.float())
    with pytest.raises(ValueError, match=r"factor must be .* 96x96"):
        sparsegpt_prune(w, gram, parse_pattern("2:4"), 0.5, factor=factor[:8, :8])


def test_gradual_sparsegpt_keeps_each_layers_factor_until_its_gram_changes(monkeypatch):
    from sparseprune.pruning import pruner as pruner_mod

    torch.manual_seed(0)
    calib = [torch.randn(32, 24) for _ in range(4)]
    made = []
    real = pruner_mod.inverse_hessian_factor
    monkeypatch.setattr(pruner_mod, "inverse_hessian_factor",
                        lambda gram, **k: made.append(gram) or real(gram, **k))

    def run(schedule):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 8))
        config = sp.PruneConfig(sparsity=0.75, criterion="sparsegpt", schedule=schedule)
        pruner = sp.Pruner(model, config).calibrate(calib)
        return model, pruner

    model, pruner = run(sp.CubicSchedule(start=0, end=6, frequency=2))
    weights = []
    for _ in range(7):
        pruner.step()
        weights.append([m.weight.detach().clone() for m in (model[0], model[2])])
    assert len(made) == 2  # one factor per layer for the four re-solves
    # the same masks and weights as solving from scratch at every step
    ref_model, ref = run(None)
    schedule = sp.CubicSchedule(start=0, end=6, frequency=2)
    for t in range(7):
        if schedule.is_update(t):
            ref._apply({n: schedule.sparsity(t, 0.75) for n in ref.layers})
        assert all(torch.equal(a, m.weight) for a, m in zip(weights[t], (ref_model[0],
                                                                          ref_model[2])))
    pruner.calibrate(calib)  # the statistics grow: new Gram matrices, new factors
    pruner._apply({n: 0.75 for n in pruner.layers})
    assert len(made) == 4 and made[2] is pruner.stats["0"].gram
    pruner.stats["0"].gram.mul_(2.0)  # written in place: its version moves
    pruner._apply({n: 0.75 for n in pruner.layers})
    assert len(made) == 5
    pruner.finalize()
    assert pruner._factors == {}
