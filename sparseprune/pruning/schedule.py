"""Gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune".

``s_t = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))**3`` for ``start <= t <= end``,
updated every ``frequency`` steps: prunes fast while many redundant weights remain and
slowly near the target, so fine-tuning between updates can recover.
"""

from __future__ import annotations

import dataclasses

__all__ = ["CubicSchedule"]


def _int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class CubicSchedule:
    """Steps ``start..end`` (inclusive) with a mask update every ``frequency`` steps and
    at ``end``; sparsity rises from ``initial_sparsity`` to each layer's target."""

    start: int = 0
    end: int = 100
    frequency: int = 10
    initial_sparsity: float = 0.0

    def __post_init__(self):
        _int("start", self.start, 0)
        _int("end", self.end, self.start)
        _int("frequency", self.frequency, 1)
        s = self.initial_sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
            raise ValueError(f"initial_sparsity must be a number in [0, 1), got {s!r}")

    def is_update(self, t: int) -> bool:
        """Whether step ``t`` changes the masks."""
        return self.start <= t <= self.end and ((t - self.start) % self.frequency == 0
                                                or t == self.end)

    def sparsity(self, t: int, final: float) -> float:
        """Target sparsity at step ``t`` for a layer whose final target is ``final``."""
        initial = min(self.initial_sparsity, final)
        if t >= self.end:
            return final
        if t <= self.start:
            return initial
        remaining = 1.0 - (t - self.start) / (self.end - self.start)
        return final + (initial - final) * remaining ** 3
