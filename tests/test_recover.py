"""Recovery by distillation (sparseprune.recover) and the text corpus (sparseprune.corpus)."""

import copy
import random

import pytest
import torch
from torch import nn

import sparseprune as sp
from sparseprune import corpus
from sparseprune.recover import RecoverConfig, default_optimizer, distill


def mlp(seed=0, out=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(),
                         nn.Linear(32, out))


def batches(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 16, generator=g) for _ in range(n)]


def pruned_student(teacher, pattern="unstructured", sparsity=0.7, schedule=None):
    student = copy.deepcopy(teacher)
    cfg = sp.PruneConfig(pattern=pattern, sparsity=sparsity, criterion="magnitude",
                         schedule=schedule)
    pruner = sp.Pruner(student, cfg)
    if schedule is None:
        pruner.prune()
    return student, pruner


def cfg(**kw):
    base = dict(steps=40, lr=3e-3, warmup_steps=2, progress=False)
    base.update(kw)
    return RecoverConfig(**base)


def test_loss_decreases_and_masked_weights_stay_zero():
    teacher = mlp()
    student, pruner = pruned_student(teacher)
    res = distill(student, teacher, batches(), pruner=pruner, config=cfg(steps=60))
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    for name, keep in pruner.masks.items():
        w = pruner.layers[name].weight
        assert torch.count_nonzero(w[~keep]) == 0
        assert keep.float().mean() == pytest.approx(0.3, abs=0.02)


def test_default_optimizer_is_fused_adamw_and_matches_the_unfused_one():
    # fused=True where the parameters allow it; the same update as the for-loop AdamW
    teacher = mlp()
    results = []
    for fused in (True, False):
        student, pruner = pruned_student(teacher)
        params = [p for p in student.parameters() if p.requires_grad]
        opt = (default_optimizer(params, cfg()) if fused else
               torch.optim.AdamW(params, lr=cfg().lr, weight_decay=cfg().weight_decay))
        assert opt.defaults["fused"] is (True if fused else None)
        distill(student, teacher, batches(), pruner=pruner, optimizer=opt, config=cfg(steps=20))
        results.append(torch.cat([p.detach().reshape(-1) for p in params]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    # parameters on two devices cannot share a fused step: the for-loop AdamW
    mixed = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3, device="meta"))]
    assert not default_optimizer(mixed, cfg()).defaults.get("fused")


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_losses_and_grad_accumulation(loss):
    teacher = mlp()
    student, pruner = pruned_student(teacher, pattern="2:4", sparsity=None)
    res = distill(student, teacher, batches(), pruner=pruner,
                  config=cfg(loss=loss, grad_accum=2, steps=30))
    assert res.losses[-1] < res.losses[0]
    for name, keep in pruner.masks.items():
        assert torch.count_nonzero(pruner.layers[name].weight[~keep]) == 0


def test_kl_on_logits():
    class Clf(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return {"logits": self.body(x)}

    teacher = Clf(mlp())
    student, pruner = pruned_student(teacher)
    res = distill(student, teacher, batches(), pruner=pruner, config=cfg(loss="kl"))
    assert res.losses[-1] < res.losses[0]


def test_gradual_schedule_reaches_target():
    teacher = mlp()
    student, pruner = pruned_student(teacher, sparsity=0.8,
                                     schedule=sp.CubicSchedule(start=0, end=20, frequency=5))
    distill(student, teacher, batches(), pruner=pruner, config=cfg(steps=30))
    for name, keep in pruner.masks.items():
        assert keep.float().mean() == pytest.approx(0.2, abs=0.02)
        assert torch.count_nonzero(pruner.layers[name].weight[~keep]) == 0


@pytest.mark.filterwarnings("ignore:bf16 autocast on a CPU without native bf16")
def test_bf16_autocast_runs():
    teacher = mlp()
    student, pruner = pruned_student(teacher)
    res = distill(student, teacher, batches(4), pruner=pruner, config=cfg(steps=5, bf16=True))
    assert len(res.losses) == 5 and all(torch.isfinite(torch.tensor(res.losses)))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_follows_the_cpu(monkeypatch, native):
    import sparseprune.recover as rec

    monkeypatch.setattr(rec, "native_bf16", lambda: native)
    assert cfg(bf16="auto").use_bf16() is native
    assert cfg(bf16=True).use_bf16() and not cfg(bf16=False).use_bf16()
    seen = []
    real = torch.autocast

    def spy(device, dtype=None, enabled=True, **kw):
        seen.append(enabled)
        return real(device, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(rec.torch, "autocast", spy)
    teacher = mlp()
    student, pruner = pruned_student(teacher)
    distill(student, teacher, batches(2), pruner=pruner, config=cfg(steps=2, bf16="auto"))
    assert seen == [native]


def test_forced_bf16_without_native_support_warns(monkeypatch):
    import sparseprune.recover as rec

    monkeypatch.setattr(rec, "native_bf16", lambda: False)
    teacher = mlp()
    student, pruner = pruned_student(teacher)
    with pytest.warns(RuntimeWarning, match="emulated"):
        distill(student, teacher, batches(2), pruner=pruner, config=cfg(steps=2, bf16=True))


def test_bf16_option_is_checked():
    with pytest.raises(ValueError, match="bf16 must be"):
        cfg(bf16="yes")


def test_resume_from_checkpoint_matches_uninterrupted(tmp_path):
    teacher = mlp()
    sched = sp.CubicSchedule(start=0, end=10, frequency=2)

    student_a, pruner_a = pruned_student(teacher, schedule=sched)
    full = distill(student_a, teacher, batches(), pruner=pruner_a, config=cfg(steps=24))

    ckpt = tmp_path / "run.pt"
    student_b, pruner_b = pruned_student(teacher, schedule=sched)

    def crash(step, loss):
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(student_b, teacher, batches(), pruner=pruner_b,
                config=cfg(steps=24, checkpoint=ckpt, checkpoint_every=5), on_step=crash)
    # A restart: fresh modules and pruner, the same checkpoint file, the full step count.
    student_c, pruner_c = pruned_student(teacher, schedule=sched)
    resumed = distill(student_c, teacher, batches(), pruner=pruner_c,
                      config=cfg(steps=24, checkpoint=ckpt, checkpoint_every=5))
    assert resumed.resumed_from == 10
    assert resumed.losses == full.losses
    for (na, pa), (nc, pc) in zip(student_a.state_dict().items(),
                                  student_c.state_dict().items()):
        assert na == nc and torch.equal(pa, pc), na


def test_bad_inputs():
    teacher = mlp()
    student, pruner = pruned_student(teacher)
    with pytest.raises(ValueError, match="empty corpus"):
        distill(student, teacher, [], pruner=pruner, config=cfg())
    with pytest.raises(ValueError, match="shapes differ"):
        distill(student, mlp(out=5), batches(), pruner=pruner, config=cfg(steps=1))
    with pytest.raises(ValueError, match="no pruning masks"):
        distill(mlp(), teacher, batches(), config=cfg())
    with pytest.raises(ValueError, match="same module"):
        distill(teacher, teacher, batches(), config=cfg())
    with pytest.raises(ValueError, match="loss must be one of"):
        RecoverConfig(loss="l1")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        RecoverConfig(steps=0)
    other_student, other_pruner = pruned_student(mlp(3))
    with pytest.raises(ValueError, match="another model"):
        distill(student, teacher, batches(), pruner=other_pruner, config=cfg())


def test_corpus_split_is_disjoint_and_seeded():
    train, calib, ev = corpus.split(50, 10, seed=3, with_docstrings=False)
    assert len(ev) == 50 and len(calib) == 10
    assert not set(ev) & set(train) and not set(ev) & set(calib) and not set(calib) & set(train)
    assert corpus.split(50, 10, seed=3, with_docstrings=False)[2] == ev
    assert corpus.split(50, 10, seed=4, with_docstrings=False)[2] != ev
    with pytest.raises(ValueError, match="asked for"):
        corpus.split(10**6)


def test_stdlib_docstrings_reads_sources_without_importing(tmp_path):
    (tmp_path / "mod.py").write_text(
        '"""A module docstring that is long enough to count as one real paragraph of '
        'text here.\n\nshort."""\n'
        'raise SystemExit("never executed")\n'
        'def f():\n    """A function docstring with enough words to pass the minimum '
        'length filter too."""\n')
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text('"""Tests are skipped even when they have many '
                                            'words in their docstring paragraphs."""\n')
    docs = corpus.stdlib_docstrings(min_words=10, root=tmp_path)
    assert len(docs) == 2 and docs[0].startswith("A module docstring")


def test_sentence_transformer_outputs_with_layers():
    from sparseprune.recover import default_outputs, distill_loss

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])

    def out(shift):
        layers = tuple(torch.randn(2, 4, 6, generator=g) + shift for _ in range(3))
        return {"sentence_embedding": torch.randn(2, 6, generator=g),
                "token_embeddings": layers[-1], "attention_mask": mask,
                "all_layer_embeddings": layers}

    s, t = default_outputs(out(0.0)), default_outputs(out(0.0))
    assert s["layers"].shape == (2, 2, 4, 6)  # the embedding layer's output is left out
    base = distill_loss(s, t, RecoverConfig(layer_weight=0.0))
    with_layers = distill_loss(s, t, RecoverConfig(layer_weight=1.0))
    assert with_layers > base
    # Padding positions do not count.
    s2 = dict(s, layers=s["layers"].clone())
    s2["layers"][:, 1, 2:] += 100.0
    assert distill_loss(s2, t, RecoverConfig(layer_weight=1.0)) == with_layers


def test_experiment_rejects_bad_options_before_loading_anything(tmp_path):
    from sparseprune.bench.recovery import run
    with pytest.raises(ValueError, match="in_domain_repeat must be >= 1"):
        run(("2:4",), in_domain_repeat=0, out=tmp_path)
    # settings and recipes are checked before the model and corpus are loaded
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        run(("2:4", "nope"), out=tmp_path)
    with pytest.raises(ValueError, match="recipe of '2:4'"):
        run(("2:4",), recipes={"2:4": (10, 1e-4, {"lr_floor": 0.0})}, out=tmp_path)
    with pytest.raises(ValueError, match="recipe of '2:4'"):
        run(("2:4",), recipes={"2:4": (10,)}, out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_group_by_length_keeps_every_text_and_cuts_padding():
    from sparseprune.bench.recovery import GROUP_CHUNK_BATCHES, group_by_length
    rng = random.Random(3)
    texts = [f"t{i}" for i in range(1000)]
    lengths = [rng.randint(5, 128) for _ in texts]
    out = group_by_length(texts, lengths, 16, seed=0)
    assert sorted(out) == sorted(texts)
    assert out == group_by_length(texts, lengths, 16, seed=0)  # seeded
    assert out != group_by_length(texts, lengths, 16, seed=1)
    length = dict(zip(texts, lengths))

    def padded(order):
        return sum(16 * max(length[t] for t in order[i:i + 16])
                   for i in range(0, len(order) - 15, 16))
    assert padded(out) < 0.7 * padded(texts)
    chunk = 16 * GROUP_CHUNK_BATCHES  # sorted inside each chunk, not across chunks
    first = [length[t] for t in out[:chunk]]
    assert first == sorted(first)
    with pytest.raises(ValueError, match="lengths"):
        group_by_length(texts, lengths[:-1], 16, seed=0)


class CountingTeacher(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_cached_teacher_gives_the_same_run_with_one_forward_per_batch(grad_accum):
    teacher = mlp()
    data = batches(n=6)
    student_a, pruner_a = pruned_student(teacher)
    plain = CountingTeacher(teacher)
    ref = distill(student_a, plain, data, pruner=pruner_a,
                  config=cfg(steps=15, grad_accum=grad_accum))
    assert plain.calls == 15 * grad_accum
    student_b, pruner_b = pruned_student(teacher)
    counted = CountingTeacher(teacher)
    cached = distill(student_b, counted, data, pruner=pruner_b,
                     config=cfg(steps=15, grad_accum=grad_accum, cache_teacher=True))
    assert counted.calls == len(data)  # 15 * grad_accum uses cycle through all 6 batches
    assert cached.losses == ref.losses
    for (na, pa), (nb, pb) in zip(student_a.state_dict().items(),
                                  student_b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_recover_cli_best_runs_each_setting_with_its_recipe(monkeypatch):
    # `sparseprune recover --best`: the four SparseGPT settings, each with its own steps and
    # learning rate, and the shared options (the experiment itself is not run here)
    from sparseprune.bench import recovery
    from sparseprune.cli import main

    seen = {}

    def fake_run(settings, **kw):
        seen.update(kw, settings=settings)
        return []

    monkeypatch.setattr(recovery, "run", fake_run)
    assert main(["recover", "--best", "--out", "unused"]) == 0
    assert seen["settings"] == tuple(recovery.BEST) and seen["recipes"] == recovery.BEST
    for key, value in recovery.BEST_OPTIONS.items():
        assert seen[key] == value, key
    assert set(recovery.BEST) <= set(recovery.SETTINGS)
    assert all(len(r) == 2 or set(r[2]) <= set(recovery.RECIPE_OPTIONS)
               for r in recovery.BEST.values())
    seen.clear()
    assert main(["recover", "--settings", "2:4", "--steps", "5", "--out", "unused"]) == 0
    assert seen["settings"] == ("2:4",) and seen["recipes"] is None and seen["steps"] == 5


def test_by_type_settings_prune_the_nominal_share_of_minilm():
    """The by-type and by-layer recovery settings spread their sparsity over layers: weighted by
    all-MiniLM-L6-v2's layer sizes (four 384x384 attention projections, the 1536x384 FFN
    input and 384x1536 output), they still prune the share their name says, and every
    override glob matches one of the encoder's layers (first match wins, as in Pruner)."""
    import fnmatch

    from sparseprune.bench import recovery

    layer = {"attention.self.query": 384 * 384, "attention.self.key": 384 * 384,
             "attention.self.value": 384 * 384, "attention.output.dense": 384 * 384,
             "intermediate.dense": 1536 * 384, "output.dense": 384 * 1536}
    names = {f"encoder.layer.{i}.{k}": n for i in range(6) for k, n in layer.items()}
    by_type = [s for s in recovery.SETTINGS.values() if s.overrides]
    assert by_type
    for s in by_type:
        used = set()
        pruned = 0.0
        for name, n in names.items():
            glob = next((g for g, _ in s.overrides if fnmatch.fnmatch(name, g)), None)
            used.add(glob)
            pruned += n * (dict(s.overrides)[glob] if glob else s.sparsity)
        assert pruned / sum(names.values()) == pytest.approx(s.sparsity, abs=1e-12), s.name
        assert {g for g, _ in s.overrides} <= used, s.name


def tiny_bert(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32, initializer_range=0.3,
                                     attn_implementation="sdpa")
    return transformers.BertModel(config).eval()


def token_batches(n=6, seed=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[1, 9:] = 0  # padded positions go through the attention mask
        mask[3, 5:] = 0
        out.append({"input_ids": torch.randint(0, 64, (4, 12), generator=g),
                    "attention_mask": mask})
    return out


def test_eager_attention_while_training_gives_the_same_run_and_is_restored():
    """attn_implementation="eager" trains with transformers' explicit softmax(QK^T)V (faster
    backward on the CPU than torch's SDPA), then puts the model's own implementation back;
    the same losses as SDPA up to rounding."""
    teacher = tiny_bert()
    runs, seen = [], []
    for impl in (None, "eager"):
        student, pruner = pruned_student(teacher, sparsity=0.7)
        model = student
        res = distill(student, teacher, token_batches(), pruner=pruner,
                      config=cfg(steps=12, lr=1e-3, attn_implementation=impl),
                      on_step=lambda step, loss: seen.append(model.config._attn_implementation))
        assert model.config._attn_implementation == "sdpa"  # as it was before
        runs.append(res.losses)
        for name, keep in pruner.masks.items():
            assert torch.count_nonzero(pruner.layers[name].weight[~keep]) == 0
    assert seen == ["sdpa"] * 12 + ["eager"] * 12
    assert runs[1] == pytest.approx(runs[0], rel=1e-4, abs=1e-6)
    assert runs[1][-1] < 0.8 * runs[1][0], runs[1]


def test_attn_implementation_is_checked():
    with pytest.raises(ValueError, match="attn_implementation must be"):
        RecoverConfig(attn_implementation="")
    with pytest.raises(ValueError, match="attn_implementation must be"):
        RecoverConfig(attn_implementation=3)
    teacher = mlp()
    student, pruner = pruned_student(teacher)
    with pytest.raises(ValueError, match="holds no transformers model"):
        distill(student, teacher, batches(), pruner=pruner,
                config=cfg(steps=1, attn_implementation="eager"))
    bert = tiny_bert()
    student, pruner = pruned_student(bert, sparsity=0.5)
    with pytest.raises(ValueError, match="attn_implementation='no-such-attention'"):
        distill(student, bert, token_batches(), pruner=pruner,
                config=cfg(steps=1, attn_implementation="no-such-attention"))
    assert student.config._attn_implementation == "sdpa"


def test_recipes_carry_their_own_options(monkeypatch, tmp_path):
    # run() gives each setting its recipe's steps, lr and options (else the shared ones)
    from sparseprune.bench import recovery

    class Fake:
        tokenizer = None

    calls = []
    monkeypatch.setattr(recovery, "load_split",
                        lambda *a, **k: (Fake(), ["a text"], [], ["held out"]))
    monkeypatch.setattr(recovery, "train_batches",
                        lambda *a, **k: [{"input_ids": torch.ones(1, 2)}])
    monkeypatch.setattr(recovery, "_encode", lambda *a, **k: torch.ones(1, 4))
    monkeypatch.setattr(recovery, "table", lambda results: "")
    monkeypatch.setattr(recovery, "_line", lambda r: "")

    def fake_setting(setting, *a, steps, lr, eager_attention, prune_end, layer_weight, **k):
        calls.append((setting.name, steps, lr, eager_attention, prune_end, layer_weight))
        return {}

    monkeypatch.setattr(recovery, "run_setting", fake_setting)
    recovery.run(("2:4", "70%", "90%"), steps=5, lr=1e-4, out=tmp_path, prune_end=0.5,
                 layer_weight=1.0,
                 recipes={"2:4": (7, 2e-4), "70%": (8, 3e-4, {"eager_attention": True}),
                          "90%": (9, 4e-4, {"prune_end": 0.4, "layer_weight": 2.0})})
    assert calls == [("2:4", 7, 2e-4, False, 0.5, 1.0), ("70%", 8, 3e-4, True, 0.5, 1.0),
                     ("90%", 9, 4e-4, False, 0.4, 2.0)]
    calls.clear()
    with pytest.raises(ValueError, match="options from"):
        recovery.run(("2:4",), out=tmp_path, recipes={"2:4": (7, 2e-4, {"warmup": 3})})
    with pytest.raises(ValueError, match=r"prune_end must be in \(0, 1\], got 1.5 \(90%\)"):
        recovery.run(("90%",), out=tmp_path, recipes={"90%": (7, 2e-4, {"prune_end": 1.5})})
    with pytest.raises(ValueError, match="prune_end must be in"):
        recovery.run(("2:4",), out=tmp_path, prune_end=0.0)
    assert calls == []


def test_run_setting_hands_its_options_to_the_distillation(monkeypatch):
    # run_setting itself up to distill(): its RecoverConfig gets the setting's options
    import types

    from sparseprune.bench import recovery

    class Stop(Exception):
        pass

    class FakePruner:
        stats = {}

        def __init__(self, model, config):
            pass

        def calibrate(self, batches):
            return self

        def prune(self):
            return self

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace()
            self.lin = torch.nn.Linear(2, 2)

    seen = {}
    monkeypatch.setattr(recovery, "Pruner", FakePruner)
    monkeypatch.setattr(recovery, "quality", lambda *a: {})
    monkeypatch.setattr(recovery, "_encode", lambda *a: None)
    monkeypatch.setattr(recovery, "distill", lambda *a, config, **k: seen.update(
        vars(config)) or (_ for _ in ()).throw(Stop()))
    st = [types.SimpleNamespace(auto_model=Encoder())]
    with pytest.raises(Stop):
        recovery.run_setting(recovery.SETTINGS["2:4"], st, [], [], [], None, steps=7, lr=3e-4,
                             seed=0, checkpoint_dir=None, time_rounds=1, progress=False,
                             layer_weight=2.0, eager_attention=True, bf16=False)
    assert (seen["steps"], seen["lr"], seen["layer_weight"]) == (7, 3e-4, 2.0)
    assert seen["attn_implementation"] == "eager" and seen["bf16"] is False
    assert st[0].auto_model.config.output_hidden_states is False  # reset after distill


def test_prune_end_sets_where_the_gradual_schedule_ends(monkeypatch):
    from sparseprune.bench import recovery

    seen = {}

    class Stop(Exception):
        pass

    def fake_pruner(model, config):
        seen["end"] = config.schedule.end if config.schedule is not None else None
        raise Stop

    monkeypatch.setattr(recovery, "Pruner", fake_pruner)
    st = [type("M", (), {"auto_model": torch.nn.Linear(2, 2)})()]
    for end, want in ((0.6, int(int(100 * 1.3) * 0.6)), (0.4, int(int(100 * 1.3) * 0.4))):
        with pytest.raises(Stop):
            recovery.run_setting(recovery.SETTINGS["90%"], st, [], [], [], None, steps=100,
                                 lr=1e-4, seed=0, checkpoint_dir=None, time_rounds=1,
                                 progress=False, prune_end=end)
        assert seen["end"] == want


def test_by_layer_setting_is_the_least_drop_split_of_the_sensitivity_run():
    """16x16@50%/sparsegpt-by-layer is what least_drop_split makes of the committed
    sensitivity run (each layer alone at 16x16 blocks 50% and 80%)."""
    import json
    from pathlib import Path

    from sparseprune.bench.recovery import SETTINGS, least_drop_split

    path = Path(__file__).parents[1] / "benchmarks/autoplan/sparsegpt-session5/sensitivity.json"
    split = least_drop_split(json.loads(path.read_text())["rows"], "block:16x16", 0.5)
    assert len(split) == 36
    config = SETTINGS["16x16@50%/sparsegpt-by-layer"].config()  # what run_setting prunes with
    assert {n: config.settings(n).sparsity for n in split} == split


def test_least_drop_split_on_a_small_case():
    def rows(layer, n, d50, d80):
        return [{"layer": layer, "shape": [n, 1], "pattern": "p", "sparsity": s, "drop": d}
                for s, d in ((0.5, d50), (0.8, d80))]

    from sparseprune.bench.recovery import least_drop_split

    # Drop per pruned weight of each step: a 0.05 / 0.067, b 0.001 / 0.0017, c 0.005 / 0.033.
    # 40 of 80 weights to prune: b -> 50% -> 80% (16), c -> 50% (36), c -> 80% (48) beats
    # a -> 50%; the overshoot of 8 is 20% of c (4 grid steps), so c ends at 60%; a stays dense
    data = rows("a", 20, 0.5, 0.9) + rows("b", 20, 0.01, 0.02) + rows("c", 40, 0.1, 0.5)
    split = least_drop_split(data, "p", 0.5)
    assert split == {"a": 0.0, "b": 0.8, "c": pytest.approx(0.6)}
    with pytest.raises(ValueError, match="no sensitivity rows"):
        least_drop_split(data, "other", 0.5)
    with pytest.raises(ValueError, match="cannot prune"):
        least_drop_split(data, "p", 0.9)
