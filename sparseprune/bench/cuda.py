"""GPU benchmarks of the CUDA kernels against dense cuBLAS and torch's semi-structured 2:4.

Everything is timed in one process, interleaved (A B A B ...), as CUDA-graph replays of
many calls measured with CUDA events, so launch overhead on the host does not hide
microsecond kernels. Each candidate cycles through enough copies of its weight to exceed
twice the GPU's L2, so weights stream from memory as they would in a model that does not
fit in L2 (an H100's 50 MB L2 holds a whole 4096x4096 fp16 layer otherwise).

    sparseprune bench-cuda --out results/   # or python -m sparseprune.bench.cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune import masks

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (3072, 768), (768, 3072)]
BATCHES = [1, 8, 16, 32, 64, 128, 512]
# (label, format, kwargs, sparsity for the mask); 2:4 is always 50%.
PATTERNS = [
    ("2:4", "nm", dict(n=2, m=4), None),
    ("bsr32x32@90%", "bsr", dict(block=(32, 32)), 0.9),
    ("bsr16x16@90%", "bsr", dict(block=(16, 16)), 0.9),
    ("csr@95%", "csr", {}, 0.95),
    ("csr@90%", "csr", {}, 0.9),
]


def _graph(calls: list[Callable[[], object]], reps: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph of ``reps`` calls cycling through ``calls`` (captured after a warm-up)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in calls:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            calls[i % len(calls)]()
    return g


def interleaved_gpu(candidates: dict[str, list[Callable[[], object]]], *, reps: int = 40,
                    rounds: int = 15) -> dict[str, dict]:
    """Median microseconds per call of each candidate; a candidate whose capture fails is
    timed eagerly (events around a plain loop) and marked so."""
    runners, how = {}, {}
    for name, calls in candidates.items():
        try:
            g = _graph(calls, reps)
            runners[name], how[name] = g.replay, "graph"
        except Exception as exc:  # noqa: BLE001 - e.g. a library call that cannot be captured
            torch.cuda.synchronize()

            def loop(calls=calls):
                for i in range(reps):
                    calls[i % len(calls)]()
            runners[name], how[name] = loop, f"eager ({type(exc).__name__})"
    for fn in runners.values():  # warm-up
        fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {n: [] for n in runners}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(rounds):
        for name, fn in runners.items():
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) * 1e3 / reps)
    return {n: dict(us=statistics.median(s), spread=(max(s) - min(s)) / statistics.median(s),
                    timing=how[n]) for n, s in samples.items()}


def _copies(nbytes: int, l2_bytes: int) -> int:
    return max(1, min(64, math.ceil(2 * l2_bytes / max(nbytes, 1))))


def _mask(w: torch.Tensor, fmt: str, kw: dict, sparsity: float | None) -> torch.Tensor:
    s = w.abs().float()
    if fmt == "nm":
        return masks.n_m(s, kw["n"], kw["m"])
    if fmt == "bsr":
        return masks.block(s, sparsity, kw["block"])
    return masks.unstructured(s, sparsity)


def semi_structured(w: torch.Tensor):
    """torch's 2:4 tensor subclasses that build on this machine: {backend: tensor}."""
    out = {}
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT as Lt
    from torch.sparse import SparseSemiStructuredTensorCUTLASS as Cutlass
    for name, cls in (("cusparselt", Lt), ("cutlass", Cutlass)):
        try:
            t = cls.from_dense(w)
            F.linear(torch.zeros(16, w.shape[1], dtype=w.dtype, device=w.device), t)
            out[name] = t
        except Exception as exc:  # noqa: BLE001 - report why a baseline is missing
            out[name] = exc
    return out


def limits() -> dict:
    """The card's two ceilings, measured: device-to-device copy and a large fp16 GEMM."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    m = torch.randn(8192, 8192, dtype=torch.float16, device="cuda")
    res = interleaved_gpu({"copy": [lambda: b.copy_(a)], "gemm": [lambda: m @ m]}, reps=5,
                          rounds=7)
    return dict(copy_GBps=2 * a.numel() / (res["copy"]["us"] * 1e-6) / 1e9,
                fp16_gemm_TFLOPs=2 * 8192**3 / (res["gemm"]["us"] * 1e-6) / 1e12)


def run(shapes, batches, patterns, dtypes, rounds) -> dict:
    prop = torch.cuda.get_device_properties(0)
    l2 = getattr(prop, "L2_cache_size", 50 << 20)
    rows = []
    for out_f, in_f in shapes:
        for dtype in dtypes:
            gen = torch.Generator(device="cuda").manual_seed(out_f * 31 + in_f)
            w = torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen)
            dense_w = [w.clone() for _ in range(_copies(w.numel() * w.element_size(), l2))]
            for label, fmt, kw, sparsity in patterns:
                keep = _mask(w, fmt, kw, sparsity)
                packed = sp.pack(w, fmt, keep, **kw)
                # Every tensor cloned, so that indices stream from memory like values do.
                copies = [dataclasses.replace(packed, **{k: t.clone() for k, t in
                                                         packed.tensors().items()})
                          for _ in range(_copies(packed.nbytes, l2))]
                semi = semi_structured(w * keep) if fmt == "nm" and kw["n"] == 2 else {}
                semi_copies = {k: [v] + [type(v).from_dense(w * keep)
                                         for _ in range(_copies(packed.nbytes, l2) - 1)]
                               for k, v in semi.items() if not isinstance(v, Exception)}
                for batch in batches:
                    x = torch.randn(batch, in_f, device="cuda", dtype=dtype, generator=gen)
                    cands = {"dense": [lambda d=d: F.linear(x, d) for d in dense_w],
                             "ours": [lambda p=p: p.linear(x) for p in copies]}
                    for k, vs in semi_copies.items():
                        cands[k] = [lambda v=v: F.linear(x, v) for v in vs]
                    # correctness of what is timed, against the dense product
                    ref = F.linear(x.float(), (w * keep).float())
                    err = float((copies[0].linear(x).float() - ref).norm() / ref.norm())
                    res = interleaved_gpu(cands, rounds=rounds)
                    row = dict(shape=f"{out_f}x{in_f}", dtype=str(dtype).removeprefix("torch."),
                               pattern=label, batch=batch, rel_err=err,
                               weight_bytes=packed.nbytes,
                               dense_weight_bytes=w.numel() * w.element_size(),
                               **{f"{k}_us": v["us"] for k, v in res.items()},
                               **{f"{k}_timing": v["timing"] for k, v in res.items()},
                               **{f"{k}_spread": v["spread"] for k, v in res.items()})
                    for k, v in semi.items():
                        if isinstance(v, Exception):
                            row[f"{k}_error"] = f"{type(v).__name__}: {str(v)[:120]}"
                    rows.append(row)
                    print(_line(row), flush=True)
    return dict(device=prop.name, l2_bytes=l2, torch=torch.__version__,
                cuda=torch.version.cuda, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                rows=rows)


def _line(r: dict) -> str:
    s = (f"{r['shape']:>11} {r['dtype']:>8} {r['pattern']:>13} b={r['batch']:<4} "
         f"dense {r['dense_us']:8.2f}us ours {r['ours_us']:8.2f}us "
         f"x{r['dense_us'] / r['ours_us']:5.2f}")
    for k in ("cusparselt", "cutlass"):
        if f"{k}_us" in r:
            s += f" | {k} {r[f'{k}_us']:8.2f}us ours/{k} x{r[f'{k}_us'] / r['ours_us']:5.2f}"
    return s + f" err {r['rel_err']:.1e}"


def markdown(res: dict) -> str:
    lines = [f"Device: {res['device']} (L2 {res['l2_bytes'] >> 20} MiB), torch {res['torch']}, "
             f"CUDA {res['cuda']}, {res['date']}.", ""]
    if "limits" in res:
        lim = res["limits"]
        lines += [f"Measured ceilings: copy {lim['copy_GBps']:.0f} GB/s (read + write), fp16 "
                  f"GEMM 8192^3 {lim['fp16_gemm_TFLOPs']:.0f} TFLOP/s.", ""]
    lines += ["| shape | dtype | pattern | batch | dense us | ours us | speedup vs dense | "
              "cuSPARSELt us | speedup vs cuSPARSELt | CUTLASS 2:4 us | ours GB/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lt, cu = r.get("cusparselt_us"), r.get("cutlass_us")
        in_f = int(r["shape"].split("x")[1])
        moved = r["weight_bytes"] + 2 * r["batch"] * in_f * (2 if r["dtype"] != "float32" else 4)
        ours = r["ours_us"]
        lt_s = f"{lt:.2f} | {lt / ours:.2f}x" if lt else "- | -"
        cu_s = f"{cu:.2f}" if cu else "-"
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['pattern']} | {r['batch']} | "
            f"{r['dense_us']:.2f} | {ours:.2f} | {r['dense_us'] / ours:.2f}x | {lt_s} | "
            f"{cu_s} | {moved / (ours * 1e-6) / 1e9:.0f} |")
    return "\n".join(lines) + "\n"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of ``sparseprune bench-cuda`` / ``python -m sparseprune.bench.cuda``."""
    ap.add_argument("--out", type=Path, default=Path("bench-cuda-out"),
                    help="output folder for cuda_bench.json and .md (bench-cuda-out)")
    ap.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES),
                    help="comma-separated OUTxIN (the Llama-7B and BERT shapes)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--patterns", default=",".join(p[0] for p in PATTERNS),
                    help=f"comma-separated from {', '.join(p[0] for p in PATTERNS)}"
                    .replace("%", "%%"))
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--rounds", type=int, default=15)


def run_cli(args, parser: argparse.ArgumentParser) -> int:
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (torch.cuda.is_available() is False)")
    known = {p[0]: p for p in PATTERNS}
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        patterns = [known[p] for p in args.patterns.split(",")]
        dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except (ValueError, KeyError, AttributeError) as exc:
        parser.error(f"bad selection: {exc}")
    lim = limits()
    print(f"ceilings: {lim}", flush=True)
    res = run(shapes, batches, patterns, dtypes, args.rounds)
    res["limits"] = lim
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_bench.json").write_text(json.dumps(res, indent=1))
    (args.out / "cuda_bench.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv), ap)


if __name__ == "__main__":
    raise SystemExit(main())
