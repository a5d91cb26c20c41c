"""Per-layer sensitivity with measured latency, and a plan chosen from both.

:func:`sensitivity` prunes one layer at a time with each candidate (pattern, sparsity),
measures the drop of a user metric (everything else dense), and times the layer's own shape
on our kernels against dense ``F.linear`` at the given batch (interleaved, median; shapes
and candidates shared by several layers are timed once). :func:`auto_plan` then picks one
option per layer (dense or a candidate) that minimises the summed latency under a budget on
the summed metric drop (a multiple-choice knapsack, solved exactly on a grid by dynamic
programming), or the dual: maximises the pruned weights under a latency target. Drops of
several layers do not add up exactly; :func:`fit_plan` measures the planned model and
tightens the budget until the real drop fits.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import PruneConfig
from .patterns import parse_pattern

__all__ = ["Candidate", "SensitivityRow", "Sensitivity", "sensitivity", "auto_plan",
           "plan_config", "fit_plan", "layer_latency", "DEFAULT_CANDIDATES"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    pattern: str
    sparsity: float | None = None

    @property
    def label(self) -> str:
        if self.sparsity is None:
            return self.pattern
        name = "" if self.pattern == "unstructured" else f"{self.pattern}@"
        return f"{name}{self.sparsity:.0%}"


DEFAULT_CANDIDATES = (Candidate("unstructured", 0.5), Candidate("unstructured", 0.7),
                      Candidate("unstructured", 0.9), Candidate("2:4"),
                      Candidate("block:16x16", 0.5), Candidate("block:16x16", 0.8))


@dataclasses.dataclass(frozen=True)
class SensitivityRow:
    layer: str
    shape: tuple[int, int]
    candidate: Candidate
    metric: float
    drop: float
    dense_s: float
    sparse_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.sparse_s


@dataclasses.dataclass
class Sensitivity:
    base: float
    rows: list[SensitivityRow]
    batch_rows: int

    def layers(self) -> list[str]:
        return list(dict.fromkeys(r.layer for r in self.rows))

    def to_json(self) -> dict:
        return {"base": self.base, "batch_rows": self.batch_rows, "rows": [
            {"layer": r.layer, "shape": list(r.shape), "pattern": r.candidate.pattern,
             "sparsity": r.candidate.sparsity, "metric": r.metric, "drop": r.drop,
             "dense_s": r.dense_s, "sparse_s": r.sparse_s} for r in self.rows]}

    @classmethod
    def from_json(cls, data: dict) -> Sensitivity:
        rows = [SensitivityRow(r["layer"], tuple(r["shape"]),
                               Candidate(r["pattern"], r["sparsity"]), r["metric"], r["drop"],
                               r["dense_s"], r["sparse_s"]) for r in data["rows"]]
        return cls(data["base"], rows, data["batch_rows"])

    def table(self) -> str:
        cands = list(dict.fromkeys(r.candidate for r in self.rows))
        head = "| layer | shape | " + " | ".join(c.label for c in cands) + " |"
        lines = [f"metric drop when only that layer is pruned (base {self.base:.4f}), and the "
                 f"layer's speed vs dense at {self.batch_rows} rows", "", head,
                 "|---|---|" + "---|" * len(cands)]
        by = {(r.layer, r.candidate): r for r in self.rows}
        for layer in self.layers():
            cells = []
            for c in cands:
                r = by.get((layer, c))
                cells.append("-" if r is None else f"{r.drop:+.4f} / {r.speedup:.2f}x")
            shape = next(r.shape for r in self.rows if r.layer == layer)
            lines.append(f"| {layer} | {shape[0]}x{shape[1]} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cands = list(dict.fromkeys(r.candidate for r in self.rows))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in cands:
            rs = [r for r in self.rows if r.candidate == c]
            ax.scatter([r.speedup for r in rs], [max(r.drop, 1e-6) for r in rs], label=c.label,
                       s=18)
        ax.set_yscale("log")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_xlabel(f"layer speed vs dense F.linear ({self.batch_rows} rows)")
        ax.set_ylabel("metric drop, that layer alone (log)")
        ax.set_title("Per-layer sensitivity and speed")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def layer_latency(shape: tuple[int, int], candidate: Candidate, batch_rows: int, *,
                  rounds: int = 15, seed: int = 0) -> tuple[float, float]:
    """(dense, sparse) median seconds of ``[batch_rows, in] @ W^T`` for a random weight of
    ``shape`` pruned with ``candidate`` (magnitude), timed interleaved in this process."""
    from ..bench.timing import interleaved
    from ..nn import SparseLinear

    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = shape
    w = torch.randn(out_f, in_f, generator=gen)
    keep = parse_pattern(candidate.pattern).mask(w.abs(), _sparsity(candidate))
    lin = nn.Linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(w * keep)
    sparse = SparseLinear.from_linear(lin)
    x = torch.randn(batch_rows, in_f, generator=gen)
    dense_w, bias = lin.weight.detach(), lin.bias.detach()
    with torch.inference_mode():
        t = interleaved({"dense": lambda: F.linear(x, dense_w, bias), "sparse": lambda: sparse(x)},
                        rounds=rounds, warmup=3)
    return t["dense"].median, t["sparse"].median


def _sparsity(c: Candidate) -> float:
    implied = parse_pattern(c.pattern).implied_sparsity()
    return implied if c.sparsity is None else c.sparsity


def sensitivity(model: nn.Module, metric: Callable[[nn.Module], float],
                candidates: Sequence[Candidate] = DEFAULT_CANDIDATES, *,
                include=None, exclude=None, criterion: str = "magnitude",
                calib_batches=None, batch_rows: int = 128, time_rounds: int = 15,
                progress: bool = True) -> Sensitivity:
    """Metric drop and kernel speed for every selected Linear x candidate. ``metric(model)``
    is higher-is-better (e.g. mean cosine to the dense outputs); it is called once on the
    dense model and once per (layer, candidate) with only that layer pruned. With
    ``criterion="sparsegpt"`` each case also has SparseGPT's update of the kept weights
    (from the dense model's calibration inputs)."""
    from .pruner import Pruner

    cands = [c if isinstance(c, Candidate) else Candidate(*c) for c in candidates]
    for c in cands:
        PruneConfig(pattern=c.pattern, sparsity=c.sparsity)  # validates
    cfg = PruneConfig(pattern="unstructured", sparsity=0.5, criterion=criterion,
                      include=include, exclude=exclude)
    pruner = Pruner(model, cfg)
    layers = {n: m for n, m in pruner.layers.items() if isinstance(m, nn.Linear)}
    if criterion in ("wanda", "taylor", "sparsegpt"):
        if calib_batches is None:
            raise ValueError(f"criterion {criterion!r} needs calib_batches")
        pruner.calibrate(calib_batches)
    grams = {n: pruner.stats[n].gram for n in layers} if criterion == "sparsegpt" else {}
    scores = {n: pruner.layer_scores(n) for n in layers} if criterion != "sparsegpt" else {}
    pruner.finalize()  # all-True masks: the weights are unchanged
    base = float(metric(model))
    timed: dict[tuple, tuple[float, float]] = {}
    rows = []
    todo = [(n, c) for n in layers for c in cands]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="sensitivity", unit="case")
    for name, c in todo:
        mod = layers[name]
        saved = mod.weight.detach().clone()
        if criterion == "sparsegpt":
            from .sparsegpt import sparsegpt_prune

            new_w, _ = sparsegpt_prune(saved, grams[name], parse_pattern(c.pattern),
                                       _sparsity(c))
        else:
            keep = parse_pattern(c.pattern).mask(
                scores[name], _sparsity(c),
                per_row=criterion == "wanda" and c.pattern == "unstructured")
            new_w = saved * keep
        with torch.no_grad():
            mod.weight.copy_(new_w)
        try:
            value = float(metric(model))
        finally:
            with torch.no_grad():
                mod.weight.copy_(saved)
        shape = tuple(mod.weight.shape)
        key = (shape, c)
        if key not in timed:
            timed[key] = layer_latency(shape, c, batch_rows, rounds=time_rounds)
        rows.append(SensitivityRow(name, shape, c, value, base - value, *timed[key]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return Sensitivity(base, rows, batch_rows)


def auto_plan(sens: Sensitivity, *, max_drop: float | None = None,
              max_latency: float | None = None, grid: int = 2000) -> dict[str, Candidate | None]:
    """One option per layer (None = stay dense). With ``max_drop``: least summed latency
    whose summed drop is <= max_drop. With ``max_latency`` (seconds, summed over the layers
    at the table's batch): most pruned weights whose summed latency is <= max_latency."""
    if (max_drop is None) == (max_latency is None):
        raise ValueError("give exactly one of max_drop (metric budget) or max_latency")
    layers = sens.layers()
    options: dict[str, list[tuple[Candidate | None, float, float, float]]] = {}
    for layer in layers:
        rs = [r for r in sens.rows if r.layer == layer]
        numel = rs[0].shape[0] * rs[0].shape[1]
        opts = [(None, 0.0, rs[0].dense_s, 0.0)]
        opts += [(r.candidate, max(r.drop, 0.0), r.sparse_s, numel * _sparsity(r.candidate))
                 for r in rs]
        options[layer] = opts
    if max_drop is not None:
        cost_i, value_i, cap = 1, 2, max_drop    # constrain drop, minimise latency
        sign = 1.0
    else:
        cost_i, value_i, cap = 2, 3, max_latency  # constrain latency, maximise pruned weights
        sign = -1.0
        floor = sum(min(o[2] for o in opts) for opts in options.values())
        if cap < floor:
            raise ValueError(f"max_latency {cap:.3g} s is below the fastest plan "
                             f"({floor:.3g} s)")
    if cap < 0:
        raise ValueError("the budget must be >= 0")
    step = cap / grid if cap > 0 else 1.0
    inf = math.inf
    best = [0.0] + [inf] * grid  # best[b]: best objective with used budget == b steps
    choice: list[list[int]] = []
    for layer in layers:
        new = [inf] * (grid + 1)
        pick = [-1] * (grid + 1)
        for b, v in enumerate(best):
            if v == inf:
                continue
            for k, opt in enumerate(options[layer]):
                cost = opt[cost_i]
                nb = b + (math.ceil(cost / step - 1e-9) if cap > 0 else (0 if cost <= 0 else
                                                                        grid + 1))
                if nb > grid:
                    continue
                val = v + sign * opt[value_i]
                if val < new[nb]:
                    new[nb], pick[nb] = val, k * (grid + 1) + b
        best = new
        choice.append(pick)
    end = min(range(grid + 1), key=lambda b: best[b])
    if best[end] == inf:
        raise ValueError("no plan fits the budget")
    plan: dict[str, Candidate | None] = {}
    b = end
    for layer, pick in zip(reversed(layers), reversed(choice)):
        k, b = divmod(pick[b], grid + 1)
        plan[layer] = options[layer][k][0]
    return {layer: plan[layer] for layer in layers}


def plan_config(plan: dict[str, Candidate | None], *, criterion: str = "magnitude",
                **kw) -> PruneConfig:
    """The plan as a PruneConfig: only the pruned layers are included, each with its own
    override (module names match themselves as globs)."""
    chosen = {n: c for n, c in plan.items() if c is not None}
    if not chosen:
        raise ValueError("the plan keeps every layer dense; there is nothing to prune")
    first = next(iter(chosen.values()))
    overrides = {_escape(n): {"pattern": c.pattern, **({"sparsity": c.sparsity}
                                                       if c.sparsity is not None else {})}
                 for n, c in chosen.items()}
    return PruneConfig(pattern=first.pattern, sparsity=first.sparsity, criterion=criterion,
                       include=[_escape(n) for n in chosen], overrides=overrides, **kw)


def _escape(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "*?[]" else ch for ch in name)


def fit_plan(model: nn.Module, sens: Sensitivity, metric: Callable[[nn.Module], float],
             max_drop: float, prune: Callable[[nn.Module, PruneConfig], nn.Module], *,
             criterion: str = "magnitude", tries: int = 6,
             shrink: float = 0.7) -> tuple[PruneConfig, float, list[dict]]:
    """Plans with ``max_drop``, prunes a copy with ``prune(copy, config)`` and measures the
    real drop. While it exceeds ``max_drop`` the planning budget shrinks by ``shrink``; once
    one fits, the remaining tries bisect between the fitting and the failing budget, to
    spend as much of the real budget as possible. Returns the fastest config that fits (by
    the table's latencies), its measured metric, and the log of tries."""
    import copy

    def attempt(budget):
        plan = auto_plan(sens, max_drop=budget)
        if all(c is None for c in plan.values()):
            raise ValueError(f"the fastest plan within a metric drop of {budget:.4g} keeps "
                             f"every layer dense (no candidate that fits is faster than "
                             f"dense; the least sensitive layer alone drops "
                             f"{min(r.drop for r in sens.rows):.4g}); tries: {log}")
        cfg = plan_config(plan, criterion=criterion)
        value = float(metric(prune(copy.deepcopy(model), cfg)))
        latency = sum(next(r.sparse_s for r in sens.rows if r.layer == n and r.candidate == c)
                      if c is not None else next(r.dense_s for r in sens.rows if r.layer == n)
                      for n, c in plan.items())
        log.append({"planning_budget": budget, "metric": value, "planned_latency_s": latency,
                    "layers_pruned": sum(c is not None for c in plan.values())})
        return cfg, value, latency, sens.base - value <= max_drop

    log: list[dict] = []
    best = None
    lo, hi = None, max_drop
    budget = max_drop
    for _ in range(tries):
        cfg, value, latency, fits = attempt(budget)
        if fits:
            if best is None or latency < best[2]:
                best = (cfg, value, latency)
            lo = budget
        else:
            hi = budget
        if lo is None:
            budget *= shrink
        elif hi <= lo or (hi - lo) < 0.02 * max_drop:
            break
        else:
            budget = (lo + hi) / 2
        if lo is not None and lo == max_drop:
            break  # the full budget fits
    if best is None:
        raise ValueError(f"no plan within {tries} tries keeps the drop <= {max_drop}: {log}")
    return best[0], best[1], log
