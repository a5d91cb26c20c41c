"""Every BSR tensor-core kernel of the CUDA extension, forced in turn through
SPARSEPRUNE_CUDA_BSR, against dense cuBLAS, per block pattern, shape and batch.

One process; all candidates of a (pattern, shape, batch) are CUDA graphs replayed
interleaved (sparseprune.bench.cuda.interleaved_gpu), weights cycling through copies larger
than twice the L2. The automatic choice (bsr_choice in csrc/cuda/spmm_bsr.cu) is set from
this table.

    python benchmarks/cuda_bsr_sweep.py --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sparseprune as sp
from sparseprune import _C, masks
from sparseprune.bench.cuda import _copies, interleaved_gpu

from cuda_nm24_sweep import forced

KEY = "SPARSEPRUNE_CUDA_BSR"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008,3072x768,768x3072")
    ap.add_argument("--patterns", default="32x32@0.9,16x16@0.9",
                    help="comma-separated BHxBW@SPARSITY")
    ap.add_argument("--batches", default="16,32,64,128,256,512")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    variants = _C.cuda_bsr_variants().split(", ")
    dtype = getattr(torch, args.dtype)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for pattern in args.patterns.split(","):
        blk, sparsity = pattern.split("@")
        block = tuple(int(v) for v in blk.split("x"))
        for shape in args.shapes.split(","):
            out_f, in_f = (int(v) for v in shape.split("x"))
            gen = torch.Generator(device="cuda").manual_seed(out_f * 31 + in_f)
            w = torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen)
            keep = masks.block(w.abs().float(), float(sparsity), block)
            packed = sp.pack(w, "bsr", keep, block=block)
            wk = w * keep
            copies = [dataclasses.replace(packed, **{k: t.clone() for k, t in
                                                     packed.tensors().items()})
                      for _ in range(_copies(packed.nbytes, l2))]
            dense_w = [w.clone() for _ in range(_copies(w.numel() * w.element_size(), l2))]
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.randn(batch, in_f, device="cuda", dtype=dtype, generator=gen)
                ref = F.linear(x.float(), wk.float())
                errs = {}
                for v in variants:
                    y = forced(v, copies[0], x, KEY)()
                    errs[v] = float((y.float() - ref).norm() / ref.norm())
                cands = {"dense": [lambda d=d: F.linear(x, d) for d in dense_w]}
                for v in variants:
                    cands[v] = [forced(v, p, x, KEY) for p in copies]
                res = interleaved_gpu(cands, rounds=args.rounds)
                us = {k: r["us"] for k, r in res.items()}
                best = min(variants[1:], key=lambda v: us[v])
                rows.append(dict(pattern=pattern, shape=shape, dtype=args.dtype, batch=batch,
                                 us=us, rel_err=errs, best=best,
                                 timing={k: r["timing"] for k, r in res.items()}))
                print(f"{pattern:>11} {shape:>11} b={batch:<4} dense {us['dense']:.2f} | " +
                      " ".join(f"{v} {us[v]:.2f} (x{us['dense'] / us[v]:.2f})"
                               for v in variants) +
                      f" | best {best} | max err {max(errs.values()):.1e}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), variants=variants,
               rows=rows)
    (args.out / "bsr_sweep.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
