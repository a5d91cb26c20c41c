"""Every BSR tensor-core kernel and every CSR kernel of the CUDA extension, forced in turn
through SPARSEPRUNE_CUDA_BSR / SPARSEPRUNE_CUDA_CSR, against dense cuBLAS, per pattern, shape
and batch (2:4 has its own sweep, cuda_nm24_sweep.py).

One process; all candidates of a (pattern, shape, batch) are CUDA graphs replayed
interleaved (sparseprune.bench.cuda.interleaved_gpu), weights cycling through copies larger
than twice the L2. The automatic choices (bsr_choice in csrc/cuda/spmm_bsr.cu, csr_choice in
csrc/cuda/spmm_csr.cu) are set from this table.

    python benchmarks/cuda_variant_sweep.py --out DIR [--patterns bsr32x32@0.9,csr@0.95]
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

KEYS = {"bsr": "SPARSEPRUNE_CUDA_BSR", "csr": "SPARSEPRUNE_CUDA_CSR"}


def parse(pattern: str):
    """'bsr32x32@0.9' -> ('bsr', {'block': (32, 32)}, 0.9); 'csr@0.95' -> ('csr', {}, 0.95)."""
    kind, sparsity = pattern.split("@")
    if kind.startswith("bsr"):
        return "bsr", dict(block=tuple(int(v) for v in kind[3:].split("x"))), float(sparsity)
    if kind == "csr":
        return "csr", {}, float(sparsity)
    raise ValueError(f"unknown pattern {pattern!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008,3072x768,768x3072")
    ap.add_argument("--patterns", default="bsr32x32@0.9,bsr16x16@0.9,csr@0.95,csr@0.9",
                    help="comma-separated bsrBHxBW@SPARSITY or csr@SPARSITY")
    ap.add_argument("--batches", default="16,32,64,128,256,512")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    head = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    for pattern in args.patterns.split(","):
        fmt, kw, sparsity = parse(pattern)
        key = KEYS[fmt]
        variants = getattr(_C, f"cuda_{fmt}_variants")().split(", ")
        for shape in args.shapes.split(","):
            out_f, in_f = (int(v) for v in shape.split("x"))
            gen = torch.Generator(device="cuda").manual_seed(out_f * 31 + in_f)
            w = torch.randn(out_f, in_f, device="cuda", dtype=dtype, generator=gen)
            keep = (masks.block(w.abs().float(), sparsity, kw["block"]) if fmt == "bsr"
                    else masks.unstructured(w.abs().float(), sparsity))
            packed = sp.pack(w, fmt, keep, **kw)
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
                    y = forced(v, copies[0], x, key)()
                    errs[v] = float((y.float() - ref).norm() / ref.norm())
                cands = {"dense": [lambda d=d: F.linear(x, d) for d in dense_w]}
                for v in variants:
                    cands[v] = [forced(v, p, x, key) for p in copies]
                res = interleaved_gpu(cands, rounds=args.rounds)
                us = {k: r["us"] for k, r in res.items()}
                best = min(variants[1:], key=lambda v: us[v])
                rows.append(dict(pattern=pattern, shape=shape, dtype=args.dtype, batch=batch,
                                 variants=variants, us=us, rel_err=errs, best=best,
                                 timing={k: r["timing"] for k, r in res.items()}))
                print(f"{pattern:>13} {shape:>11} b={batch:<4} dense {us['dense']:.2f} | " +
                      " ".join(f"{v} {us[v]:.2f} (x{us['dense'] / us[v]:.2f})"
                               for v in variants) +
                      f" | best {best} | max err {max(errs.values()):.1e}", flush=True)
                # Rewritten after every row: a sweep cut off by the lease keeps what it measured.
                (args.out / "variant_sweep.json").write_text(json.dumps(dict(head, rows=rows),
                                                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
