"""SparseLinear / SparseConv2d / sparsify against the dense modules they replace."""

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseprune as sp
from sparseprune.nn import SparseConv2d, SparseLinear, detect_pattern, sparsify

from .conftest import SHAPES, TOL, assert_matches, reference

FORMATS = ["csr", "bsr", "nm"]


def pruned_linear(out_f, in_f, fmt, *, bias=True, dtype=torch.float32, seed=0):
    """An nn.Linear whose weight has the zero pattern ``fmt`` packs best."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=gen))
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=gen))
        scores = lin.weight.abs()
        if fmt == "nm":
            keep = sp.masks.n_m(scores, 2, 4)
        elif fmt == "bsr" and out_f >= 4 and in_f >= 4:
            keep = sp.masks.block(scores, 0.5, block=(4, 4))
        else:
            keep = sp.masks.unstructured(scores, 0.7)
        lin.weight.mul_(keep)
    return lin.to(dtype)


def from_linear(lin, fmt):
    kw = {"block": (4, 4)} if fmt == "bsr" else {"n": 2, "m": 4} if fmt == "nm" else {}
    return SparseLinear.from_linear(lin, fmt, **kw)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear(fmt, dtype, shape, bias):
    out_f, in_f = shape
    lin = pruned_linear(out_f, in_f, fmt, bias=bias, dtype=dtype)
    sl = from_linear(lin, fmt)
    assert sl.format == fmt
    for lead in [(), (3,), (2, 5), (1, 1, 4)]:  # 1-D, 2-D, 3-D, 4-D inputs
        x = torch.randn(*lead, in_f).to(dtype)
        y = sl(x)
        assert y.shape == (*lead, out_f) and y.dtype == dtype
        assert_matches(y, reference(x, lin.weight, lin.bias), dtype)


@pytest.mark.parametrize("fmt", FORMATS)
def test_masked_weight_and_mask_argument(fmt):
    lin = nn.Linear(24, 12)
    mask = sp.masks.n_m(lin.weight.abs(), 2, 4) if fmt == "nm" else \
        sp.masks.block(lin.weight.abs(), 0.5, block=(4, 4)) if fmt == "bsr" else \
        sp.masks.unstructured(lin.weight.abs(), 0.8)
    sl = SparseLinear.from_linear(lin, fmt, mask=mask)
    x = torch.randn(5, 24)
    assert_matches(sl(x), reference(x, lin.weight * mask, lin.bias), torch.float32)


def test_auto_detection():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    assert str(detect_pattern(w * sp.masks.n_m(w.abs(), 2, 4))) == "2:4"
    assert str(detect_pattern(w * sp.masks.n_m(w.abs(), 1, 4))) == "1:4"
    assert str(detect_pattern(w * sp.masks.n_m(w.abs(), 2, 8))) == "2:8"
    assert str(detect_pattern(w * sp.masks.block(w.abs(), 0.8, block=(16, 16)))) == \
        "block 16x16"
    assert str(detect_pattern(w * sp.masks.block(w.abs(), 0.8, block=(8, 8)))) == "block 8x8"
    assert str(detect_pattern(w * sp.masks.unstructured(w.abs(), 0.9))) == "unstructured"
    assert str(detect_pattern(w)) == "unstructured"
    lin = nn.Linear(128, 64)
    nm_format = "nm" if sp.cpu_capability() == "avx512" else "csr"  # nn.choose_format
    for keep, fmt, pattern in [(sp.masks.n_m(w.abs(), 2, 4), nm_format, "2:4"),
                               (sp.masks.block(w.abs(), 0.8, block=(16, 16)), "bsr",
                                "block 16x16"),
                               (sp.masks.unstructured(w.abs(), 0.9), "csr", "unstructured")]:
        with torch.no_grad():
            lin.weight.copy_(w * keep)
        sl = SparseLinear.from_linear(lin)
        assert (sl.format, sl.pattern) == (fmt, pattern)
        assert f"format={fmt}, pattern={pattern}" in repr(sl)
        x = torch.randn(3, 128)
        assert_matches(sl(x), reference(x, lin.weight, lin.bias), torch.float32)


def test_auto_format_takes_nm_only_where_the_row_tile_kernel_runs():
    from sparseprune.nn import Pattern, choose_format
    two_four = Pattern("nm", n=2, m=4)
    with sp.use_isa("avx512") if "avx512" in sp.available_isas() else nullcontext():
        expected = "nm" if sp.cpu_capability() == "avx512" else "csr"
        assert choose_format(two_four, torch.float32, "cpu") == expected
        assert choose_format(two_four, torch.bfloat16, "cpu") == "csr"
        assert choose_format(two_four, torch.float32, "cuda") == "csr"
        assert choose_format(Pattern("nm", n=2, m=4, fill=0.3), torch.float32) == "csr"
    with sp.use_isa("avx2") if "avx2" in sp.available_isas() else nullcontext():
        if sp.cpu_capability() != "avx512":
            assert choose_format(two_four, torch.float32, "cpu") == "csr"


def test_explicit_format_detects_parameters_or_says_why():
    w = torch.randn(16, 32)
    lin = nn.Linear(32, 16)
    with torch.no_grad():
        lin.weight.copy_(w * sp.masks.n_m(w.abs(), 1, 4))
    assert SparseLinear.from_linear(lin, "nm").nm == (1, 4)
    with torch.no_grad():
        lin.weight.copy_(w * sp.masks.unstructured(w.abs(), 0.5))
    with pytest.raises(ValueError, match="not N:M sparse"):
        SparseLinear.from_linear(lin, "nm")
    with pytest.raises(ValueError, match="no whole-block"):
        SparseLinear.from_linear(lin, "bsr")
    with pytest.raises(ValueError, match="format must be one of"):
        SparseLinear.from_linear(lin, "coo")
    with pytest.raises(ValueError, match="block= only applies"):
        SparseLinear.from_linear(lin, "csr", block=(4, 4))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="bool tensor"):
        SparseLinear.from_linear(lin, mask=torch.ones(16, 32))
    # A packed weight wrapped directly names the pattern it stores.
    assert SparseLinear(sp.NMWeight.from_dense(w * sp.masks.n_m(w.abs(), 2, 8), 2, 8)).pattern \
        == "2:8"
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        SparseLinear.from_linear(nn.Linear(4, 4).double())


def test_bad_inputs():
    sl = from_linear(pruned_linear(8, 12, "csr"), "csr")
    with pytest.raises(ValueError, match=r"\[\.\.\., 12\]"):
        sl(torch.randn(3, 11))
    with pytest.raises(TypeError, match="input is torch.float64"):
        sl(torch.randn(3, 12, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        copy.deepcopy(sl).double()(torch.randn(3, 12, dtype=torch.float64))


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_round_trip_and_to(fmt):
    lin = pruned_linear(20, 36, fmt)
    sl = from_linear(lin, fmt)
    # A module packed from another weight (other nnz) takes the state dict and then computes
    # exactly as the original.
    other = from_linear(pruned_linear(20, 36, fmt, seed=1), fmt)
    other.load_state_dict(sl.state_dict())
    x = torch.randn(4, 36)
    torch.testing.assert_close(other(x), sl(x), rtol=0, atol=0)
    for name, t in sl.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], t, rtol=0, atol=0)
    half = copy.deepcopy(sl).to(torch.bfloat16)
    assert half.bias.dtype == torch.bfloat16
    for f in half._fields:  # index tensors keep their dtypes
        if f != half._values_name:
            assert getattr(half, f).dtype == getattr(sl, f).dtype
    xb = x.bfloat16()
    # Against the bf16-rounded weights: the fp32 ones put their own rounding into the
    # comparison (it failed about one run in four at the bf16 tolerance).
    assert_matches(half(xb), reference(xb, lin.weight.bfloat16(), lin.bias.bfloat16()),
                   torch.bfloat16)


def test_state_dict_is_validated():
    sl = from_linear(pruned_linear(8, 16, "csr"), "csr")
    sd = sl.state_dict()
    bad = dict(sd, col_indices=sd["col_indices"].clone())
    bad["col_indices"][0] = 16
    with pytest.raises(sp.FormatError, match="col_indices"):
        copy.deepcopy(sl).load_state_dict(bad)
    bad = dict(sd, col_indices=sd["col_indices"].to(torch.int64))
    with pytest.raises(sp.FormatError, match="dtype"):
        copy.deepcopy(sl).load_state_dict(bad)
    bad = dict(sd, values=sd["values"][:-1].clone())
    with pytest.raises(sp.FormatError, match="values|col_indices|row_offsets"):
        copy.deepcopy(sl).load_state_dict(bad)
    bad = dict(from_linear(pruned_linear(8, 14, "nm"), "nm").state_dict())
    bad["metadata"] = bad["metadata"].clone()
    bad["metadata"][0, -1] = 0xFF  # last group has 2 columns: index 3 is out of range
    with pytest.raises(sp.FormatError, match="metadata"):
        from_linear(pruned_linear(8, 14, "nm"), "nm").load_state_dict(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_backward(fmt):
    lin = pruned_linear(12, 20, fmt)
    sl = from_linear(lin, fmt)
    x = torch.randn(2, 3, 20, requires_grad=True)
    sl(x).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    lin(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, **TOL[torch.float32])
    torch.testing.assert_close(sl.bias.grad, lin.bias.grad, **TOL[torch.float32])
    # The stored values get the dense gradient at their positions; pruned entries get none.
    packed = sl.packed_weight().with_values(sl._parameters[sl._values_name].grad)
    kept = lin.weight.detach() != 0
    torch.testing.assert_close(packed.to_dense()[kept], lin.weight.grad[kept], **TOL[torch.float32])


def conv_with_zeros(cin, cout, k, sparsity=0.7, **kw):
    conv = nn.Conv2d(cin, cout, k, **kw)
    with torch.no_grad():
        conv.weight.mul_(sp.masks.unstructured(conv.weight.abs(), sparsity))
    return conv


@pytest.mark.parametrize("kw", [
    dict(k=1), dict(k=1, stride=2), dict(k=1, padding=1), dict(k=3, padding=1),
    dict(k=3, stride=2, padding=1, bias=False), dict(k=(3, 2), dilation=2, padding=(2, 1)),
    dict(k=3, padding="same", dilation=2), dict(k=3, padding="valid"),
    dict(k=3, padding=1, padding_mode="reflect"), dict(k=3, padding=2, padding_mode="circular"),
    dict(k=3, padding=1, padding_mode="replicate"),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_matches(kw, dtype):
    kw = dict(kw)
    k = kw.pop("k")
    torch.manual_seed(0)
    conv = conv_with_zeros(5, 7, k, **kw).to(dtype)
    sc = SparseConv2d.from_conv(conv)
    x = torch.randn(2, 5, 9, 8).to(dtype)
    y = sc(x)
    ref = F.conv2d(F.pad(x.double(), conv._reversed_padding_repeated_twice,
                         mode=conv.padding_mode) if conv.padding_mode != "zeros" else x.double(),
                   conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                   conv.stride, 0 if conv.padding_mode != "zeros" else conv.padding,
                   conv.dilation)
    assert y.shape == ref.shape
    assert_matches(y, ref, dtype)
    assert_matches(sc(x[0]), ref[0], dtype)  # unbatched input


def test_conv_rejects_groups_and_bad_input():
    with pytest.raises(ValueError, match="groups=1 only"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    sc = SparseConv2d.from_conv(conv_with_zeros(3, 4, 3))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        sc(torch.randn(1, 4, 8, 8))


def test_conv_state_dict_and_backward():
    conv = conv_with_zeros(4, 6, 3, padding=1)
    sc = SparseConv2d.from_conv(conv)
    other = SparseConv2d.from_conv(conv_with_zeros(4, 6, 3, padding=1))
    other.load_state_dict(sc.state_dict())
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    torch.testing.assert_close(other(x), sc(x), rtol=0, atol=0)
    sc(x).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    conv(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, **TOL[torch.float32])


class TinyBert(nn.Module):
    """An HF-style encoder block: attention projections, MLP, LayerNorm, an embedding."""

    def __init__(self, d=32, vocab=50):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.intermediate = nn.Linear(d, 4 * d)
        self.output = nn.Linear(4 * d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, ids):
        h = self.embed(ids)
        q, k, v = self.query(h), self.key(h), self.value(h)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        h = self.norm(h + att)
        return self.head(self.norm(h + self.output(F.gelu(self.intermediate(h)))))


def prune_model(model, cfg):
    pruner = sp.Pruner(model, cfg)
    pruner.prune()
    return pruner.finalize()


def test_sparsify_hf_style_model():
    torch.manual_seed(0)
    model = TinyBert()
    prune_model(model, sp.PruneConfig(pattern="2:4", criterion="magnitude",
                                      exclude=["head", "intermediate"]))
    with torch.no_grad():
        model.intermediate.weight.mul_(
            sp.masks.unstructured(model.intermediate.weight.abs(), 0.9))
    dense = copy.deepcopy(model)
    ids = torch.randint(0, 50, (2, 7))
    report = sparsify(model, min_sparsity=0.5)
    assert report.model is model
    swapped = {r.name: r for r in report.swapped}
    assert set(swapped) == {"query", "key", "value", "output", "intermediate"}
    assert swapped["query"].pattern == "2:4" and swapped["intermediate"].format == "csr"
    assert swapped["query"].format == ("nm" if sp.cpu_capability() == "avx512" else "csr")
    assert isinstance(model.query, SparseLinear) and type(model.head) is nn.Linear
    assert [r.name for r in report.skipped] == ["head"]
    assert "min_sparsity" in report.skipped[0].reason
    assert report.bytes_saved == sum(r.dense_bytes - r.sparse_bytes for r in report.swapped) > 0
    assert report.sparse_bytes == sum(
        m.packed_nbytes for m in model.modules() if isinstance(m, SparseLinear)) + \
        model.head.weight.numel() * 4
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), dense(ids), rtol=1e-4, atol=1e-4)
    assert f"query: Linear (32, 32), 50.0% zeros, {swapped['query'].format} (2:4)" in str(report)


def test_sparsify_options():
    model = TinyBert()
    for lin in (model.query, model.key):
        with torch.no_grad():
            lin.weight.mul_(sp.masks.unstructured(lin.weight.abs(), 0.6))
    report = sparsify(copy.deepcopy(model), min_sparsity=0.0, exclude="key")
    assert "key" not in {r.name for r in report.layers}
    assert len(report.swapped) == 5
    report = sparsify(model, min_sparsity=0.7)
    assert report.swapped == []
    report = sparsify(model, include="query", format="csr", min_sparsity=0.5)
    assert [r.name for r in report.swapped] == ["query"]
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(model, min_sparsity=1.5)
    with pytest.raises(TypeError, match="nn.Module"):
        sparsify("model")
    d = sparsify(nn.Sequential(nn.Linear(4, 4).double()), min_sparsity=0.0)
    assert d.swapped == [] and "float64" in d.skipped[0].reason


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, groups=4, padding=1), nn.Flatten(),
                         nn.Linear(16 * 8 * 8, 10))


def test_sparsify_cnn():
    torch.manual_seed(0)
    model = small_cnn()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.mul_(sp.masks.unstructured(mod.weight.abs(), 0.8))
    dense = copy.deepcopy(model)
    report = sparsify(model)
    assert [r.name for r in report.swapped] == ["0", "2", "6"]
    assert [(r.name, r.reason) for r in report.skipped] == [("4", "groups=4 (only groups=1 "
                                                            "is supported)")]
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), dense(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["auto", "csr"])
def test_torch_compile_fullgraph(fmt):
    torch.manual_seed(0)
    model = TinyBert()
    prune_model(model, sp.PruneConfig(pattern="2:4", criterion="magnitude", exclude="head"))
    sparsify(model, fmt)
    cnn = small_cnn()
    with torch.no_grad():
        for mod in cnn.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.mul_(sp.masks.unstructured(mod.weight.abs(), 0.8))
    sparsify(cnn, fmt)
    ids, x = torch.randint(0, 50, (2, 7)), torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        for m, inp in ((model, ids), (cnn, x)):
            compiled = torch.compile(m, fullgraph=True, backend="aot_eager" if fmt == "csr"
                                     else "inductor")
            torch.testing.assert_close(compiled(inp), m(inp), rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph_backward():
    """Training through a compiled sparse layer: the same gradients as eager."""
    lin = pruned_linear(12, 20, "csr")
    sl = from_linear(lin, "csr")
    compiled = torch.compile(sl, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 20, requires_grad=True)
    compiled(x).square().sum().backward()
    got = (x.grad.clone(), sl.values.grad.clone(), sl.bias.grad.clone())
    x.grad = sl.values.grad = sl.bias.grad = None
    sl(x).square().sum().backward()
    for a, b in zip(got, (x.grad, sl.values.grad, sl.bias.grad)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_conv_mask_argument():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    mask = sp.masks.n_m(conv.weight.abs(), 2, 4)  # 4-D, grouped along in*kh*kw
    sc = SparseConv2d.from_conv(conv, mask=mask)
    assert sc.pattern == "2:4"
    x = torch.randn(2, 4, 5, 5)
    ref = F.conv2d(x.double(), (conv.weight * mask).double(), conv.bias.double(), padding=1)
    assert_matches(sc(x), ref, torch.float32)


def test_sparsify_transformers_bert():
    """A real (tiny, randomly initialised) transformers BertModel, if transformers is there."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32)
    model = transformers.BertModel(cfg).eval()
    prune_model(model, sp.PruneConfig(pattern="unstructured", sparsity=0.8,
                                      criterion="magnitude", include="encoder.layer.*"))
    dense = copy.deepcopy(model)
    report = sparsify(model)
    assert len(report.swapped) == 12 and all(r.name.startswith("encoder.layer.")
                                             for r in report.swapped)
    assert [r.name for r in report.skipped] == ["pooler.dense"]
    # each layer's FFN GELU (transformers' GELUActivation) is fused into its dense layer
    assert {r.name for r in report.layers if r.activation == "gelu"} == {
        f"encoder.layer.{i}.intermediate.dense" for i in range(2)}
    assert isinstance(model.encoder.layer[0].intermediate.intermediate_act_fn, nn.Identity)
    ids = torch.randint(0, 64, (2, 9))
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state,
                                   dense(input_ids=ids).last_hidden_state, rtol=1e-4, atol=1e-4)


def test_csr_index_width_follows_density():
    # 8-bit column indices from 20% nonzeros on (CSR8_MIN_DENSITY), 16-bit below; either
    # computes the linear's output, and a state dict of one loads into a module of the other
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 600, generator=gen)
    mods = {}
    for sparsity, bits in ((0.5, 8), (0.7, 8), (0.9, 16)):
        lin = nn.Linear(600, 40)
        with torch.no_grad():
            lin.weight.mul_(sp.masks.unstructured(lin.weight.abs(), sparsity))
        sl = SparseLinear.from_linear(lin)
        assert sl.format == "csr" and sl.col_indices.element_size() * 8 == bits, sparsity
        assert sl.packed_weight().index_bits == bits
        assert_matches(sl(x), reference(x, lin.weight, lin.bias), torch.float32)
        mods[sparsity] = (sl, lin)
    (sl8, lin8), (sl16, lin16) = mods[0.5], mods[0.9]
    state8, state16 = copy.deepcopy(sl8.state_dict()), copy.deepcopy(sl16.state_dict())
    sl16.load_state_dict(state8)
    assert sl16.col_indices.dtype == torch.uint8
    assert_matches(sl16(x), reference(x, lin8.weight, lin8.bias), torch.float32)
    sl8.load_state_dict(state16)  # and back: 16-bit into an 8-bit module
    assert sl8.col_indices.dtype == torch.uint16
    assert_matches(sl8(x), reference(x, lin16.weight, lin16.bias), torch.float32)
    # the same number of stored entries both ways: only the index width differs
    lin = nn.Linear(600, 40)
    with torch.no_grad():
        lin.weight.mul_(sp.masks.unstructured(lin.weight.abs(), 0.5))
    a, b = SparseLinear.from_linear(lin), SparseLinear.from_linear(lin)
    b.load_state_dict({**b.state_dict(), **a.packed_weight().with_index_bits(None).tensors()})
    assert b.col_indices.dtype == torch.uint16 and a.col_indices.dtype == torch.uint8
    assert_matches(b(x), reference(x, lin.weight, lin.bias), torch.float32)
