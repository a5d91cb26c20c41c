"""Benchmark harness: timing done right (interleaved, warmed up, medians), the kernel sweep
against dense and torch sparse baselines, the machine's measured limits, and reports (JSON,
Markdown, PNG). Command line: ``sparseprune bench`` / ``sparseprune report``."""

from .timing import Timing, interleaved

__all__ = ["Timing", "interleaved"]

# sweep/report/limits import matplotlib, tqdm and the model lazily; import them as
# sparseprune.bench.sweep etc. (kept out of this namespace so `import sparseprune` stays light)
