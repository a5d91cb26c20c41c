import pytest
import torch

import sparseprune as sp

# Awkward on purpose: 1x1, odd primes, in_features not divisible by M or the block.
SHAPES = [(1, 1), (7, 13), (13, 17), (96, 40), (33, 129), (5, 70)]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.fixture(params=sp.available_isas())
def isa(request):
    """Runs the test once per ISA this machine has, forcing the kernels to it."""
    with sp.use_isa(request.param):
        yield request.param


def sparse_weight(out_f, in_f, density, *, dtype=torch.float32, gen=None, zero_rows=True):
    """Random weight with about `density` nonzeros; every third row all zero."""
    w = torch.randn(out_f, in_f, generator=gen)
    w = w * (torch.rand(out_f, in_f, generator=gen) < density)
    if zero_rows:
        w[1::3] = 0
    return w.to(dtype)


def reference(x, w, bias=None):
    """The float64 dense product everything is checked against."""
    b = None if bias is None else bias.double()
    return torch.nn.functional.linear(x.double(), w.double(), b)


def assert_matches(y, ref, dtype):
    torch.testing.assert_close(y.double(), ref, **TOL[dtype])
