"""Interleaved timing: candidates run in turn (A B A B ...), so drift on a shared
machine hits every candidate alike, and ratios are taken within one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate, over the timed rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range over the median (0 = perfectly steady)."""
        if len(self.samples) < 4:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / self.median if self.median else 0.0


def interleaved(candidates: Mapping[str, Callable[[], object]], *, rounds: int = 25,
                warmup: int = 3, min_round_s: float = 2e-3) -> dict[str, Timing]:
    """Times every candidate in each of ``rounds`` rounds, after ``warmup`` untimed rounds.

    A call faster than ``min_round_s`` is repeated within its round (the count is fixed
    after warm-up) so that timer resolution does not dominate.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    names = list(candidates)
    repeats = {}
    for name in names:
        fn = candidates[name]
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            fn()
            once = time.perf_counter() - start
        repeats[name] = max(1, int(min_round_s / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            fn, reps = candidates[name], repeats[name]
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - start) / reps)
    return {name: Timing(tuple(s)) for name, s in samples.items()}
