"""Concurrency: several Python threads share one sparse layer; the kernels release the GIL."""

import threading
import time

import pytest
import torch

import sparseprune as sp


def _layer(fmt):
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80)
    with torch.no_grad():
        keep = {"csr": lambda: sp.masks.unstructured(lin.weight.abs(), 0.8),
                "bsr": lambda: sp.masks.block(lin.weight.abs(), 0.5, (8, 8)),
                "nm": lambda: sp.masks.n_m(lin.weight.abs(), 2, 4)}[fmt]()
        lin.weight.mul_(keep)
    kw = dict(block=(8, 8)) if fmt == "bsr" else dict(n=2, m=4) if fmt == "nm" else {}
    return sp.SparseLinear.from_linear(lin, fmt, **kw).requires_grad_(False)


@pytest.mark.parametrize("fmt", ["csr", "bsr", "nm"])
def test_four_threads_share_one_layer(fmt):
    layer = _layer(fmt)
    inputs = [torch.randn(b, 96) for b in (1, 3, 8, 17, 33, 64) for _ in range(4)]
    expected = [layer(x) for x in inputs]
    results: dict[tuple[int, int], torch.Tensor] = {}
    errors = []
    start = threading.Barrier(4)

    def worker(tid):
        try:
            start.wait()
            for rep in range(5):
                for i in range(tid, len(inputs), 4):
                    results[(i, rep)] = layer(inputs[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 5 * len(inputs)
    for (i, _), y in results.items():
        assert torch.equal(y, expected[i])  # bitwise: the split of work is deterministic


def test_kernels_release_the_gil():
    w = torch.randn(2048, 2048)
    packed = sp.CSRWeight.from_dense(w * (torch.rand_like(w) < 0.3))
    x = torch.randn(64, 2048)

    def work():
        for _ in range(5):
            packed.linear(x)

    t0 = time.perf_counter()
    work()
    duration = time.perf_counter() - t0

    def spins(target):
        th = threading.Thread(target=target)
        n = 0
        th.start()
        while th.is_alive():
            n += 1
        th.join()
        return n

    asleep = spins(lambda: time.sleep(duration))
    busy = spins(work)
    # Holding the GIL inside the op would leave this thread a handful of iterations between
    # calls; released, it spins about as often as beside a sleeping thread.
    assert busy > 0.05 * asleep and busy > 1000, (busy, asleep)
