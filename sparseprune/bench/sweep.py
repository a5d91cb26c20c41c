"""The kernel sweep: shapes x patterns x batches x dtypes x threads, each sparse kernel timed
interleaved with dense ``F.linear`` and torch's own sparse matmul, plus the one-off pack cost.

Timing rules (why each is there):

* candidates of one case run interleaved (A B C A B C ...) after warm-up, medians over the
  rounds, spread = IQR / median: drift on this shared machine hits all candidates alike;
* every candidate cycles through copies of its weights totalling >= ``rotate_bytes`` (3x the
  32 MB L3 by default), so a small layer is not timed from cache, as it would not be in a model
  whose other layers evict it;
* rounds adapt to ``budget_s`` per case (between ``min_rounds`` and ``rounds``) so the full
  sweep of large shapes stays within a sitting;
* torch's CSR/BSR matmul is orders slower at large batch: a baseline whose call is predicted
  (from the previous batch, linearly) to exceed ``max_baseline_s`` is skipped and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import csr_bitmap, formats, masks, tile_cache
from ..formats import NMWeight
from ..nn import csr_index_bits
from .limits import measure
from .._ext import native_bf16
from .shapes import BATCHES, DTYPES, PATTERNS, SHAPE_SETS, Pattern
from .timing import interleaved

ROTATE_BYTES = 96 << 20


@dataclass
class SweepConfig:
    shapes: tuple = tuple(s for group in SHAPE_SETS.values() for s in group)
    patterns: tuple = tuple(PATTERNS)
    batches: tuple = BATCHES
    dtypes: tuple = ("float32",)
    threads: tuple = field(default_factory=lambda: (torch.get_num_threads(),))
    rounds: int = 15
    min_rounds: int = 5
    budget_s: float = 1.5
    rotate_bytes: int = ROTATE_BYTES
    baselines: bool = True
    max_baseline_s: float = 0.25
    pack_rounds: int = 3
    seed: int = 0
    limit_kwargs: dict = field(default_factory=dict)  # passed to limits.measure (tests shrink it)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shapes"] = [f"{o}x{i}" for o, i in self.shapes]
        return d


def prune(weight: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Magnitude-pruned copy of ``weight`` (speed depends on the pattern, not on which
    weights a criterion keeps)."""
    scores = weight.abs()
    if pattern.kind == "unstructured":
        keep = masks.unstructured(scores, pattern.sparsity)
    elif pattern.kind == "nm":
        keep = masks.n_m(scores, *pattern.nm)
    else:
        keep = masks.block(scores, pattern.sparsity, block=pattern.block)
    return weight * keep


def pack(pruned: torch.Tensor, pattern: Pattern) -> formats.PackedWeight:
    if pattern.kind == "nm":
        return formats.NMWeight.from_dense(pruned, *pattern.nm)
    if pattern.kind == "block":
        return formats.BSRWeight.from_dense(pruned, pattern.block)
    # The index width SparseLinear would pick (8-bit from 20% nonzeros on; sparseprune.nn).
    return formats.CSRWeight.from_dense(pruned, index_bits=csr_index_bits(pruned))


#: tiny layers would need tens of thousands of copies; past this count they may be timed
#: partly from cache (``rotated_bytes`` in each result says how much was cycled)
MAX_COPIES = 4096


def copies_for(nbytes: int, rotate_bytes: int) -> int:
    return min(MAX_COPIES, max(1, -(-rotate_bytes // max(1, nbytes))))


def rotating(make_copy: Callable[[], object], nbytes: int, rotate_bytes: int):
    """An endless cycle over enough copies of a weight to exceed ``rotate_bytes``."""
    return itertools.cycle([make_copy() for _ in range(copies_for(nbytes, rotate_bytes))])


def clone_packed(packed):
    """A copy in fresh memory. Bypasses ``dataclasses.replace`` on purpose: that re-runs
    validation (up to 0.5 s per copy of a large N:M weight), and the tensors are bit-identical
    clones of an already validated weight."""
    clone = copy.copy(packed)
    for name, t in packed.tensors().items():
        object.__setattr__(clone, name, t.clone())
    return clone


def _torch_sparse(pruned: torch.Tensor, pattern: Pattern):
    """torch's own format for the pattern: BSR for blocks, CSR otherwise (N:M has no CPU
    format in torch). Returns (name, tensor, bytes)."""
    if pattern.kind == "block":
        t = pruned.to_sparse_bsr(pattern.block)
        parts = (t.values(), t.col_indices(), t.crow_indices())
        return "torch_bsr", t, sum(p.numel() * p.element_size() for p in parts)
    t = pruned.to_sparse_csr()
    parts = (t.values(), t.col_indices(), t.crow_indices())
    return "torch_csr", t, sum(p.numel() * p.element_size() for p in parts)


def timed(candidates: dict, cfg: SweepConfig) -> dict:
    """``interleaved`` with the round count fitted to ``cfg.budget_s``."""
    once = 0.0
    for fn in candidates.values():
        fn()  # first call: allocations, lazy init
        start = time.perf_counter()
        fn()
        once += max(time.perf_counter() - start, 2e-3)  # interleaved repeats up to 2 ms
    rounds = int(min(cfg.rounds, max(cfg.min_rounds, cfg.budget_s // once)))
    t = interleaved(candidates, rounds=rounds, warmup=2)
    return {name: (v, rounds) for name, v in t.items()}


def baseline_dtypes(cfg: SweepConfig) -> tuple[str, ...]:
    """Dtypes of the dense baselines and GEMM limits: fp32, the swept dtypes, and bf16 where
    the CPU multiplies it natively. Emulated bf16 GEMMs (AVX2-only CPUs) are tens of times
    slower than fp32 and would dominate the sweep's time for a number nobody would use."""
    extra = ("bfloat16",) if native_bf16() else ()
    return tuple(d for d in DTYPES if d == "float32" or d in cfg.dtypes or d in extra)


def _cases(cfg: SweepConfig) -> int:
    return len(cfg.threads) * len(cfg.shapes) * len(cfg.batches) * (
        1 + len(cfg.dtypes) * len(cfg.patterns))


def run(cfg: SweepConfig, *, progress: bool = True,
        checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Runs the sweep; returns the JSON-ready results (``machine`` is added by the caller).
    ``checkpoint(results so far)`` is called after each shape, so a long sweep that is cut
    short still leaves its finished shapes behind."""
    for p in cfg.patterns:
        if p not in PATTERNS:
            raise ValueError(f"unknown pattern {p!r}; valid: {', '.join(PATTERNS)}")
    for d in cfg.dtypes:
        if d not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; valid: {', '.join(DTYPES)}")
    from tqdm.auto import tqdm

    bar = tqdm(total=_cases(cfg), unit="case", disable=not progress, desc="bench")
    previous_threads = torch.get_num_threads()
    out = {"config": cfg.as_dict(), "limits": [], "dense": [], "results": [], "pack": []}
    gen = torch.Generator().manual_seed(cfg.seed)
    packs_done = set()
    try:
        for threads in cfg.threads:
            bar.set_description(f"limits, {threads} threads")
            limits = measure(threads, baseline_dtypes(cfg), **cfg.limit_kwargs)
            out["limits"].append(limits.as_dict())
            torch.set_num_threads(threads)
            for out_f, in_f in cfg.shapes:
                shape = f"{out_f}x{in_f}"
                weight = torch.randn(out_f, in_f, generator=gen) / in_f**0.5
                bias = torch.randn(out_f, generator=gen)
                with torch.inference_mode():
                    _dense_baselines(out, cfg, weight, bias, shape, threads, bar)
                for pname in cfg.patterns:
                    pattern = PATTERNS[pname]
                    pruned = prune(weight, pattern)
                    start = time.perf_counter()
                    packed32 = pack(pruned, pattern)
                    first_pack_s = time.perf_counter() - start
                    if (shape, pname) not in packs_done:
                        packs_done.add((shape, pname))
                        out["pack"].append(_pack_cost(cfg, pruned, pattern, weight, bias,
                                                      shape, first_pack_s))
                    for dname in cfg.dtypes:
                        bar.set_description(f"{shape} {pname} {dname} {threads}t")
                        with torch.inference_mode():
                            out["results"].extend(_case(cfg, weight, bias, pruned, packed32,
                                                        pattern, dname, threads, shape, bar))
                if checkpoint is not None:
                    checkpoint(out)
            # measured again at the end, keeping the better of the two: one measurement
            # taken while another job held the cores would understate the machine (and
            # overstate every "% of limit")
            bar.set_description(f"limits again, {threads} threads")
            again = measure(threads, baseline_dtypes(cfg), **cfg.limit_kwargs).as_dict()
            out["limits"][-1] = _best_limits(out["limits"][-1], again)
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    return out


def _best_limits(first: dict, second: dict) -> dict:
    best = {k: max(first[k], second[k]) for k in ("copy_GBps", "read_GBps")}
    best["gemm_GFLOPs"] = {d: max(v, second["gemm_GFLOPs"][d])
                           for d, v in first["gemm_GFLOPs"].items()}
    return {"threads": first["threads"], **best, "start": first, "end": second}


def _dense_baselines(out, cfg, weight, bias, shape, threads, bar):
    """Dense F.linear in each of :func:`baseline_dtypes`, interleaved, per batch."""
    dtypes = baseline_dtypes(cfg)
    ws = {d: (weight.to(DTYPES[d]), bias.to(DTYPES[d])) for d in dtypes}
    rot = {d: rotating(w.clone, w.numel() * w.element_size(), cfg.rotate_bytes)
           for d, (w, _) in ws.items()}
    for batch in cfg.batches:
        xs = {d: torch.randn(batch, weight.shape[1]).to(DTYPES[d]) for d in dtypes}
        cands = {d: (lambda d=d: F.linear(xs[d], next(rot[d]), ws[d][1])) for d in dtypes}
        t = timed(cands, cfg)
        row = {"shape": shape, "out": weight.shape[0], "in": weight.shape[1], "batch": batch,
               "threads": threads, "flops": 2 * batch * weight.numel()}
        for d, (timing, rounds) in t.items():
            row[f"{d}_s"] = timing.median
            row[f"{d}_spread"] = timing.spread
            row["rounds"] = rounds
        out["dense"].append(row)
        bar.update(1)


#: a pack slower than this is not repeated: the first call is its cost (seconds of N:M
#: validation on Llama shapes would otherwise dominate the sweep)
PACK_REPEAT_BELOW_S = 0.5


def _pack_cost(cfg, pruned, pattern, weight, bias, shape, first_pack_s):
    """One-off cost of ``from_dense`` (validation included), also in dense batch-1 calls."""
    x1 = torch.randn(1, weight.shape[1])
    with torch.inference_mode():
        if first_pack_s >= PACK_REPEAT_BELOW_S:
            t = interleaved({"dense": lambda: F.linear(x1, weight, bias)}, rounds=5)
            pack_s, rounds = first_pack_s, 1
        else:
            t = interleaved({"pack": lambda: pack(pruned, pattern),
                             "dense": lambda: F.linear(x1, weight, bias)},
                            rounds=cfg.pack_rounds, warmup=1)
            pack_s, rounds = t["pack"].median, cfg.pack_rounds
    return {"shape": shape, "pattern": pattern.name, "pack_s": pack_s, "pack_rounds": rounds,
            "pack_in_dense_batch1_calls": pack_s / t["dense"].median}


def _case(cfg, weight, bias, pruned, packed32, pattern, dname, threads, shape, bar):
    dtype = DTYPES[dname]
    packed = packed32.to(dtype)
    dense_w, b = weight.to(dtype), bias.to(dtype)
    dense_ws = rotating(dense_w.clone, dense_w.numel() * dense_w.element_size(),
                        cfg.rotate_bytes)
    # Copies are ordinary tensors, as a model's weights are (made under inference_mode they
    # would be inference tensors, which have no version counter for the tile copies' check).
    with torch.inference_mode(False):
        packs = rotating(lambda: clone_packed(packed), packed.nbytes, cfg.rotate_bytes)
    tile_copies = isinstance(packed, NMWeight) and tile_cache.nm_tile_cache_enabled()
    # The smallest batch the tile copy serves (2 with AVX2, whose batch 1 keeps the plain op).
    warm_batch = next((b for b in (1, 2) if tile_copies and tile_cache.used_at(packed, b)), 1)
    view_bytes = None  # a CSR weight's batch-1 bitmap view (csr_bitmap), where one is made
    if tile_copies or isinstance(packed, formats.CSRWeight):
        # every copy's tile copy or bitmap view made before timing (once per weight in use)
        with torch.no_grad():
            for _ in range(copies_for(packed.nbytes, cfg.rotate_bytes)):
                next(packs).linear(torch.zeros(warm_batch, weight.shape[1], dtype=dtype))
            view_bytes = csr_bitmap.view_nbytes(next(packs))
    baseline, base_reason, base_bytes = None, None, None
    if cfg.baselines:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                base_name, base_t, base_bytes = _torch_sparse(pruned.to(dtype), pattern)
                torch.addmm(b, torch.zeros(1, weight.shape[1], dtype=dtype), base_t.t())
            base_ws = rotating(lambda: base_t.clone().t(), base_bytes, cfg.rotate_bytes)
            baseline = base_name
        except (RuntimeError, NotImplementedError) as e:
            base_reason = f"torch sparse matmul unavailable: {str(e).splitlines()[0][:120]}"
    nnz = int((pruned != 0).sum())
    rows, last = [], None  # last: (batch, seconds) of the torch baseline
    for batch in cfg.batches:
        x = torch.randn(batch, weight.shape[1]).to(dtype)
        cands = {"dense": lambda: F.linear(x, next(dense_ws), b),
                 "sparse": lambda: next(packs).linear(x, b)}
        reason = base_reason
        if baseline is not None:
            if last is not None and last[1] * batch / last[0] > cfg.max_baseline_s:
                reason = (f"skipped: one call predicted {last[1] * batch / last[0]:.2f} s > "
                          f"max_baseline_s {cfg.max_baseline_s}")
            else:
                cands[baseline] = lambda: torch.addmm(b, x, next(base_ws))
        t = timed(cands, cfg)
        dense_t, rounds = t["dense"]
        sparse_t, _ = t["sparse"]
        s = sparse_t.median
        # Weights as the kernel streams them (the tile copy when it is on: fp32 values and one
        # column byte per padded slot) + x in + y out.
        streamed = (tile_cache.copy_nbytes(packed)
                    if tile_copies and tile_cache.used_at(packed, batch) else
                    view_bytes if view_bytes is not None and batch == 1 else packed.nbytes)
        moved = streamed + 2 * x.numel() * x.element_size()
        row = {
            "shape": shape, "out": weight.shape[0], "in": weight.shape[1],
            "pattern": pattern.name, "kind": pattern.kind, "family": pattern.family,
            "sparsity": pattern.sparsity, "achieved_sparsity": 1 - nnz / weight.numel(),
            "dtype": dname, "threads": threads, "batch": batch, "rounds": rounds,
            # 1-minute load average when the case finished: on a shared machine, > the thread
            # count means another job competed for the cores during this case
            "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "nnz": nnz, "packed_bytes": packed.nbytes, "nm_tile_cache": tile_copies,
            "csr_bitmap_view": view_bytes is not None and batch == 1,
            "streamed_weight_bytes": streamed,
            "rotated_bytes": packed.nbytes * copies_for(packed.nbytes, cfg.rotate_bytes),
            "dense_bytes": dense_w.numel() * dense_w.element_size(),
            "dense_s": dense_t.median, "dense_spread": dense_t.spread,
            "sparse_s": s, "sparse_spread": sparse_t.spread,
            "speedup_vs_dense": dense_t.median / s,
            "useful_GFLOPs": 2 * batch * nnz / s / 1e9,
            "effective_GFLOPs": 2 * batch * weight.numel() / s / 1e9,
            "GBps": moved / s / 1e9,
            "torch_sparse": baseline, "torch_sparse_s": None, "speedup_vs_torch_sparse": None,
            "torch_sparse_note": reason,
        }
        if baseline in t:
            bt, _ = t[baseline]
            row.update(torch_sparse_s=bt.median, speedup_vs_torch_sparse=bt.median / s,
                       torch_sparse_note=None)
            last = (batch, bt.median)
        rows.append(row)
        bar.update(1)
    return rows


def add_limits_percent(results: dict) -> None:
    """Percent of the measured limits for every result row (in place): bandwidth against the
    copy rate, useful GFLOP/s against the dense GEMM peak of the same dtype and threads."""
    limits = {lim["threads"]: lim for lim in results.get("limits", [])}
    for row in results.get("results", []):
        lim = limits.get(row["threads"])
        if lim is None:
            continue
        row["pct_copy_bandwidth"] = 100 * row["GBps"] / lim["copy_GBps"]
        peak = lim["gemm_GFLOPs"].get(row["dtype"])
        row["pct_gemm_peak"] = 100 * row["useful_GFLOPs"] / peak if peak else None


def break_even(rows: Iterable[dict]) -> list[dict]:
    """Lowest unstructured sparsity at which our kernel matches dense, per shape, dtype,
    threads and batch: linear interpolation of speedup between the measured sparsities.
    ``sparsity`` is None when no measured point reaches 1.0x; ``bound`` says whether the
    value is interpolated, or only bounded by the lowest sparsity measured."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        if r["kind"] == "unstructured":
            key = (r["shape"], r["dtype"], r["threads"], r["batch"])
            groups.setdefault(key, []).append((r["sparsity"], r["speedup_vs_dense"]))
    out = []
    for (shape, dtype, threads, batch), pts in groups.items():
        pts.sort()
        entry = {"shape": shape, "dtype": dtype, "threads": threads, "batch": batch,
                 "sparsity": None, "bound": f"none of {[round(s, 2) for s, _ in pts]} reach 1x"}
        if pts[0][1] >= 1.0:
            entry.update(sparsity=pts[0][0], bound="at or below")
        else:
            for (s0, r0), (s1, r1) in zip(pts, pts[1:]):
                if r0 < 1.0 <= r1:
                    entry.update(sparsity=s0 + (1.0 - r0) * (s1 - s0) / (r1 - r0),
                                 bound="interpolated")
                    break
        out.append(entry)
    return out
