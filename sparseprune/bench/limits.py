"""The machine's limits, measured once per run at each thread count: memory copy bandwidth and
dense GEMM peak. Results are then quoted as a percent of these, so a number says how close a
kernel is to what this machine can do, not just how it compares with dense."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .shapes import DTYPES

#: bytes per copy buffer: 4x a 32 MB L3, so the copy runs from DRAM
COPY_BYTES = 128 << 20
GEMM_N = 2048


@dataclass(frozen=True)
class Limits:
    threads: int
    copy_GBps: float  # (bytes read + bytes written) / s of a large tensor copy
    read_GBps: float  # bytes read / s of a large tensor sum
    gemm_GFLOPs: dict  # dtype name -> 2*N^3 / s of an NxN @ NxN matmul (best round)

    def as_dict(self) -> dict:
        return asdict(self)


def _best(fn, rounds: int) -> float:
    fn()  # first touch / allocation outside the timed rounds
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(threads: int, dtypes=tuple(DTYPES), *, copy_bytes: int | None = None,
            gemm_n: int | None = None, rounds: int = 5) -> Limits:
    """Best of ``rounds``: a limit is what the machine can reach, so noise from other jobs
    should not lower it (medians would). Sizes default to the module's COPY_BYTES / GEMM_N,
    read at call time (the smoke test shrinks them)."""
    copy_bytes = COPY_BYTES if copy_bytes is None else copy_bytes
    gemm_n = GEMM_N if gemm_n is None else gemm_n
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = copy_bytes // 4
        src, dst = torch.randn(n), torch.empty(n)
        copy_s = _best(lambda: dst.copy_(src), rounds)
        read_s = _best(lambda: src.sum(), rounds)
        del src, dst
        gemm = {}
        for name in dtypes:
            a = torch.randn(gemm_n, gemm_n).to(DTYPES[name])
            b = torch.randn(gemm_n, gemm_n).to(DTYPES[name])
            gemm[name] = 2 * gemm_n**3 / _best(lambda: a @ b, rounds) / 1e9
        return Limits(threads, 2 * copy_bytes / copy_s / 1e9, copy_bytes / read_s / 1e9, gemm)
    finally:
        torch.set_num_threads(previous)
