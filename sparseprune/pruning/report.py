"""Per-layer sparsity report: what each layer was asked for and what it has."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn

from .locking import MASK_NAME

__all__ = ["LayerReport", "layer_report", "format_table"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str
    shape: tuple[int, ...]
    pattern: str
    target: float | None  # None until pruned
    zeros: int
    numel: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


def layer_report(name: str, module: nn.Module, pattern: str, target: float | None) -> LayerReport:
    """Counts pruned entries from the mask where there is one, else zero weights."""
    w = module.weight.detach()
    mask = module._buffers.get(MASK_NAME)
    zeros = int((~mask).sum()) if mask is not None else int((w == 0).sum())
    return LayerReport(name, type(module).__name__, tuple(w.shape), pattern, target, zeros,
                       w.numel())


def format_table(rows: Sequence[LayerReport]) -> str:
    """Markdown table, one row per layer and a total."""
    lines = ["| layer | type | shape | pattern | target | sparsity | nonzero / total |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r.target is None else f"{r.target:.1%}"
        lines.append(f"| {r.name} | {r.kind} | {'x'.join(map(str, r.shape))} | {r.pattern} | "
                     f"{target} | {r.sparsity:.1%} | {r.numel - r.zeros:,} / {r.numel:,} |")
    zeros = sum(r.zeros for r in rows)
    numel = sum(r.numel for r in rows)
    lines.append(f"| **total** | | | | | {zeros / max(numel, 1):.1%} | "
                 f"{numel - zeros:,} / {numel:,} |")
    return "\n".join(lines)

