"""Benchmark harness: timing done right (interleaved, warmed up, medians)."""

from .timing import Timing, interleaved

__all__ = ["Timing", "interleaved"]
