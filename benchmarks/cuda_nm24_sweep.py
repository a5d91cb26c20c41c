"""Every 2:4 tensor-core kernel of the CUDA extension, forced in turn through
SPARSEPRUNE_CUDA_NM24, against dense cuBLAS and torch's cuSPARSELt 2:4, per shape and batch.

One process; all candidates of a (shape, batch) are CUDA graphs replayed interleaved
(sparseprune.bench.cuda.interleaved_gpu), weights cycling through copies larger than twice
the L2. The automatic choice (nm24_choice in csrc/cuda/spmm_nm.cu) is set from this table.

    python benchmarks/cuda_nm24_sweep.py --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune import _C, masks
from sparseprune.bench.cuda import _copies, interleaved_gpu, semi_structured

KEY = "SPARSEPRUNE_CUDA_NM24"


def forced(variant: str, packed, x, key: str = KEY):
    """A call of ``packed.linear(x)`` with the kernel ``variant`` forced through the
    environment variable ``key`` (read when the graph is captured, which is when the op's
    host code runs)."""
    def call():
        os.environ[key] = variant
        try:
            return packed.linear(x)
        finally:
            os.environ.pop(key, None)
    return call


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008,3072x768,768x3072")
    ap.add_argument("--batches", default="8,16,32,64,128,256,512")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--variants", default="",
                    help="comma-separated kernels to time besides auto (default: all)")
    args = ap.parse_args()
    variants = _C.cuda_nm24_variants().split(", ")
    if args.variants:
        wanted = args.variants.split(",")
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            ap.error(f"unknown variants {unknown}; known: {', '.join(variants)}")
        variants = ["auto"] + [v for v in variants if v in wanted and v != "auto"]
    dtype = getattr(torch, args.dtype)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for shape in args.shapes.split(","):
        out_f, in_f = (int(v) for v in shape.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(out_f * 31 + in_f)
        w = torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen)
        keep = masks.n_m(w.abs().float(), 2, 4)
        packed = sp.pack(w, "nm", keep, n=2, m=4)
        wk = w * keep
        n_copies = _copies(packed.nbytes, l2)
        copies = [dataclasses.replace(packed, **{k: t.clone() for k, t in
                                                 packed.tensors().items()})
                  for _ in range(n_copies)]
        dense_w = [w.clone() for _ in range(_copies(w.numel() * w.element_size(), l2))]
        semi = semi_structured(wk).get("cusparselt")
        lt = [] if isinstance(semi, Exception) or semi is None else \
            [semi] + [type(semi).from_dense(wk) for _ in range(n_copies - 1)]
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.randn(batch, in_f, device="cuda", dtype=dtype, generator=gen)
            ref = F.linear(x.float(), wk.float())
            errs = {}
            for v in variants:
                y = forced(v, copies[0], x)()
                errs[v] = float((y.float() - ref).norm() / ref.norm())
            cands = {"dense": [lambda d=d: F.linear(x, d) for d in dense_w]}
            if lt:
                cands["cusparselt"] = [lambda v=v: F.linear(x, v) for v in lt]
            for v in variants:
                cands[v] = [forced(v, p, x) for p in copies]
            res = interleaved_gpu(cands, rounds=args.rounds)
            us = {k: r["us"] for k, r in res.items()}
            best = min(variants[1:], key=lambda v: us[v])
            row = dict(shape=shape, dtype=args.dtype, batch=batch, us=us, rel_err=errs,
                       best=best, timing={k: r["timing"] for k, r in res.items()})
            rows.append(row)
            lt_s = f" cuSPARSELt {us['cusparselt']:.2f}" if "cusparselt" in us else ""
            print(f"{shape:>11} b={batch:<4} dense {us['dense']:.2f}{lt_s} | " +
                  " ".join(f"{v} {us[v]:.2f}" for v in variants) +
                  f" | best {best} x{us['dense'] / us[best]:.2f} dense"
                  + (f" x{us['cusparselt'] / us[best]:.2f} lt" if "cusparselt" in us else "")
                  + f" | max err {max(errs.values()):.1e}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), variants=variants,
               rows=rows)
    (args.out / "nm24_sweep.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
