"""Removing channels for real: parameters sliced, module attributes updated, plain modules.

:func:`shrink` takes the groups of a model and a keep-mask per group and slices every member
(rows, columns, BatchNorm statistics, head counts). The kept indices form a *plan*, a small
JSON document: a fresh model built from its original config, shrunk with the same plan
(:func:`apply_plan`), takes the shrunk model's ``state_dict`` as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .groups import Group

__all__ = ["shrink", "permute", "refit_readers", "make_plan", "apply_plan", "save_plan", "load_plan",
           "PLAN_VERSION"]

PLAN_VERSION = 1


def _check_keeps(groups: Sequence[Group], keeps: Mapping[str, torch.Tensor]) -> dict:
    by_name = {g.name: g for g in groups}
    out = {}
    for name, keep in keeps.items():
        if name not in by_name:
            raise ValueError(f"no group {name!r}; groups: {list(by_name)[:20]}")
        g = by_name[name]
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or \
                keep.shape != (g.size,):
            raise ValueError(f"group {name!r}: keep must be a bool tensor of shape ({g.size},), "
                             f"got {getattr(keep, 'dtype', type(keep).__name__)} "
                             f"{tuple(getattr(keep, 'shape', ()))}")
        if not keep.any():
            raise ValueError(f"group {name!r}: removing all {g.size} {g.kind}s would cut the "
                             f"model in two; keep at least one")
        out[name] = keep.cpu()
    return out


def _slice_param(module: nn.Module, pname: str, dim: int, idx: torch.Tensor) -> None:
    t = getattr(module, pname, None)
    if t is None:
        return
    new = t.detach().index_select(dim, idx.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, pname, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[pname] = new


def _apply(module: nn.Module, name: str, role: str, keep_idx: torch.Tensor) -> None:
    n = keep_idx.numel()
    if role == "heads":
        head = module.attention_head_size
        module.num_attention_heads = n // head
        module.all_head_size = n
        return
    if isinstance(module, nn.Conv2d) and role == "through":  # depthwise: a filter per channel
        for p in ("weight", "weight_mask", "bias"):
            _slice_param(module, p, 0, keep_idx)
        module.in_channels = module.out_channels = module.groups = n
    elif isinstance(module, (nn.Linear, nn.Conv2d)):
        out_attr, in_attr = (("out_features", "in_features") if isinstance(module, nn.Linear)
                             else ("out_channels", "in_channels"))
        dim = 0 if role == "out" else 1
        _slice_param(module, "weight", dim, keep_idx)
        _slice_param(module, "weight_mask", dim, keep_idx)
        if role == "out":
            _slice_param(module, "bias", 0, keep_idx)
        setattr(module, out_attr if role == "out" else in_attr, n)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        for p in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(module, p, 0, keep_idx)
        module.num_features = n
    else:
        raise ValueError(f"cannot shrink {type(module).__name__} {name!r} as {role!r}")


def _dim_size(module: nn.Module, role: str) -> int:
    if role == "heads":
        return module.all_head_size
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features  # may have neither affine weights nor running stats
    return module.weight.shape[1] if role == "in" else module.weight.shape[0]


def shrink(model: nn.Module, groups: Sequence[Group], keeps: Mapping[str, torch.Tensor]) -> None:
    """Removes, in place, the units of each group that ``keeps[group.name]`` (bool
    ``[size]``) marks False; groups not in ``keeps`` stay whole. Optimizers built before
    hold the old parameters: build them again."""
    keeps = _check_keeps(groups, keeps)
    modules = dict(model.named_modules())
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for g in groups:
        keep = keeps.get(g.name)
        if keep is None or keep.all():
            continue
        for m in g.members:
            if m.module not in modules:
                raise ValueError(f"group {g.name!r} names module {m.module!r}, which the model "
                                 f"does not have")
            key = (m.module, m.role)
            if key not in masks:
                masks[key] = torch.ones(_dim_size(modules[m.module], m.role), dtype=torch.bool)
            mask = masks[key]
            removed = m.indices(~keep)
            if removed.numel() and int(removed.max()) >= mask.numel():
                raise ValueError(f"group {g.name!r} reaches index {int(removed.max())} of "
                                 f"{m.module!r}, which has {mask.numel()}")
            mask[removed] = False
    for (name, role), mask in masks.items():
        _apply(modules[name], name, role, mask.nonzero().flatten())


def make_plan(groups: Sequence[Group], keeps: Mapping[str, torch.Tensor]) -> dict:
    """The JSON-able record of what :func:`shrink` removed."""
    keeps = _check_keeps(groups, keeps)
    sizes = {g.name: g for g in groups}
    return {"version": PLAN_VERSION, "groups": {
        n: {"kind": sizes[n].kind, "size": sizes[n].size,
            "keep": keep.nonzero().flatten().tolist()} for n, keep in keeps.items()}}


def _keeps_from_plan(plan, groups: Sequence[Group]) -> dict[str, torch.Tensor]:
    """Validates an untrusted plan against the model's groups."""
    if not isinstance(plan, Mapping) or plan.get("version") != PLAN_VERSION or \
            not isinstance(plan.get("groups"), Mapping):
        raise ValueError(f"not a structured pruning plan (version {PLAN_VERSION} with a "
                         f"'groups' mapping)")
    by_name = {g.name: g for g in groups}
    keeps = {}
    for name, spec in plan["groups"].items():
        g = by_name.get(name)
        if g is None:
            raise ValueError(f"plan group {name!r} is not a group of this model; its groups: "
                             f"{list(by_name)[:20]}")
        if not isinstance(spec, Mapping) or spec.get("size") != g.size or \
                spec.get("kind") != g.kind:
            raise ValueError(f"plan group {name!r}: expected kind {g.kind!r} and size {g.size}, "
                             f"got {spec!r:.200}")
        idx = spec.get("keep")
        if not isinstance(idx, list) or not idx or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < g.size for i in idx) \
                or len(set(idx)) != len(idx):
            raise ValueError(f"plan group {name!r}: 'keep' must be a non-empty list of distinct "
                             f"indices in [0, {g.size})")
        keep = torch.zeros(g.size, dtype=torch.bool)
        keep[torch.tensor(idx)] = True
        keeps[name] = keep
    return keeps


def apply_plan(model: nn.Module, plan: Mapping, groups: Sequence[Group]) -> None:
    """Shrinks ``model`` (built fresh from its config) the way ``plan`` says, so that the
    shrunk model's ``state_dict`` loads into it."""
    shrink(model, groups, _keeps_from_plan(plan, groups))


def save_plan(plan: Mapping, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(plan, f)


def load_plan(path: str | os.PathLike) -> dict:
    with open(path) as f:
        try:
            plan = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(plan, dict):
        raise ValueError(f"{path}: not a structured pruning plan")
    return plan


def permute(model: nn.Module, group: Group, perm: torch.Tensor) -> None:
    """Reorders, in place, the units of ``group`` in every member: new unit ``j`` is old unit
    ``perm[j]``. The model's function is unchanged."""
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    if perm.shape != (group.size,) or not torch.equal(perm.sort().values,
                                                      torch.arange(group.size)):
        raise ValueError(f"group {group.name!r}: perm must be a permutation of "
                         f"range({group.size})")
    modules = dict(model.named_modules())
    for m in group.members:
        if m.role == "heads":
            continue  # head order lives in the q/k/v rows and output columns
        mod = modules[m.module]
        full = torch.arange(_dim_size(mod, m.role))
        full[m.offset:m.offset + group.size * m.unit] = \
            (m.offset + perm[:, None] * m.unit + torch.arange(m.unit)).flatten()
        _apply(mod, m.module, m.role, full)


def refit_readers(model: nn.Module, groups: Sequence[Group], keeps: Mapping[str, torch.Tensor],
                  grams: Mapping[str, torch.Tensor], *, damp: float = 0.01) -> list[str]:
    """Before the removed units are masked or shrunk away: rewrites the kept columns of
    every Linear/Conv2d that reads a removed unit so that it best reproduces, on the calibration inputs, what it computed
    with all of them: ``W_K += W_R G_RK (G_KK + damp * mean(diag G) I)^-1`` with ``G`` the
    Gram matrix of its inputs (``grams[name]``, ``[in, in]``; for Conv2d over the unfolded
    ``in * kh * kw`` features). Returns the layers refitted."""
    keeps = _check_keeps(groups, keeps)
    modules = dict(model.named_modules())
    removed: dict[str, torch.Tensor] = {}
    for g in groups:
        keep = keeps.get(g.name)
        if keep is None or keep.all():
            continue
        for m in g.consumers:
            mod = modules[m.module]
            if not isinstance(mod, (nn.Linear, nn.Conv2d)) or getattr(mod, "groups", 1) != 1:
                continue
            cols = removed.setdefault(m.module, torch.zeros(mod.weight[0].numel(),
                                                            dtype=torch.bool))
            per = mod.weight[0, 0].numel()  # kh * kw for a conv, 1 for a Linear
            idx = m.indices(~keep)
            cols[(idx[:, None] * per + torch.arange(per)).flatten()] = True
    done = []
    for name, r in removed.items():
        gram = grams.get(name)
        mod = modules[name]
        if gram is None:
            raise ValueError(f"refit needs the input Gram matrix of {name!r}: call "
                             f"Pruner.calibrate(batches, hessian=True) first")
        w = mod.weight.detach()
        w2 = w.reshape(w.shape[0], -1).to(torch.float64)
        g = gram.to(torch.float64).cpu()
        if g.shape != (w2.shape[1], w2.shape[1]):
            raise ValueError(f"Gram of {name!r} is {tuple(g.shape)}, its weight has "
                             f"{w2.shape[1]} columns")
        k = ~r
        gkk = g[k][:, k]
        gkk = gkk + damp * gkk.diagonal().mean().clamp(min=1e-12) * torch.eye(int(k.sum()),
                                                                              dtype=g.dtype)
        a = torch.linalg.solve(gkk, g[k][:, r])                       # [K, R]
        new = w2.cpu().clone()
        new[:, k] += new[:, r] @ a.T
        with torch.no_grad():
            mod.weight.copy_(new.reshape(w.shape).to(w.dtype))
        done.append(name)
    return done
