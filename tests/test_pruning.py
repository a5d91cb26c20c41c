import copy
import math
import pathlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparseprune as sp
from sparseprune import masks
from sparseprune.pruning import CubicSchedule, global_keep, remove_masks

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


def pruned_fraction(module):
    return int((module.weight == 0).sum()) / module.weight.numel()


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("kw,match", [
    (dict(sparsity=1.0), r"\[0, 1\)"),
    (dict(sparsity=-0.2), r"\[0, 1\)"),
    (dict(), "needs a sparsity"),
    (dict(pattern="4:4"), "N < M"),
    (dict(pattern="2:64"), "M <= 32"),
    (dict(pattern="2:4", sparsity=0.7), "fixes sparsity 0.5"),
    (dict(pattern="diagonal", sparsity=0.5), "unknown pattern.*valid"),
    (dict(pattern="block:0x4", sparsity=0.5), "positive"),
    (dict(criterion="random", sparsity=0.5), "unknown criterion.*valid"),
    (dict(scope="model", sparsity=0.5), "scope"),
    (dict(sparsity=0.5, min_density=0.6, max_density=0.5), "min_density"),
    (dict(sparsity=0.5, max_density=1.5), "max_density"),
    (dict(sparsity=0.5, scope="global", per_row=True), "per_row"),
    (dict(sparsity=0.5, overrides={"fc*": {"sparsity": 1.0}}), r"\[0, 1\)"),
    (dict(sparsity=0.5, overrides={"fc*": {"colour": 1}}), "unknown keys"),
])
def test_config_rejects_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        sp.PruneConfig(**kw)


def test_config_defaults_and_nm_sparsity():
    assert sp.PruneConfig(pattern="2:4").settings("x").sparsity == 0.5
    assert sp.PruneConfig(pattern="1:4", sparsity=0.75).settings("x").sparsity == 0.75
    cfg = sp.PruneConfig(sparsity=0.9, overrides={"fc2": {"pattern": "2:8"}})
    assert cfg.settings("fc2").sparsity == 0.75 and cfg.settings("fc1").sparsity == 0.9


def test_pruner_rejects_bad_input():
    with pytest.raises(ValueError, match="larger than"):
        sp.Pruner(net(), sp.PruneConfig(pattern="block:16x16", sparsity=0.5))
    with pytest.raises(ValueError, match="no nn.Linear"):
        sp.Pruner(net(), sp.PruneConfig(sparsity=0.5, include="nothing*"))
    with pytest.raises(ValueError, match="calibrate"):
        sp.Pruner(net(), sp.PruneConfig(sparsity=0.5, criterion="wanda")).prune()
    with pytest.raises(ValueError, match="calibrate"):
        sp.Pruner(net(), sp.PruneConfig(sparsity=0.5, criterion="taylor")).prune()
    with pytest.raises(ValueError, match="needs a loss"):
        sp.Pruner(net(), sp.PruneConfig(sparsity=0.5, criterion="taylor")).calibrate(
            [torch.randn(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="schedule"):
        sp.Pruner(net(), sp.PruneConfig(sparsity=0.5)).step()
    with pytest.raises(TypeError, match="PruneConfig"):
        sp.Pruner(net(), {"sparsity": 0.5})
    with pytest.raises(ValueError, match="no batches"):
        sp.Pruner(net(), sp.PruneConfig(sparsity=0.5, criterion="wanda")).calibrate([])


# ---------------------------------------------------------------------------- selection
def test_include_exclude_and_overrides():
    model = net()
    cfg = sp.PruneConfig(sparsity=0.5, include=["fc*", "conv"], exclude="fc2",
                         overrides={"conv": {"pattern": "channel", "sparsity": 0.25}})
    pruner = sp.Pruner(model, cfg).prune()
    assert list(pruner.layers) == ["conv", "fc1"]
    assert not hasattr(model.fc2, "weight_mask") and pruned_fraction(model.fc2) == 0
    rows_pruned = (model.conv.weight.reshape(8, -1) == 0).all(1).sum()
    assert rows_pruned == 2  # 25% of 8 output channels
    assert (~pruner.masks["fc1"]).sum() == round(0.5 * model.fc1.weight.numel())


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.7), ("2:4", None),
                                              ("1:4", None), ("block:4x4", 0.5),
                                              ("channel", 0.5), ("channel:in", 0.25)])
def test_layer_scope_equals_mask_functions(pattern, sparsity):
    model = net()
    ref = copy.deepcopy(model)
    sp.Pruner(model, sp.PruneConfig(pattern=pattern, sparsity=sparsity)).prune()
    s = sparsity
    fns = {"unstructured": lambda w: masks.unstructured(w, s),
           "2:4": lambda w: masks.n_m(w, 2, 4), "1:4": lambda w: masks.n_m(w, 1, 4),
           "block:4x4": lambda w: masks.block(w, s, block=(4, 4)),
           "channel": lambda w: masks.channel(w, s),
           "channel:in": lambda w: masks.channel(w, s, dim=1)}
    for name in ("conv", "fc1", "fc2"):
        w = getattr(ref, name).weight.detach()
        expected = w * fns[pattern](w.abs())
        assert torch.equal(getattr(model, name).weight.detach(), expected), name


def test_wanda_unstructured_ranks_within_each_row():
    model = net()
    pruner = sp.Pruner(model, sp.PruneConfig(criterion="wanda", sparsity=0.6))
    pruner.calibrate([torch.randn(4, 3, 8, 8) for _ in range(2)]).prune()
    for name, module in pruner.layers.items():
        m = pruner.masks[name].reshape(module.weight.shape[0], -1)
        assert ((~m).sum(1) == round(0.6 * m.shape[1])).all()


def test_callable_criterion_and_pattern():
    seen = []

    def by_index(module, stats):
        seen.append(stats is not None)
        return torch.arange(module.weight.numel(), dtype=torch.float32).reshape(
            module.weight.shape)

    def first_half(scores, sparsity):
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep.view(scores.shape[0], -1)[:, scores[0].numel() // 2:] = True
        return keep

    model = net()
    sp.Pruner(model, sp.PruneConfig(criterion=by_index, sparsity=0.25, include="fc1")).prune()
    assert (model.fc1.weight.reshape(-1)[:math.floor(0.25 * 128 * 32)] == 0).all()
    assert seen == [False]
    sp.Pruner(model, sp.PruneConfig(pattern=first_half, sparsity=0.5, include="fc2")).prune()
    assert (model.fc2.weight[:, :16] == 0).all() and (model.fc2.weight[:, 16:] != 0).all()
    bad = sp.PruneConfig(pattern=lambda s, p: s > 0, sparsity=0.5, include="fc2")
    with pytest.raises(ValueError, match="bool tensor"):
        sp.Pruner(model, sp.PruneConfig(pattern=lambda s, p: s.float(), sparsity=0.5)).prune()
    sp.Pruner(model, bad).prune()  # a valid callable passes through


# ---------------------------------------------------------------------------- global scope
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=5), st.floats(0.0, 0.99), st.data())
def test_global_keep_respects_bounds_and_counts(sizes, sparsity, data):
    scores = [torch.tensor(data.draw(st.lists(st.integers(0, 6).map(float), min_size=n,
                                              max_size=n))) for n in sizes]
    lo = [data.draw(st.floats(0.0, 0.6)) for _ in sizes]
    hi = [data.draw(st.floats(l, 1.0)) for l in lo]
    total = sum(sizes)
    budget = round(sparsity * total)
    keep_lo = [math.ceil(l * n - 1e-9) for l, n in zip(lo, sizes)]
    keep_hi = [max(kl, math.floor(h * n + 1e-9)) for kl, h, n in zip(keep_lo, hi, sizes)]
    feasible = sum(n - kh for n, kh in zip(sizes, keep_hi)) <= budget <= sum(
        n - kl for n, kl in zip(sizes, keep_lo))
    if not feasible:
        with pytest.raises(ValueError, match="density bounds"):
            global_keep(scores, sparsity, lo, hi)
        return
    keeps = global_keep(scores, sparsity, lo, hi)
    assert sum(int((~k).sum()) for k in keeps) == budget
    for k, kl, kh, s in zip(keeps, keep_lo, keep_hi, scores):
        assert kl <= int(k.sum()) <= kh
        # inside a layer the pruned ones are still its lowest
        if k.any() and (~k).any():
            assert s[k].min() >= s[~k].max()
    # a layer that is not at a bound gives up only units no better than another layer's
    # pruned-by-choice units: no kept unit above its min could swap with a pruned one
    # below its max to lower the total pruned score
    free_kept = [s[k].min() for k, kl, s in zip(keeps, keep_lo, scores) if int(k.sum()) > kl]
    free_pruned = [s[~k].max() for k, kh, s in zip(keeps, keep_hi, scores)
                   if int((~k).sum()) > len(s) - kh]
    if free_kept and free_pruned:
        assert min(free_kept) >= max(free_pruned)


def test_global_keep_without_bounds_is_one_ranking():
    torch.manual_seed(0)
    a, b = torch.randint(0, 5, (30,)).float(), torch.randint(0, 5, (17,)).float()
    keeps = global_keep([a, b], 0.6, [0, 0], [1, 1])
    flat = masks.prune_lowest(torch.cat([a, b]), round(0.6 * 47))
    assert torch.equal(torch.cat(keeps), flat)


@pytest.mark.parametrize("pattern", ["unstructured", "block:2x2", "channel"])
def test_global_scope_is_one_ranking_across_layers(pattern):
    model = net()
    ref = copy.deepcopy(model)
    pruner = sp.Pruner(model, sp.PruneConfig(pattern=pattern, sparsity=0.6, scope="global"))
    pruner.prune()
    parsed = sp.pruning.parse_pattern(pattern)
    units = [parsed.unit_scores(m.weight.detach().abs()) for m in (ref.conv, ref.fc1, ref.fc2)]
    flat = masks.prune_lowest(torch.cat(units), round(0.6 * sum(u.numel() for u in units)))
    got = torch.cat([parsed.unit_scores(pruner.masks[n].float()).ne(0)
                     for n in ("conv", "fc1", "fc2")])
    assert torch.equal(got, flat)
    # ... and actually different sparsities per layer
    assert len({round(pruned_fraction(m), 3) for m in (model.conv, model.fc1, model.fc2)}) > 1


def test_global_scope_density_bounds_on_a_model():
    model = net()
    with torch.no_grad():
        model.fc2.weight.mul_(1e-3)  # a global ranking would empty fc2 ...
    cfg = sp.PruneConfig(sparsity=0.8, scope="global", min_density=0.1, max_density=0.5,
                         overrides={"conv": {"sparsity": 0.3}})
    pruner = sp.Pruner(model, cfg).prune()
    assert int((model.fc2.weight != 0).sum()) == 32  # ... min_density 0.1 of 320 holds
    assert int((model.conv.weight == 0).sum()) == round(0.3 * 216)  # overridden: per layer
    total = model.fc1.weight.numel() + model.fc2.weight.numel()
    zeros = sum(int((m.weight == 0).sum()) for m in (model.fc1, model.fc2))
    assert zeros == round(0.8 * total)
    table = pruner.report_table()
    assert "| fc2 | Linear | 10x32 | unstructured (global) |" in table
    assert "| conv | Conv2d | 8x3x3x3 | unstructured | 30.0% |" in table


# ---------------------------------------------------------------------------- schedule
def test_cubic_schedule_formula():
    s = CubicSchedule(start=10, end=50, frequency=10, initial_sparsity=0.1)
    for t in (0, 10, 20, 37, 50, 80):
        p = min(max((t - 10) / 40, 0), 1)
        assert s.sparsity(t, 0.9) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - p) ** 3)
    assert [t for t in range(60) if s.is_update(t)] == [10, 20, 30, 40, 50]
    assert [t for t in range(20) if CubicSchedule(0, 7, 3).is_update(t)] == [0, 3, 6, 7]
    with pytest.raises(ValueError):
        CubicSchedule(start=5, end=4)
    with pytest.raises(ValueError):
        CubicSchedule(frequency=0)
    with pytest.raises(ValueError):
        CubicSchedule(initial_sparsity=1.0)


def test_gradual_pruning_follows_schedule_and_never_revives():
    model = net()
    sched = CubicSchedule(start=2, end=12, frequency=5)
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.9, schedule=sched))
    n = model.fc1.weight.numel()
    previous = torch.ones_like(pruner.masks["fc1"])
    last_update = None
    for t in range(16):
        with torch.no_grad():  # training moves weights, pruned ones too, between updates
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        changed = pruner.step()
        assert changed == (t in (2, 7, 12))
        last_update = t if changed else last_update
        mask = pruner.masks["fc1"].clone()
        expected = 0 if last_update is None else round(sched.sparsity(last_update, 0.9) * n)
        assert int((~mask).sum()) == expected
        assert not (mask & ~previous).any()  # a pruned weight stays pruned
        previous = mask
    model(torch.randn(1, 3, 8, 8))  # the forward pre-hook re-zeroes what the noise moved
    assert int((model.fc1.weight == 0).sum()) == round(0.9 * n)


def test_gradual_nm_passes_through_intermediate_n():
    model = net()
    sched = CubicSchedule(0, 10, 1)
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="1:4", schedule=sched))
    kept_per_group = []
    for t in range(11):
        pruner.step()
        groups = pruner.masks["fc1"].reshape(-1, 4).sum(1)
        expected = max(1, 4 - round(sched.sparsity(t, 0.75) * 4))
        assert (groups == expected).all(), t  # every group keeps the same n_t
        kept_per_group.append(expected)
    assert kept_per_group[0] == 4 and {3, 2, 1} <= set(kept_per_group)
    assert (pruner.masks["fc1"].reshape(-1, 4).sum(1) == 1).all()


# ---------------------------------------------------------------------------- fine-tuning
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def _train_steps(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 3, 8, 8, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_masked_weights_stay_exactly_zero_while_fine_tuning(name):
    model = net()
    opt = OPTIMIZERS[name](model.parameters())
    _train_steps(model, opt, 3)  # momentum / Adam moments exist before pruning
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.8)).prune().lock(opt)
    before = {n: m.weight.detach().clone() for n, m in pruner.layers.items()}
    for step in range(20):
        _train_steps(model, opt, 1, seed=100 + step)
        for n, m in pruner.layers.items():
            assert (m.weight[~pruner.masks[n]] == 0).all(), (n, step)
    for n, m in pruner.layers.items():  # the kept weights did train
        assert not torch.equal(m.weight[pruner.masks[n]], before[n][pruner.masks[n]])


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_without_lock_stale_momentum_moves_pruned_weights(name):
    """What the lock is for: the same run without it leaves pruned weights nonzero after a
    step (the forward pre-hook still zeroes them before the model is used)."""
    model = net()
    opt = OPTIMIZERS[name](model.parameters())
    _train_steps(model, opt, 3)
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.8)).prune()
    _train_steps(model, opt, 1, seed=7)
    assert (model.fc1.weight[~pruner.masks["fc1"]] != 0).any()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    assert (model.fc1.weight[~pruner.masks["fc1"]] == 0).all()
    ref = remove_masks(copy.deepcopy(model))
    torch.testing.assert_close(out, ref(x))


def test_gradual_pruning_with_locked_optimizer():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.75, schedule=CubicSchedule(0, 10, 2)))
    pruner.lock(opt)
    for step in range(12):
        pruner.step()
        _train_steps(model, opt, 1, seed=step)
        assert (model.fc1.weight[~pruner.masks["fc1"]] == 0).all()
        # momentum of newly pruned weights is cleared too
        buf = opt.state[model.fc1.weight]["momentum_buffer"]
        assert (buf[~pruner.masks["fc1"]] == 0).all()
    assert pruned_fraction(model.fc1) == pytest.approx(0.75, abs=1 / 4096)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_zeroing_follows_every_change_of_the_mask(dtype):
    """mask_ multiplies by a cached bf16 copy of a bool mask: every way of writing the mask
    (apply_mask, load_state_dict, an in-place copy) must reach the next zeroing."""
    from sparseprune.pruning.locking import MASK_NAME, apply_mask, attach_mask, mask_
    lin = nn.Linear(24, 16).to(dtype)
    attach_mask(lin)
    gen = torch.Generator().manual_seed(3)
    for how in ("apply_mask", "load_state_dict", "copy_", "apply_mask"):
        keep = torch.rand(16, 24, generator=gen) > 0.5
        if how == "apply_mask":
            apply_mask(lin, keep)
        elif how == "load_state_dict":
            lin.load_state_dict({**lin.state_dict(), MASK_NAME: keep})
        else:
            lin._buffers[MASK_NAME].copy_(keep)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(16, 24, generator=gen).to(dtype) + 3)
        w = lin.weight.detach().clone()
        mask_(lin.weight.data, lin._buffers[MASK_NAME])
        assert torch.equal(lin.weight, torch.where(keep, w, torch.zeros((), dtype=dtype))), how
        lin.weight.data.copy_(w)
        lin(torch.randn(2, 24).to(dtype))  # the forward pre-hook
        assert (lin.weight[~keep] == 0).all() and torch.equal(lin.weight[keep], w[keep]), how


def test_zeroing_with_a_mask_made_in_inference_mode():
    from sparseprune.pruning.locking import mask_
    with torch.inference_mode():
        keep = torch.rand(8, 8) > 0.5
    w = torch.randn(8, 8) + 3
    mask_(w, keep)
    assert (w[~keep] == 0).all() and (w[keep] != 0).all()


def test_masked_model_compiles_in_one_graph_and_still_zeroes():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.7)).prune()
    x = torch.randn(4, 32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))
    with torch.no_grad():
        model[0].weight.add_(1.0)  # pruned entries off zero: the compiled pre-hook zeroes them
    compiled(x)
    assert (model[0].weight[~pruner.masks["0"]] == 0).all()


# ---------------------------------------------------------------------------- persistence
def test_masks_live_in_state_dict_and_reload():
    model = net()
    sp.Pruner(model, sp.PruneConfig(sparsity=0.7)).prune()
    state = model.state_dict()
    assert state["fc1.weight_mask"].dtype == torch.bool
    fresh = net(seed=1)
    pruner = sp.Pruner(fresh, sp.PruneConfig(sparsity=0.7))  # attaches all-True masks
    fresh.load_state_dict(state)
    assert torch.equal(pruner.masks["fc1"], state["fc1.weight_mask"])
    with torch.no_grad():
        fresh.fc1.weight.add_(1.0)  # everything nonzero; the hook re-zeroes on forward
    fresh(torch.randn(1, 3, 8, 8))
    assert torch.equal(fresh.fc1.weight == 0, ~state["fc1.weight_mask"])


def test_deepcopy_keeps_masks_and_hooks():
    model = net()
    sp.Pruner(model, sp.PruneConfig(sparsity=0.7)).prune()
    clone = copy.deepcopy(model)
    assert torch.equal(clone.fc1.weight_mask, model.fc1.weight_mask)
    assert clone.fc1.weight_mask.data_ptr() != model.fc1.weight_mask.data_ptr()
    with torch.no_grad():
        clone.fc1.weight.add_(1.0)
    clone(torch.randn(1, 3, 8, 8))
    assert torch.equal(clone.fc1.weight == 0, ~clone.fc1.weight_mask)
    baked = remove_masks(clone)
    assert "fc1.weight_mask" not in baked.state_dict()


@pytest.mark.parametrize("device", DEVICES + ["meta"])
def test_to_device_moves_masks(device):
    model = net()
    sp.Pruner(model, sp.PruneConfig(sparsity=0.5)).prune()
    expected = model.fc1.weight_mask.clone()
    moved = model.to(device)
    assert moved.fc1.weight_mask.device.type == device
    assert moved.fc1.weight_mask.dtype == torch.bool
    if device != "meta":
        assert torch.equal(moved.fc1.weight_mask.cpu(), expected)
        moved(torch.randn(2, 3, 8, 8, device=device))
        moved.double()  # dtype casts leave the bool mask alone
        assert moved.fc1.weight_mask.dtype == torch.bool


@pytest.mark.parametrize("device", DEVICES)
def test_pruning_on_device(device):
    model = net().to(device)
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="2:4", criterion="wanda"))
    pruner.calibrate([torch.randn(4, 3, 8, 8, device=device)]).prune()
    assert pruner.masks["fc1"].device.type == device
    assert (model.fc1.weight.reshape(-1, 4) != 0).sum(1).le(2).all()


def test_finalize_bakes_masks_and_removes_every_hook():
    model = net()
    keys = set(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.6)).prune().lock(opt)
    masks_before = {n: m.clone() for n, m in pruner.masks.items()}
    out = pruner.finalize()
    assert out is model and set(model.state_dict()) == keys
    for n, m in pruner.layers.items():
        assert not hasattr(m, "weight_mask") and not m._forward_pre_hooks
        assert torch.equal(m.weight == 0, ~masks_before[n])
    assert not opt._optimizer_step_post_hooks
    plain = net(seed=3)
    plain.load_state_dict(model.state_dict())  # loads into a model that never saw sparseprune
    with pytest.raises(RuntimeError, match="finalized"):
        pruner.prune()


def test_report_lists_every_layer():
    model = net()
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="2:4"))
    assert all(r.target is None and r.sparsity == 0 for r in pruner.report())
    pruner.prune()
    rows = pruner.report()
    assert [r.name for r in rows] == ["conv", "fc1", "fc2"]
    assert all(r.target == 0.5 for r in rows)
    assert rows[1].sparsity == 0.5 and rows[2].sparsity == 0.5
    # conv: 27 inputs per row = 6 groups of 4 + a partial group of 3 keeping 2
    assert rows[0].zeros == 8 * (6 * 2 + 1)
    table = pruner.report_table()
    assert table.splitlines()[0].startswith("| layer |") and "| **total** |" in table
    assert "| fc1 | Linear | 32x128 | 2:4 | 50.0% | 50.0% | 2,048 / 4,096 |" in table


def test_calibrate_feeds_dicts_tuples_and_plain_batches():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, a, b=None):
            return self.lin(a if b is None else a + b)

    model = Two()
    pruner = sp.Pruner(model, sp.PruneConfig(criterion="wanda", sparsity=0.5))
    ones = torch.ones(1, 3)
    pruner.calibrate([{"a": ones, "b": ones}, (ones, ones), ones])
    torch.testing.assert_close(pruner.stats["lin"].input_sq,
                               torch.full((3,), 9.0, dtype=torch.float64))


def test_no_device_is_hard_coded():
    root = pathlib.Path(sp.__file__).parent
    files = [root / "masks.py", root / "scores.py", *(root / "pruning").glob("*.py")]
    for f in files:
        text = f.read_text()
        for bad in (".cuda(", '"cuda"', "'cuda'", "torch.cuda."):
            assert bad not in text, (f.name, bad)
