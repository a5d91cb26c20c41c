"""pytest-benchmark suite for regression tracking (``make bench``): a fixed set of kernel
cases and their dense baselines, saved per run under .benchmarks/.

    make bench                        # run and save (.benchmarks/<machine>/NNNN_*.json)
    make bench BASELINE=0001          # also compare with saved run 0001 and fail on a median
                                      # regression above BENCH_FAIL (default 15%)

Not collected by ``make test`` (pytest's testpaths is tests/). Weights rotate through >= 96 MB
as in ``sparseprune bench``, so a case is not timed from cache. The sweep and reports are
``sparseprune bench``; this suite only watches a few cases over time.
"""

import pytest
import torch
import torch.nn.functional as F

from sparseprune.bench.shapes import PATTERNS
from sparseprune.bench.sweep import ROTATE_BYTES, clone_packed, pack, prune, rotating

SHAPES = ((1536, 384), (4096, 4096))
CASE_PATTERNS = ("90%", "2:4", "16x16@80%")
BATCHES = (1, 32)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


_WEIGHTS = {}


def _weight(shape):
    if shape not in _WEIGHTS:
        gen = torch.Generator().manual_seed(0)
        _WEIGHTS[shape] = (torch.randn(*shape, generator=gen) / shape[1] ** 0.5,
                           torch.randn(shape[0], generator=gen))
    return _WEIGHTS[shape]


def _ids(v):
    return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_dense(benchmark, shape, batch):
    weight, bias = _weight(shape)
    ws = rotating(weight.clone, weight.numel() * 4, ROTATE_BYTES)
    x = torch.randn(batch, shape[1])
    benchmark.group = f"{_ids(shape)} b{batch}"
    with torch.inference_mode():
        y = benchmark(lambda: F.linear(x, next(ws), bias))
    assert y.shape == (batch, shape[0])


@pytest.mark.parametrize("pattern", CASE_PATTERNS)
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_sparse(benchmark, shape, batch, pattern):
    weight, bias = _weight(shape)
    pruned = prune(weight, PATTERNS[pattern])
    packed = pack(pruned, PATTERNS[pattern])
    packs = rotating(lambda: clone_packed(packed), packed.nbytes, ROTATE_BYTES)
    x = torch.randn(batch, shape[1])
    benchmark.group = f"{_ids(shape)} b{batch}"
    benchmark.extra_info.update(pattern=pattern, nnz=packed.nnz, packed_bytes=packed.nbytes)
    with torch.inference_mode():
        y = benchmark(lambda: next(packs).linear(x, bias))
        # a regression suite that times wrong answers would track nothing useful
        torch.testing.assert_close(y, F.linear(x, pruned, bias), rtol=1e-4, atol=1e-4)
