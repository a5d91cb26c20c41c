"""N:M channel permutation: exact swap gains, efficacy, and function-preserving application."""

import copy

import pytest
import torch
from torch import nn

import sparseprune as sp
from sparseprune.pruning.permutation import _swap_gains, nm_kept, search_permutation


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (1, 2)])
def test_swap_gains_equal_brute_force(n, m):
    w = torch.rand(5, 3 * m, generator=torch.Generator().manual_seed(n * 10 + m))
    gains = _swap_gains(w[None], n, m)[0]
    base = nm_kept(w, n, m)
    for i in range(3 * m):
        for j in range(3 * m):
            if i // m == j // m:
                assert gains[i, j] == float("-inf")
                continue
            p = torch.arange(3 * m)
            p[i], p[j] = j, i
            assert gains[i, j].item() == pytest.approx(nm_kept(w[:, p], n, m) - base, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_efficacy_on_random_64x128_at_2_4(seed):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(seed))
    r = search_permutation(w, 2, 4, max_rounds=60, time_budget=600, seed=seed)
    assert torch.equal(r.perm.sort().values, torch.arange(128))
    assert r.permuted == pytest.approx(nm_kept(w.abs()[:, r.perm], 2, 4), rel=1e-5)
    assert r.plain == pytest.approx(nm_kept(w.abs(), 2, 4), rel=1e-5)
    assert r.plain < r.permuted < r.upper
    assert r.efficacy >= 0.35  # Apex ASP reports 32-36% here


def test_windowed_search_on_a_wide_layer_improves():
    w = torch.randn(32, 512, generator=torch.Generator().manual_seed(3))
    r = search_permutation(w, 2, 4, window_groups=8, max_rounds=20, time_budget=600)
    assert r.efficacy > 0.1 and r.rounds <= 20


@pytest.mark.parametrize("kw,match", [
    (dict(scores=torch.rand(8)), "2-D"),
    (dict(scores=torch.rand(4, 8), n=4, m=4), "1 <= n < m"),
    (dict(scores=torch.rand(4, 10)), "multiple of m=4"),
    (dict(scores=torch.rand(4, 4)), "at least two groups"),
    (dict(scores=torch.rand(4, 16), window_groups=1), "window_groups"),
])
def test_search_rejects_bad_input(kw, match):
    args = dict(n=2, m=4) | kw
    with pytest.raises(ValueError, match=match):
        search_permutation(**args)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(24, 64)
        self.bn = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 6)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.bn(self.fc1(x))))))


def kept_magnitude(model, names):
    return sum(getattr(model, n).weight.detach().abs().sum().item() for n in names)


def test_permute_for_nm_keeps_the_function_and_raises_what_2_4_keeps():
    torch.manual_seed(0)
    model = MLP().eval()
    nn.init.uniform_(model.bn.running_mean, -1, 1)
    x = torch.randn(16, 24)
    ref = model(x)
    plain = copy.deepcopy(model)
    done, skipped = sp.pruning.permute_for_nm(model, 2, 4, example_inputs=x, time_budget=600,
                                              carry=False)
    assert {d.group for d in done} == {"fc1", "fc2"} and all(d.applied for d in done)
    assert dict(skipped).keys() == {"fc1"}  # reads the model's input
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    cfg = sp.PruneConfig(pattern="2:4", include=["fc2", "fc3"])
    sp.Pruner(plain, cfg).prune().finalize()
    sp.Pruner(model, cfg).prune().finalize()
    assert kept_magnitude(model, ["fc2", "fc3"]) > kept_magnitude(plain, ["fc2", "fc3"])


def test_permute_for_nm_on_bert_permutes_ffn_neurons_only():
    _bert_permuted_pruned_sparsified()


def _bert_permuted_pruned_sparsified():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  num_hidden_layers=1, vocab_size=50)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (2, 7))
    ref = model(input_ids=ids).last_hidden_state
    done, skipped = sp.pruning.permute_for_nm(model, 2, 4, include="encoder.*", time_budget=1,
                                              carry=False)
    assert [d.consumers for d in done] == [("encoder.layer.0.output.dense",)]
    why = dict(skipped)
    assert "across heads" in why["encoder.layer.0.attention.output.dense"]
    assert "encoder.layer.0.attention.self.query" in why
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, ref, atol=1e-5,
                               rtol=1e-5)
    # carried into the layers: every encoder Linear is permuted, the function still holds,
    # and it survives 2:4 pruning, sparsify, save and load
    done, skipped = sp.pruning.permute_for_nm(model, 2, 4, include="encoder.*", time_budget=1)
    assert skipped == [] and len(done) == 6
    carried = [d.group for d in done if d.consumers == (d.group,)]
    assert "encoder.layer.0.attention.self.query" in carried
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, ref, atol=1e-5,
                               rtol=1e-5)
    sp.Pruner(model, sp.PruneConfig(pattern="2:4", include="encoder.*")).prune().finalize()
    pruned = model(input_ids=ids).last_hidden_state
    sp.sparsify(model, include="encoder.*")
    q = model.encoder.layer[0].attention.self.query
    assert isinstance(q, sp.SparseLinear) and q.input_perm is not None
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, pruned, atol=1e-4,
                               rtol=1e-4)
    return model, pruned, ids


def test_carried_permutation_saves_and_loads(tmp_path):
    model, pruned, ids = _bert_permuted_pruned_sparsified()
    sp.save(model, tmp_path / "m.safetensors")
    transformers = pytest.importorskip("transformers")
    fresh = transformers.BertModel(model.config).eval()
    sp.load(fresh, tmp_path / "m.safetensors")
    torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state, pruned, atol=1e-4,
                               rtol=1e-4)


def test_bad_input_perm_is_rejected():
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="not a permutation"):
        sp.pruning.carry_permutation(lin, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\[8\\]"):
        sp.pruning.carry_permutation(lin, torch.arange(4))
    with pytest.raises(ValueError, match="input_perm is not a permutation"):
        sp.SparseLinear(sp.pack(lin.weight.detach(), "csr"), input_perm=torch.ones(8).long())


def test_structured_permute_rejects_non_permutations():
    model = MLP()
    group = sp.structured.find_groups(model, torch.randn(4, 24))["fc1"]
    with pytest.raises(ValueError, match="permutation of range"):
        sp.structured.permute(model, group, torch.zeros(64, dtype=torch.long))
