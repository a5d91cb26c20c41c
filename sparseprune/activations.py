"""Activations fused into :class:`~sparseprune.nn.SparseLinear`.

A sparse product's output is a fresh tensor that nothing else holds, so the activation that
follows it can run in place on it: no second output tensor of [batch, out] floats to
allocate, fill and read back. On MiniLM at batch 32 x 128 tokens (90% sparse FFNs) that
took the six FFN GELUs from ~47 ms to a few ms of a ~300 ms encode (benchmarks/RESULTS.md).
With autograd recording, the activation runs out of place (its backward needs its input).

:func:`fuse_activations` finds the activations that directly follow a SparseLinear:
``nn.Sequential`` neighbours, and the ``dense`` -> ``intermediate_act_fn`` pair of the
``*Intermediate`` blocks of HF BERT-style models. It moves each into the layer and puts an
``nn.Identity`` where it was; the layer records that module's name within their common
parent (``fused_from``, e.g. ``"intermediate_act_fn"`` or ``"1"``) so that
:func:`sparseprune.load` redoes the same replacement in a fresh model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "activation_of", "apply_activation", "fuse_activations"]

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def activation_of(module: nn.Module) -> str | None:
    """The fusable activation ``module`` computes, or None (unknown modules are never
    fused: only exact matches of what the fused kernel path computes)."""
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    # transformers' GELUActivation (the "gelu" of BERT configs) calls F.gelu exactly.
    if type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is F.gelu:
        return "gelu"
    return None


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``activation(y)``, in place when autograd does not record ``y``."""
    if activation is None:
        return y
    inplace = not (torch.is_grad_enabled() and y.requires_grad)
    if activation == "relu":
        return torch.relu_(y) if inplace else F.relu(y)
    approximate = "tanh" if activation == "gelu_tanh" else "none"
    if inplace:
        return torch.ops.aten.gelu_(y, approximate=approximate)
    return F.gelu(y, approximate=approximate)


def _pairs(model: nn.Module):
    """(linear name, activation name) of every activation that directly follows a layer."""
    from .nn import SparseLinear

    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (a, first), (b, second) in zip(kids, kids[1:]):
                if isinstance(first, SparseLinear) and activation_of(second):
                    yield prefix + a, prefix + b
        elif type(mod).__name__.endswith("Intermediate") and \
                isinstance(getattr(mod, "dense", None), SparseLinear) and \
                activation_of(getattr(mod, "intermediate_act_fn", nn.Identity())):
            yield prefix + "dense", prefix + "intermediate_act_fn"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fuse_activations(model: nn.Module) -> dict[str, str]:
    """Moves every activation that directly follows a SparseLinear into it (see the module
    docstring); returns {linear name: activation}. Idempotent."""
    fused = {}
    for lin_name, act_name in list(_pairs(model)):
        layer = model.get_submodule(lin_name)
        if layer.activation is not None:
            continue
        layer.activation = activation_of(model.get_submodule(act_name))
        layer.fused_from = act_name.rpartition(".")[2]  # a sibling of the layer
        _replace(model, act_name, nn.Identity())
        fused[lin_name] = layer.activation
    return fused


def redo_fusion(model: nn.Module, layer_name: str, activation: str, fused_from: str) -> None:
    """Redoes a recorded fusion in ``model`` (loading a checkpoint): the sibling
    ``fused_from`` of layer ``layer_name`` must compute ``activation`` (or already be the
    Identity left by a fusion); it becomes an Identity. ValueError otherwise."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"layer {layer_name!r}: activation must be one of {ACTIVATIONS}, got "
                         f"{activation!r}")
    if not isinstance(fused_from, str) or not fused_from or "." in fused_from:
        raise ValueError(f"layer {layer_name!r}: fused_from must name a sibling module, got "
                         f"{fused_from!r}")
    parent = layer_name.rpartition(".")[0]
    fused_from = f"{parent}.{fused_from}" if parent else fused_from
    try:
        current = model.get_submodule(fused_from)
    except AttributeError:
        raise ValueError(f"layer {layer_name!r} fused the activation {fused_from!r}, which "
                         f"the model does not have") from None
    if type(current) is not nn.Identity and activation_of(current) != activation:
        raise ValueError(f"layer {layer_name!r} fused a {activation} from {fused_from!r}, but "
                         f"the model has {current!r} there")
    _replace(model, fused_from, nn.Identity())
