"""Structured pruning: dependency groups, shrinking, plans, and the Pruner's structured mode."""

import copy
import json

import pytest
import torch
from torch import nn

import sparseprune as sp
from sparseprune import structured
from sparseprune.recover import RecoverConfig, distill

transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------- models
class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class ResNetish(nn.Module):
    def __init__(self, c=12):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.block1, self.block2 = ResBlock(c), ResBlock(c)
        self.head = nn.Linear(c * 2 * 2, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def resnetish(seed=0):
    torch.manual_seed(seed)
    m = ResNetish()
    for mod in m.modules():  # non-trivial statistics, so BatchNorm is not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.5, 0.5)
    return m.eval()


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=48,
                                  num_hidden_layers=2, vocab_size=50, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval(), cfg


def bert_out(model, ids):
    return model(input_ids=ids).last_hidden_state


X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
IDS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------------------- graph
def test_resnet_groups_join_every_branch_of_the_residual_sum():
    gs = structured.find_groups(resnetish(), X)
    assert gs.method == "fx"
    res = gs["stem"]
    members = {(m.module, m.role) for m in res.members}
    assert {("stem", "out"), ("bn", "through"), ("block1.c2", "out"), ("block1.b2", "through"),
            ("block2.c2", "out"), ("block2.b2", "through"), ("block1.c1", "in"),
            ("block2.c1", "in"), ("head", "in")} == members
    head = next(m for m in res.members if m.module == "head")
    assert head.unit == 4  # flatten of 2x2 pooled maps: 4 columns per channel
    assert {g.name for g in gs} == {"stem", "block1.c1", "block2.c1"}
    assert [b.module for b in gs.blocked] == ["head"]  # its outputs are the model's output


class Branches(nn.Module):
    """cat of two convs, a depthwise conv, and a Linear MLP with a residual."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.mix = nn.Conv2d(10, 8, 1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        y = self.mix(torch.relu(self.dw(y))).mean((2, 3))
        y = y + self.fc2(nn.functional.gelu(self.fc1(y)))
        return self.out(y)


def test_cat_depthwise_reduce_and_mlp_residual():
    model = Branches().eval()
    gs = structured.find_groups(model, X)
    a, b = gs["a"], gs["b"]
    assert (a.size, b.size) == (4, 6)
    assert {(m.module, m.role, m.offset) for m in b.members} == {
        ("b", "out", 0), ("dw", "through", 4), ("mix", "in", 4)}
    assert {(m.module, m.role) for m in gs["mix"].members} == {
        ("mix", "out"), ("fc1", "in"), ("fc2", "out"), ("out", "in")}
    assert {(m.module, m.role) for m in gs["fc1"].members} == {("fc1", "out"), ("fc2", "in")}
    check_zeroed_units_removed_exactly(model, gs, lambda m: m(X))


class Unfollowed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.norm = nn.LayerNorm(10)
        self.fc2 = nn.Linear(10, 10)
        self.attn = nn.MultiheadAttention(10, 2, batch_first=True)
        self.fc3 = nn.Linear(10, 4)

    def forward(self, x):
        h = self.fc2(self.norm(self.fc1(x)))
        h = self.attn(h, h, h)[0]
        return self.fc3(h)


def test_modules_the_graph_cannot_follow_are_reported_and_left_alone():
    model = Unfollowed().eval()
    x = torch.randn(2, 5, 6)
    gs = structured.find_groups(model, x)
    reasons = {b.module: b.reason for b in gs.blocked}
    assert "normalized" in reasons["fc1"] or "LayerNorm" in reasons["fc1"]
    assert "MultiheadAttention" in reasons["fc2"]
    assert "fc3" in reasons
    assert len(gs) == 0
    with pytest.raises(ValueError, match="no dependency group.*not followed"):
        sp.Pruner(model, sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True), x)
    before = {k: v.shape for k, v in model.state_dict().items()}
    structured.shrink(model, gs.groups, {})
    assert {k: v.shape for k, v in model.state_dict().items()} == before


class ControlFlow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


def test_untraceable_model_and_missing_inputs_raise_clearly():
    with pytest.raises(ValueError, match="torch.fx cannot trace ControlFlow"):
        structured.find_groups(ControlFlow(), torch.randn(2, 4))
    with pytest.raises(ValueError, match="example_inputs"):
        structured.find_groups(resnetish())
    with pytest.raises(TypeError, match="example_inputs"):
        structured.find_groups(resnetish(), {"x": X})


def test_bert_rules_groups_and_head_counts():
    model, cfg = tiny_bert()
    gs = structured.find_groups(model)
    assert gs.method == "rules"
    assert [g.name for g in gs] == [f"encoder.layer.{i}.{p}" for i in range(2)
                                    for p in ("intermediate.dense", "attention.self")]
    assert [(g.kind, g.size) for g in gs] == [("channel", 48), ("head", 4)] * 2
    assert "pooler.dense" in {b.module for b in gs.blocked}
    keeps = {"encoder.layer.0.attention.self": torch.tensor([True, False, True, False]),
             "encoder.layer.1.intermediate.dense": torch.arange(48) % 3 == 0}
    structured.shrink(model, gs.groups, keeps)
    att = model.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.all_head_size, att.query.out_features) == (2, 16, 16)
    assert model.encoder.layer[0].attention.output.dense.in_features == 16
    assert model.encoder.layer[1].intermediate.dense.out_features == 16
    assert model.encoder.layer[1].output.dense.in_features == 16
    assert model.encoder.layer[1].attention.self.num_attention_heads == 4
    assert bert_out(model, IDS).shape == (2, 9, 32)


# ---------------------------------------------------------------------------- exactness
def zero_units(model, group, removed):
    """Zeroes every weight of the removed units that produces them (rows, biases,
    BatchNorm affine), as a pruned-to-zero group would be."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for m in group.members:
            mod = modules[m.module]
            idx = m.indices(removed)
            if m.role in ("out", "through"):
                mod.weight[idx] = 0
                if getattr(mod, "bias", None) is not None:
                    mod.bias[idx] = 0


def check_zeroed_units_removed_exactly(model, gs, run, seed=0):
    g = torch.Generator().manual_seed(seed)
    keeps = {}
    for grp in gs:
        keep = torch.rand(grp.size, generator=g) < 0.6
        keep[torch.randint(grp.size, (1,), generator=g)] = True
        keeps[grp.name] = keep
        zero_units(model, grp, ~keep)
    with torch.no_grad():
        before = run(model)
        structured.shrink(model, gs.groups, keeps)
        after = run(model)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    return keeps


def test_removing_zeroed_units_leaves_resnet_output_unchanged():
    model = resnetish()
    gs = structured.find_groups(model, X)
    keeps = check_zeroed_units_removed_exactly(model, gs, lambda m: m(X))
    kept = int(keeps["stem"].sum())
    # every tensor of the residual stream lost the same channels
    assert model.stem.out_channels == model.block1.c2.out_channels == \
        model.block2.c2.out_channels == model.block1.c1.in_channels == kept
    assert model.bn.num_features == model.block2.b2.running_mean.numel() == kept
    assert model.head.in_features == 4 * kept


def test_removing_zeroed_units_leaves_bert_output_unchanged():
    model, _ = tiny_bert()
    gs = structured.find_groups(model)
    check_zeroed_units_removed_exactly(model, gs, lambda m: bert_out(m, IDS))


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "taylor"])
def test_pruner_masked_model_equals_shrunk_model(criterion):
    model = resnetish()
    cfg = sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True, criterion=criterion,
                         round_to=4)
    pruner = sp.Pruner(model, cfg, example_inputs=X)
    if criterion != "magnitude":
        target = torch.tensor([0, 3, 1])
        pruner.calibrate([X, X.flip(0)],
                         loss_fn=(lambda out, b: nn.functional.cross_entropy(out, target))
                         if criterion == "taylor" else None)
    pruner.prune()
    with torch.no_grad():
        masked = model(X)
    shrunk = pruner.shrink()
    assert shrunk is model
    with torch.no_grad():
        torch.testing.assert_close(model(X), masked, atol=1e-5, rtol=1e-5)
    assert model.stem.out_channels == 8 and model.block1.c1.out_channels == 8  # 12 -> 6 -> 8
    assert "| stem | channel | 12 | 8 |" in pruner.shrink_table()
    with pytest.raises(RuntimeError, match="finalized"):
        pruner.prune()


def test_pruner_bert_heads_and_neurons_inplace_false():
    model, _ = tiny_bert()
    ref = copy.deepcopy(model)
    cfg = sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True,
                         overrides={"*.attention.self": {"pattern": "head", "sparsity": 0.25}})
    pruner = sp.Pruner(model, cfg)
    pruner.prune()
    masked = bert_out(model, IDS)
    small = pruner.shrink(inplace=False)
    assert small is not model and model.encoder.layer[0].intermediate.dense.out_features == 48
    torch.testing.assert_close(bert_out(small, IDS), masked, atol=1e-5, rtol=1e-5)
    layer = small.encoder.layer[1]
    assert layer.attention.self.num_attention_heads == 3
    labels = {r.name: r.pattern for r in pruner.report()}
    assert labels["encoder.layer.1.attention.self.query"] == "structured head"
    assert labels["encoder.layer.1.output.dense"] == "structured channel"
    assert layer.intermediate.dense.out_features == 24
    # magnitude: the lowest-norm neuron of the group (both layers' slices) went
    w1 = ref.encoder.layer[1].intermediate.dense
    w2 = ref.encoder.layer[1].output.dense
    score = (w1.weight.detach().double().square().sum(1) + w1.bias.detach().double().square()
             + w2.weight.detach().double().square().sum(0))
    kept = torch.tensor(pruner.plan["groups"]["encoder.layer.1.intermediate.dense"]["keep"])
    assert set(kept.tolist()) == set(score.topk(24).indices.tolist())


def test_global_scope_and_head_only_pattern():
    model, _ = tiny_bert()
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="head", sparsity=0.5, structured=True,
                                             scope="global"))
    assert set(pruner.groups) == {"encoder.layer.0.attention.self",
                                  "encoder.layer.1.attention.self"}
    pruner.prune()
    kept = [int(k.sum()) for k in pruner.group_keep.values()]
    assert sum(kept) == 4 and min(kept) >= 1
    pruner.shrink()
    assert sum(layer.attention.self.num_attention_heads
               for layer in model.encoder.layer) == 4


def test_gradual_schedule_with_structured_masks():
    model = resnetish()
    cfg = sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True,
                         schedule=sp.CubicSchedule(start=0, end=4, frequency=1))
    pruner = sp.Pruner(model, cfg, example_inputs=X)
    removed = []
    for _ in range(6):
        pruner.step()
        removed.append(int((~pruner.group_keep["stem"]).sum()))
    assert removed[0] == 0 and removed[-1] == 6 and removed == sorted(removed)


# ---------------------------------------------------------------------------- round trips
def test_plan_rebuilds_shapes_on_a_fresh_model_and_state_dict_loads(tmp_path):
    model, cfg = tiny_bert()
    pruner = sp.Pruner(model, sp.PruneConfig(
        pattern="channel", sparsity=0.5, structured=True,
        overrides={"*.attention.self": {"pattern": "head", "sparsity": 0.5}}))
    pruner.prune()
    pruner.shrink()
    structured.save_plan(pruner.plan, tmp_path / "plan.json")
    fresh = transformers.BertModel(cfg).eval()
    structured.apply_plan(fresh, structured.load_plan(tmp_path / "plan.json"))
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(bert_out(fresh, IDS), bert_out(model, IDS))

    cnn = resnetish()
    p2 = sp.Pruner(cnn, sp.PruneConfig(pattern="channel", sparsity=0.4, structured=True), X)
    p2.prune()
    p2.shrink()
    fresh_cnn = ResNetish().eval()
    structured.apply_plan(fresh_cnn, json.loads(json.dumps(p2.plan)), X)
    fresh_cnn.load_state_dict(cnn.state_dict())
    torch.testing.assert_close(fresh_cnn(X), cnn(X))


@pytest.mark.parametrize("mutate,match", [
    (lambda p: p.update(version=7), "not a structured pruning plan"),
    (lambda p: p["groups"].update(nope={"kind": "channel", "size": 3, "keep": [0]}),
     "not a group of this model"),
    (lambda p: p["groups"]["stem"].update(size=99), "expected kind"),
    (lambda p: p["groups"]["stem"].update(keep=[]), "non-empty"),
    (lambda p: p["groups"]["stem"].update(keep=[0, 0]), "distinct"),
    (lambda p: p["groups"]["stem"].update(keep=[12]), r"\[0, 12\)"),
    (lambda p: p["groups"]["stem"].update(keep=["1"]), "indices"),
])
def test_untrusted_plans_are_validated(mutate, match):
    plan = {"version": 1, "groups": {"stem": {"kind": "channel", "size": 12, "keep": [0, 3]}}}
    mutate(plan)
    with pytest.raises(ValueError, match=match):
        structured.apply_plan(resnetish(), plan, X)


def test_load_plan_rejects_non_json(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        structured.load_plan(tmp_path / "p.json")


def test_shrunk_models_export_and_distill():
    model = resnetish()
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True), X)
    pruner.prune()
    pruner.shrink()
    ep = torch.export.export(model, (X,))
    torch.testing.assert_close(ep.module()(X), model(X))

    bert, _ = tiny_bert()
    teacher = copy.deepcopy(bert)
    p = sp.Pruner(bert, sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True))
    p.prune()
    p.shrink()
    ep = torch.export.export(bert, (), {"input_ids": IDS})
    torch.testing.assert_close(ep.module()(input_ids=IDS).last_hidden_state, bert_out(bert, IDS))
    batches = [{"input_ids": torch.randint(0, 50, (4, 8), generator=torch.Generator()
                                           .manual_seed(i))} for i in range(4)]
    with pytest.raises(ValueError, match="require_masks=False"):
        distill(bert, teacher, batches, config=RecoverConfig(steps=1, progress=False))
    res = distill(bert, teacher, batches, require_masks=False,
                  config=RecoverConfig(steps=30, lr=1e-3, warmup_steps=0, progress=False))
    assert sum(res.losses[-5:]) < sum(res.losses[:5])


# ---------------------------------------------------------------------------- bad input
def test_removing_every_channel_is_an_error():
    model = resnetish()
    gs = structured.find_groups(model, X)
    with pytest.raises(ValueError, match="removing all 12 channels"):
        structured.shrink(model, gs.groups, {"stem": torch.zeros(12, dtype=torch.bool)})
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="channel", sparsity=0.99, structured=True),
                       X)
    with pytest.raises(ValueError, match="would remove all 12 units"):
        pruner.prune()
    with pytest.raises(ValueError, match="bool tensor of shape"):
        structured.shrink(model, gs.groups, {"stem": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no group"):
        structured.shrink(model, gs.groups, {"fc": torch.ones(5, dtype=torch.bool)})


@pytest.mark.parametrize("kw,match", [
    (dict(pattern="2:4", structured=True), "must be \"channel\" or \"head\""),
    (dict(pattern="head", sparsity=0.5), "structured=True"),
    (dict(pattern="channel", sparsity=0.5, structured=True, criterion="sparsegpt"),
     "sparsegpt"),
    (dict(pattern="channel", sparsity=0.5, structured=True, round_to=0), "round_to"),
])
def test_config_rejects_structured_misuse(kw, match):
    with pytest.raises(ValueError, match=match):
        sp.PruneConfig(**kw)


def test_shrink_needs_structured_mode():
    model = resnetish()
    pruner = sp.Pruner(model, sp.PruneConfig(pattern="channel", sparsity=0.5)).prune()
    with pytest.raises(ValueError, match="structured=True"):
        pruner.shrink()


# ---------------------------------------------------------------------------- real data
def test_digits_resnet_half_the_filters_removed_then_fine_tuned():
    pytest.importorskip("sklearn")
    from sparseprune.bench.digits import run, table

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = run(epochs=12, finetune_epochs=8, criterion="magnitude", time_rounds=0)
    finally:
        torch.set_num_threads(before)
    assert r["dense_accuracy"] > 0.97
    assert r["finetuned_accuracy"] > r["dense_accuracy"] - 0.02
    # 50% of every group's filters: each conv keeps half its inputs and half its outputs
    assert r["flops_shrunk"] < 0.3 * r["flops_dense"]
    assert r["params_shrunk"] < 0.3 * r["params_dense"]
    assert "| stage2.0 | channel | 64 | 32 | 50.0% |" in r["groups"]
    assert "| - | - |" in table([r])


# ---------------------------------------------------------------------------- refit
class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 24)
        self.fc2 = nn.Linear(24, 6)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_refit_readers_is_the_least_squares_solution():
    torch.manual_seed(0)
    model = TwoLayer().double()
    x = torch.randn(200, 10, dtype=torch.float64)
    h = torch.relu(model.fc1(x)).detach()
    gs = structured.find_groups(model, x)
    keep = torch.arange(24) % 3 != 0
    w = model.fc2.weight.detach().clone()
    done = structured.refit_readers(model, gs.groups, {"fc1": keep}, {"fc2": h.T @ h},
                                    damp=0.0)
    assert done == ["fc2"]
    want = torch.linalg.lstsq(h[:, keep], h @ w.T).solution.T
    torch.testing.assert_close(model.fc2.weight.detach()[:, keep], want)
    with pytest.raises(ValueError, match="hessian=True"):
        structured.refit_readers(model, gs.groups, {"fc1": keep}, {})


def test_pruner_refit_lowers_the_error_and_masked_still_equals_shrunk():
    ids = [{"input_ids": torch.randint(0, 50, (4, 12), generator=torch.Generator()
                                       .manual_seed(i))} for i in range(6)]
    base, _ = tiny_bert()
    ref = [base(**b).last_hidden_state for b in ids]
    errs = {}
    for refit in (False, True):
        model = copy.deepcopy(base)
        cfg = sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True, refit=refit,
                             criterion="wanda",
                             overrides={"*.attention.self": {"pattern": "head",
                                                             "sparsity": 0.25}})
        pruner = sp.Pruner(model, cfg).calibrate(ids, hessian=True).prune()
        masked = [model(**b).last_hidden_state for b in ids]
        pruner.shrink()
        outs = [model(**b).last_hidden_state for b in ids]
        for a, b in zip(outs, masked):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        errs[refit] = sum(((o - r) ** 2).mean().item() for o, r in zip(outs, ref))
    assert errs[True] < 0.5 * errs[False]
    with pytest.raises(ValueError, match="hessian=True"):
        model = copy.deepcopy(base)
        sp.Pruner(model, sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True,
                                        refit=True, criterion="wanda")).calibrate(ids).prune()
    with pytest.raises(ValueError, match="structured=True"):
        sp.PruneConfig(pattern="channel", sparsity=0.5, refit=True)


class SqueezeExcite(nn.Module):
    """A gate multiplied onto the channels (joins the gate's producer), and a flatten
    written as view(size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.squeeze = nn.Linear(16, 4)
        self.excite = nn.Linear(4, 16)
        self.head = nn.Linear(16 * 8 * 8, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(y.mean((2, 3))))))
        y = y * gate.view(y.size(0), -1, 1, 1)
        return self.head(y.view(y.size(0), -1))


def test_gates_and_view_flatten():
    model = SqueezeExcite().eval()
    gs = structured.find_groups(model, X)
    g = gs["conv"]
    assert {(m.module, m.role, m.unit) for m in g.members} == {
        ("conv", "out", 1), ("squeeze", "in", 1), ("excite", "out", 1), ("head", "in", 64)}
    assert {(m.module, m.role) for m in gs["squeeze"].members} == {("squeeze", "out"),
                                                                   ("excite", "in")}
    keeps = {"conv": torch.arange(16) % 4 != 1, "squeeze": torch.tensor([1, 0, 1, 1]).bool()}
    structured.shrink(model, gs.groups, keeps)
    assert model.head.in_features == 12 * 64 and model(X).shape == (3, 3)


def test_batchnorm_without_affine_or_running_stats_shrinks():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False,
                                                             track_running_stats=False),
                          nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 36, 2))
    gs = structured.find_groups(model, X)
    structured.shrink(model, gs.groups, {"0": torch.arange(8) < 5})
    assert model[1].num_features == 5 and model[3].in_channels == 5
    assert model(X).shape == (3, 2)


def test_gradual_structured_removal_during_distillation_then_shrink():
    base, _ = tiny_bert()
    model = copy.deepcopy(base)
    batches = [{"input_ids": torch.randint(0, 50, (4, 8), generator=torch.Generator()
                                           .manual_seed(i))} for i in range(4)]
    cfg = sp.PruneConfig(pattern="channel", sparsity=0.5, structured=True, refit=True,
                         criterion="wanda", schedule=sp.CubicSchedule(start=0, end=6,
                                                                       frequency=2),
                         overrides={"*.attention.self": {"pattern": "head", "sparsity": 0.25}})
    pruner = sp.Pruner(model, cfg).calibrate(batches, hessian=True)
    distill(model, base, batches, pruner=pruner,
            config=RecoverConfig(steps=10, lr=1e-3, warmup_steps=0, progress=False))
    assert {n: int(k.sum()) for n, k in pruner.group_keep.items()} == {
        "encoder.layer.0.intermediate.dense": 24, "encoder.layer.0.attention.self": 3,
        "encoder.layer.1.intermediate.dense": 24, "encoder.layer.1.attention.self": 3}
    masked = bert_out(model, IDS)
    pruner.shrink()
    torch.testing.assert_close(bert_out(model, IDS), masked, atol=1e-5, rtol=1e-5)
    assert model.encoder.layer[0].intermediate.dense.out_features == 24
