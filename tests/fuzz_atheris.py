"""Coverage-guided fuzzing of ``sp.load`` with atheris (``make fuzz`` runs it after the
hypothesis cases; not collected by pytest).

The input bytes are a whole checkpoint file, grown from valid seed checkpoints (a small
model with CSR, BSR, 2:4 and 1:4 layers, written by ``sp.save``). A structure-aware mutator
keeps most files readable as safetensors so the cases reach our validation: it mutates the
tensor bytes in place (offsets, indices, values; lengths kept), or one value of the JSON
header (a tensor's dtype, shape or data offsets, or a field of our ``sparseprune`` layer
metadata: format, shapes, n:m, block, ...), or, one time in ten, any bytes at all.
Every file must either load into a model whose forward matches the dense product of the
loaded weights, or fail with ValueError / TypeError / RuntimeError (FormatError included).
Anything else (another exception, a crash, a sanitizer report) is a finding.

    python tests/fuzz_atheris.py -runs=20000            # seeds written to a temp corpus
    python tests/fuzz_atheris.py -runs=20000 CORPUS_DIR  # keep the corpus
"""

import json
import os
import random
import struct
import sys
import tempfile

import atheris
import torch  # imported first: only sparseprune's own modules get coverage instrumentation
from torch import nn

with atheris.instrument_imports(include=["sparseprune"]):
    import sparseprune as sp
    import sparseprune.formats  # noqa: F401
    import sparseprune.io  # noqa: F401

torch.set_num_threads(1)
EXPECTED = (ValueError, TypeError, RuntimeError)


def _model(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                          nn.Linear(8, 8), nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
        model[0].weight.mul_(sp.masks.unstructured(model[0].weight.abs(), 0.7))
        model[2].weight.mul_(sp.masks.block(model[2].weight.abs(), 0.5, block=(4, 4)))
        model[4].weight.mul_(sp.masks.n_m(model[4].weight.abs(), 2, 4))
        model[5].weight.mul_(sp.masks.n_m(model[5].weight.abs(), 1, 4))
    return model


def _sparse_model() -> nn.Module:
    model = _model()
    for i, fmt in ((0, "csr"), (2, "bsr"), (4, "nm"), (5, "nm")):
        model[i] = sp.SparseLinear.from_linear(model[i], fmt)
    return model


def _seeds(directory: str) -> None:
    sp.save(_sparse_model(), os.path.join(directory, "seed-fp32.safetensors"))
    sp.save(_sparse_model().to(torch.bfloat16),
            os.path.join(directory, "seed-bf16.safetensors"))


SCRATCH = tempfile.NamedTemporaryFile(prefix="sp-fuzz-", suffix=".safetensors",
                                      dir="/dev/shm" if os.path.isdir("/dev/shm") else None,
                                      delete=False).name
X = torch.randn(3, 16)
REASONS: dict = {}
COUNTS = {"runs": 0, "rejected": 0, "loaded and checked": 0}


def test_one_input(data: bytes) -> None:
    COUNTS["runs"] += 1
    if COUNTS["runs"] % 5000 == 0:  # libFuzzer leaves through _exit: no atexit report
        print(f"sparseprune fuzz_atheris: {COUNTS}", file=sys.stderr, flush=True)
        if REASONS:
            print(sorted(REASONS.items(), key=lambda kv: -kv[1])[:8], file=sys.stderr)
    with open(SCRATCH, "wb") as f:
        f.write(data)
    try:
        ckpt = sp.load(SCRATCH)
        model = ckpt.apply(_model(), strict=False)
    except EXPECTED as e:
        COUNTS["rejected"] += 1
        if os.environ.get("FUZZ_REASONS"):
            REASONS[str(e)[:60]] = REASONS.get(str(e)[:60], 0) + 1
        return
    # Whatever loaded must compute what its own weights say.
    x = X
    for m in model:
        try:
            y = m(x.to(m.bias.dtype if getattr(m, "bias", None) is not None else x.dtype))
        except EXPECTED:
            COUNTS["rejected"] += 1
            return  # e.g. a dtype or shape the mutation changed: refused with a reason
        if isinstance(m, sp.SparseLinear):
            w = m.to_dense_weight().double()
            b = m.bias.double() if m.bias is not None else torch.zeros(w.shape[0])
            xd = x.double()
            if not (xd.isfinite().all() and w.isfinite().all() and b.isfinite().all()):
                return  # inf/NaN data propagate as in nn.Linear (float data, not an index)
            ref = xd @ w.t() + b
            # Rounding bound of a dot product: proportional to the sum of |terms|.
            scale = xd.abs() @ w.abs().t() + b.abs()
            tol = 2e-2 if y.dtype == torch.bfloat16 else 1e-4
            bad = (y.double() - ref).abs() > tol * scale + 1e-6
            if bad.any() and y[bad].isfinite().all():
                raise AssertionError("a loaded layer computes something else than its weights")
        x = y
    COUNTS["loaded and checked"] += 1


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _new_value(old, rng: random.Random):
    choice = rng.random()
    if isinstance(old, bool) or choice < 0.15:
        return rng.choice([None, True, False, [], {}, "x", -1, 0, 2**31, 2**63, 1.5])
    if isinstance(old, int):
        return rng.choice([old + rng.randint(-3, 3), -old, old * 2, old // 2, 0, -1,
                           2**16, 2**32 + old, 10**9])
    if isinstance(old, float):
        return rng.choice([float("nan"), float("inf"), -old, 0.0, old * 10])
    if isinstance(old, str):
        return rng.choice(["csr", "bsr", "nm", "F32", "BF16", "F16", "I64", "I32", "U8",
                           "U16", "I16", "F64", "BOOL", "SparseLinear", "SparseConv2d",
                           "2:4", "1:4", "unstructured", "4x4", "", old[:-1], old + "0"])
    return old


def _mutate_header(header: dict, rng: random.Random) -> dict:
    meta = header.get("__metadata__", {})
    if meta.get("sparseprune") and rng.random() < 0.5:
        try:
            inner = json.loads(meta["sparseprune"])
        except ValueError:
            return header
        leaves = list(_leaves(inner))
        if leaves:
            path, old = rng.choice(leaves)
            _set(inner, path, _new_value(old, rng))
        meta["sparseprune"] = json.dumps(inner)
        return header
    leaves = [(p, v) for p, v in _leaves(header) if p and p[0] != "__metadata__"]
    if leaves:
        path, old = rng.choice(leaves)
        _set(header, path, _new_value(old, rng))
    return header


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if len(data) < 8 or rng.random() < 0.1:
        return atheris.Mutate(data, max_size)
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError):
        return atheris.Mutate(data, max_size)
    body = data[8 + n:]
    if rng.random() < 0.5 and body:
        body = atheris.Mutate(body, len(body))
        body = (body + bytes(len(data) - 8 - n))[:len(data) - 8 - n]  # length kept
    else:
        header = _mutate_header(header, rng)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = tempfile.mkdtemp(prefix="sp-fuzz-corpus-")
        args.append(corpus)
    corpus = [a for a in args[1:] if not a.startswith("-")][0]
    os.makedirs(corpus, exist_ok=True)
    _seeds(corpus)
    import atexit

    atexit.register(os.unlink, SCRATCH)
    atheris.Setup(args, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
