"""Structured pruning that shrinks the model: channels, FFN neurons and attention heads
removed together with everything that reads them.

:func:`find_groups` finds the dependency groups (explicit rules for BERT-style layers,
torch.fx tracing otherwise); :func:`shrink` removes units; plans (:func:`make_plan`,
:func:`apply_plan`) rebuild the shrunk shapes on a fresh model. ``Pruner`` with
``PruneConfig(pattern="channel" | "head", structured=True)`` chooses the units and calls
these.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .groups import Blocked, Group, Member
from .rules import bert_groups
from .shrink import (PLAN_VERSION, load_plan, make_plan, permute, refit_readers, save_plan,
                     shrink)
from .shrink import apply_plan as _apply_plan
from .trace import traced_groups

__all__ = ["Blocked", "Group", "GroupSet", "Member", "PLAN_VERSION", "apply_plan",
           "find_groups", "load_plan", "make_plan", "permute", "refit_readers", "save_plan",
           "shrink"]


@dataclasses.dataclass(frozen=True)
class GroupSet:
    """The groups of a model, and the Linear/Conv2d layers no group may shrink (with why)."""

    groups: tuple[Group, ...]
    blocked: tuple[Blocked, ...]
    method: str  # "rules" or "fx"

    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {[g.name for g in self.groups][:20]}")


def _as_args(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a tensor or a tuple of positional inputs, got "
                    f"{type(example_inputs).__name__}")


def find_groups(model: nn.Module, example_inputs=None) -> GroupSet:
    """Dependency groups of ``model``. BERT-style layers (transformers) use explicit rules;
    any other model is traced with torch.fx and run once on ``example_inputs`` (a tensor or
    a tuple of positional inputs) for the shapes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    groups, blocked = bert_groups(model)
    if groups:
        return GroupSet(tuple(groups), tuple(blocked), "rules")
    if example_inputs is None:
        raise ValueError(f"no explicit rule matches {type(model).__name__}; pass "
                         f"example_inputs=... so it can be traced with torch.fx")
    groups, blocked = traced_groups(model, _as_args(example_inputs))
    return GroupSet(tuple(groups), tuple(blocked), "fx")


def apply_plan(model: nn.Module, plan, example_inputs=None) -> GroupSet:
    """Shrinks a freshly built ``model`` the way ``plan`` (from :func:`make_plan`,
    ``Pruner.shrink`` or :func:`load_plan`) says; then the shrunk model's ``state_dict``
    loads into it. Returns the groups it found."""
    groups = find_groups(model, example_inputs)
    _apply_plan(model, plan, groups.groups)
    return groups
