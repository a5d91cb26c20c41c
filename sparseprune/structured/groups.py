"""Dependency groups: the tensors that must lose the same channels together.

A :class:`Group` is one space of ``size`` units (output channels, FFN neurons, attention
heads). Each :class:`Member` says where the group's units sit in one module: unit ``k``
covers indices ``offset + k*unit ... offset + (k+1)*unit - 1`` of the dimension that
``role`` names. Removing unit ``k`` from every member keeps the function of the kept units.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["Member", "Group", "Blocked", "ROLES"]

#: ``out``: rows of a Linear/Conv2d (and its bias); ``in``: columns of a Linear / input
#: channels of a Conv2d; ``through``: a module that carries the channels one to one
#: (BatchNorm, depthwise Conv2d); ``heads``: an attention module whose head count changes.
ROLES = ("out", "in", "through", "heads")


@dataclasses.dataclass(frozen=True)
class Member:
    module: str
    role: str
    offset: int = 0
    unit: int = 1

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"member role must be one of {ROLES}, got {self.role!r}")

    def indices(self, keep: torch.Tensor) -> torch.Tensor:
        """Indices (on this member's dimension) of the units ``keep`` (bool ``[size]``) keeps."""
        units = keep.nonzero().flatten()
        idx = self.offset + units[:, None] * self.unit + torch.arange(self.unit)
        return idx.flatten()


@dataclasses.dataclass(frozen=True)
class Group:
    """``kind`` is ``"channel"`` or ``"head"``; ``name`` is the first producer's module name
    (the name overrides and include/exclude globs match)."""

    name: str
    kind: str
    size: int
    members: tuple[Member, ...]

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "out"]

    @property
    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == "in"]

    def describe(self) -> str:
        parts = [f"{m.module}[{m.role}]" for m in self.members]
        return f"{self.kind} group {self.name!r} ({self.size} units): " + ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Blocked:
    """A Linear/Conv2d whose channels no group may remove, and why."""

    module: str
    reason: str


def unit_slices(module: nn.Module, member: Member, size: int,
                tensor: torch.Tensor | None = None) -> torch.Tensor:
    """``[size, -1]`` view of the entries of ``tensor`` (default: the module's weight) that
    belong to each unit of ``member``; for scoring."""
    w = module.weight if tensor is None else tensor
    lo, hi = member.offset, member.offset + size * member.unit
    if member.role in ("out", "through"):
        return w[lo:hi].reshape(size, -1)
    if member.role == "in":
        part = w[:, lo:hi]
        return part.reshape(w.shape[0], size, member.unit, -1).transpose(0, 1).reshape(size, -1)
    raise ValueError(f"role {member.role!r} has no weight slices")
