"""Activations fused into SparseLinear (sparseprune.activations): the same results as the
unfused model, in place only when autograd is off, and kept across sp.save / sp.load."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseprune as sp
from sparseprune.activations import activation_of, fuse_activations
from sparseprune.nn import SparseLinear, sparsify

ACTS = {"relu": nn.ReLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh")}


def _pruned_linear(out_f, in_f, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=gen))
        lin.weight.mul_(sp.masks.unstructured(lin.weight.abs(), 0.7))
    return lin


@pytest.mark.parametrize("activation", sorted(ACTS))
@pytest.mark.parametrize("fmt", ["csr", "nm", "bsr"])
@pytest.mark.parametrize("batch", [1, 7, 200])
def test_fused_activation_matches(activation, fmt, batch):
    lin = _pruned_linear(24, 32)
    kw = {"block": (4, 4)} if fmt == "bsr" else {}
    if fmt == "nm":
        with torch.no_grad():
            lin.weight.copy_(torch.randn(24, 32) * sp.masks.n_m(torch.rand(24, 32), 2, 4))
    sl = SparseLinear.from_linear(lin, fmt, **kw)
    sl.activation = activation
    x = torch.randn(batch, 32)
    want = ACTS[activation](x.double() @ lin.weight.double().t() + lin.bias.double())
    with torch.no_grad():
        torch.testing.assert_close(sl(x).double(), want, rtol=1e-4, atol=1e-4)
    assert "activation=" + activation in repr(sl)


def test_with_autograd_the_activation_is_out_of_place_and_differentiable():
    lin = _pruned_linear(8, 12)
    sl = SparseLinear.from_linear(lin, "csr")
    sl.activation = "gelu"
    x = torch.randn(5, 12, requires_grad=True)
    y = sl(x)
    assert y.grad_fn is not None and "Gelu" in type(y.grad_fn).__name__
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.gelu(F.linear(x2, lin.weight.detach(), lin.bias.detach())).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)


def test_bad_activation_is_rejected():
    with pytest.raises(ValueError, match="activation must be"):
        SparseLinear(sp.CSRWeight.from_dense(torch.randn(4, 4)), activation="swish")


def test_activation_of_only_knows_exact_matches():
    assert activation_of(nn.ReLU()) == "relu"
    assert activation_of(nn.GELU()) == "gelu"
    assert activation_of(nn.GELU(approximate="tanh")) == "gelu_tanh"
    for other in (nn.SiLU(), nn.Tanh(), nn.LeakyReLU(), nn.Identity(), nn.Linear(2, 2)):
        assert activation_of(other) is None


class Intermediate(nn.Module):
    """The shape of HF's BertIntermediate: dense, then intermediate_act_fn."""

    def __init__(self):
        super().__init__()
        self.dense = _pruned_linear(48, 16, seed=1)
        self.intermediate_act_fn = nn.GELU()

    def forward(self, x):
        return self.intermediate_act_fn(self.dense(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.intermediate = Intermediate()
        self.mlp = nn.Sequential(_pruned_linear(32, 48, seed=2), nn.ReLU(),
                                 _pruned_linear(16, 32, seed=3), nn.SiLU())
        self.act_elsewhere = nn.ReLU()  # not after a Linear: must stay

    def forward(self, x):
        return self.act_elsewhere(self.mlp(self.intermediate(x))) + x


def test_sparsify_fuses_and_keeps_the_function():
    model = Block()
    x = torch.randn(70, 16)
    with torch.no_grad():
        want = model(x)
    report = sparsify(model)
    fused = {r.name: r.activation for r in report.layers if r.activation}
    assert fused == {"intermediate.dense": "gelu", "mlp.0": "relu"}  # SiLU is not fusable
    assert isinstance(model.intermediate.intermediate_act_fn, nn.Identity)
    assert isinstance(model.mlp[1], nn.Identity) and isinstance(model.mlp[3], nn.SiLU)
    assert isinstance(model.act_elsewhere, nn.ReLU)
    assert "fused gelu" in str(report)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
    assert fuse_activations(model) == {}  # idempotent


def test_sparsify_can_leave_activations_alone():
    model = Block()
    sparsify(model, fuse_activations=False)
    assert isinstance(model.intermediate.intermediate_act_fn, nn.GELU)
    assert model.intermediate.dense.activation is None


def test_save_load_redoes_the_fusion(tmp_path):
    model = Block()
    x = torch.randn(9, 16)
    sparsify(model)
    with torch.no_grad():
        want = model(x)
    path = tmp_path / "m.safetensors"
    sp.save(model, path)
    fresh = sp.load(Block(), path)
    assert fresh.intermediate.dense.activation == "gelu"
    assert isinstance(fresh.intermediate.intermediate_act_fn, nn.Identity)
    assert isinstance(fresh.mlp[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want)
    # loading again into the already fused model is fine too
    again = sp.load(fresh, path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), want)


def test_load_refuses_a_fusion_the_model_cannot_take(tmp_path):
    model = Block()
    sparsify(model)
    path = tmp_path / "m.safetensors"
    sp.save(model, path)
    other = Block()
    other.intermediate.intermediate_act_fn = nn.SiLU()  # not the activation that was fused
    with pytest.raises(ValueError, match="fused a gelu"):
        sp.load(other, path)


def test_torch_compile_of_a_fused_model():
    model = Block()
    sparsify(model)
    x = torch.randn(33, 16)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(copy.deepcopy(model), fullgraph=True)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
