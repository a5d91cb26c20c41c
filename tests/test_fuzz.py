"""Fuzzing the untrusted-input boundaries: packed-weight constructors, SparseLinear's
load_state_dict and sp.load of a safetensors checkpoint.

Hypothesis builds a valid packed weight, then breaks it: offsets non-monotone or out of
range, indices past in_features, negative or unsorted, wrong lengths, dtypes or ranks,
NaN/Inf values, shapes that do not match, N:M metadata that breaks the rule. Every outcome
must be a clear Python error (ValueError / TypeError, FormatError included) or, when the
mutation happened to leave a valid weight, a product equal to the dense reference. A crash,
a hang or a silent wrong result fails. ``make test`` runs a fast subset;
``make fuzz`` sets SPARSEPRUNE_FUZZ_EXAMPLES=4000 per test (> 10,000 cases in all).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparseprune as sp

EXAMPLES = int(os.environ.get("SPARSEPRUNE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OK_ERRORS = (ValueError, TypeError)  # FormatError is a ValueError


def _weight(out_f, in_f, fmt, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    if fmt in ("csr", "csr8"):
        return sp.CSRWeight.from_dense((w * (torch.rand(out_f, in_f, generator=g) < 0.4))
                                       .to(dtype), index_bits=8 if fmt == "csr8" else None)
    if fmt == "bsr":
        bh, bw = min(2, out_f), min(3, in_f)
        return sp.BSRWeight.from_dense(w.to(dtype), (bh, bw),
                                       sp.masks.block(w.abs(), 0.5, (bh, bw)))
    return sp.NMWeight.from_dense(w.to(dtype), 2, 4, sp.masks.n_m(w.abs(), 2, 4))


def _fields(p):
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}


def _mutate_tensor(t: torch.Tensor, kind: str, pos: int, big: int) -> object:
    flat = t.reshape(-1).clone()
    n = flat.numel()
    i = pos % n if n else 0
    if kind == "set_big" and n:
        if flat.dtype == torch.uint16:
            flat = flat.to(torch.int32)
            flat[i] = big
            return flat.to(torch.uint16).view(t.shape) if big < 65536 else flat.view(t.shape)
        if flat.dtype == torch.uint8:
            big %= 256
        flat[i] = big if not flat.dtype.is_floating_point else float(big)
    elif kind == "set_negative" and n and flat.dtype not in (torch.uint8, torch.uint16):
        flat[i] = -1 - pos
    elif kind == "swap" and n > 1:
        j = (i + 1 + pos // 7) % n
        flat[i], flat[j] = flat[j].clone(), flat[i].clone()
    elif kind == "nan" and n and flat.dtype.is_floating_point:
        flat[i] = float("nan") if pos % 2 else float("inf")
    elif kind == "truncate":
        return t.reshape(-1)[:-1] if t.dim() == 1 else t[..., :-1]
    elif kind == "extend" and n and t.dim() >= 1:
        return torch.cat([t, t[:1]])
    elif kind == "dtype":
        for d in (torch.int64, torch.int32, torch.float64, torch.int16, torch.uint8):
            if d != t.dtype:
                return t.to(d)
    elif kind == "rank":
        return t.unsqueeze(0)
    elif kind == "not_tensor":
        return t.tolist()
    elif kind == "fill":
        return torch.full_like(t, pos % 7 if not t.dtype.is_floating_point else 0.5)
    elif kind == "flip" and t.dim() >= 1:
        if t.dtype == torch.uint16:  # torch has no flip kernel for uint16
            return t.to(torch.int32).flip(0).to(torch.uint16)
        return t.flip(0)
    return flat.view(t.shape)


KINDS = ["set_big", "set_negative", "swap", "nan", "truncate", "extend", "dtype", "rank",
         "not_tensor", "fill", "flip"]


def _check_product(p: sp.PackedWeight):
    """A weight that passed validation must compute its own dense product."""
    x = torch.randn(3, p.in_features).to(p.dtype)
    y = p.linear(x)
    ref = x.double() @ p.to_dense().double().T
    tol = 1e-4 if p.dtype == torch.float32 else 3e-2
    assert torch.allclose(y.double(), ref, rtol=tol, atol=tol)


@FUZZ
@given(fmt=st.sampled_from(["csr", "csr8", "bsr", "nm"]),
       out_f=st.integers(1, 9), in_f=st.integers(1, 13), seed=st.integers(0, 2**16),
       mutations=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10**6),
                                    st.integers(-3, 70000)), min_size=1, max_size=3),
       field_pick=st.integers(0, 100), shape_delta=st.sampled_from([None, (0, 1), (1, 0),
                                                                    (-1, 0), (0, -2),
                                                                    (10**6, 0)]))
def test_constructors_never_crash(fmt, out_f, in_f, seed, mutations, field_pick, shape_delta):
    if fmt == "nm" and in_f < 1:
        return
    if fmt == "csr8":  # 1-3 segments of 256 columns, the last one ragged
        in_f = 200 + 31 * in_f
    p = _weight(out_f, in_f, fmt, seed)
    fields = _fields(p)
    names = list(p._tensor_fields)
    for kind, pos, big in mutations:
        name = names[(field_pick + pos) % len(names)]
        cur = fields[name]
        if isinstance(cur, torch.Tensor):
            fields[name] = _mutate_tensor(cur, kind, pos, big)
    if shape_delta is not None:
        fields["shape"] = (p.shape[0] + shape_delta[0], p.shape[1] + shape_delta[1])
    try:
        q = type(p)(**fields)
    except OK_ERRORS:
        return
    _check_product(q)


def _model(fmt):
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 7)
    with torch.no_grad():
        keep = (sp.masks.n_m(lin.weight.abs(), 2, 4) if fmt == "nm"
                else sp.masks.unstructured(lin.weight.abs(), 0.6))
        lin.weight.mul_(keep)
    kw = dict(block=(1, 4)) if fmt == "bsr" else dict(n=2, m=4) if fmt == "nm" else {}
    return sp.SparseLinear.from_linear(lin, fmt, **kw)


@FUZZ
@given(fmt=st.sampled_from(["csr", "bsr", "nm"]), pick=st.integers(0, 100),
       kind=st.sampled_from(KINDS), pos=st.integers(0, 10**6), big=st.integers(-3, 70000))
def test_load_state_dict_never_crashes(fmt, pick, kind, pos, big):
    layer = _model(fmt)
    state = layer.state_dict()
    keys = sorted(state)
    key = keys[pick % len(keys)]
    state[key] = _mutate_tensor(state[key], kind, pos, big)
    fresh = _model(fmt)
    try:
        fresh.load_state_dict(state)
    except (*OK_ERRORS, RuntimeError):  # RuntimeError: torch's own size-mismatch message
        return
    x = torch.randn(2, 12)
    ref = x.double() @ fresh.packed_weight().to_dense().double().T
    if fresh.bias is not None:
        ref = ref + fresh.bias.double()
    # A NaN bias is float data like any other (dense nn.Linear gives NaN too), not an index.
    assert torch.allclose(fresh(x).double(), ref, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import load_file

    model = torch.nn.Sequential(_model("csr"), torch.nn.ReLU(), _model("nm"))
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    sp.save(model, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    return path, load_file(str(path)), header


@FUZZ
@given(pick=st.integers(0, 100), kind=st.sampled_from(KINDS), pos=st.integers(0, 10**6),
       big=st.integers(-3, 70000))
def test_sp_load_never_crashes(checkpoint, tmp_path_factory, pick, kind, pos, big):
    from safetensors.torch import save_file

    path, state, header = checkpoint
    state = dict(state)
    keys = sorted(state)
    key = keys[pick % len(keys)]
    bad = _mutate_tensor(state[key], kind, pos, big)
    if not isinstance(bad, torch.Tensor):
        bad = torch.tensor(bad)
    state[key] = bad.contiguous()
    out = tmp_path_factory.mktemp("bad") / "bad.safetensors"
    save_file(state, str(out), metadata=header.get("__metadata__"))
    try:
        ckpt = sp.load(out)
    except OK_ERRORS:
        return
    for packed in ckpt.packed.values():
        _check_product(packed)
