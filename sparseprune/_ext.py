"""Loads the compiled extension, ``sparseprune._C``, which registers ``torch.ops.sparseprune``.

There is no pure-Python fallback: a package that silently ran reference code would hide a
broken build behind slow kernels, so a missing extension is an ImportError with the fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "sparseprune's compiled extension (sparseprune._C) is not built or does not load: "
        f"{exc}. Build it against the installed torch with "
        "`pip install --no-build-isolation -e .` (or run `make test`)."
    ) from exc

__all__ = ["cpu_capability", "available_isas", "set_isa", "use_isa", "native_bf16"]


def cpu_capability() -> str:
    """The instruction set the CPU kernels run with: ``"avx512"``, ``"avx2"`` or ``"ref"``.

    Chosen once at run time from what the CPU supports; the environment variable
    ``SPARSEPRUNE_ISA=ref|avx2|avx512`` (read on first use) or :func:`set_isa` overrides it.
    """
    return _C.active_isa()


def available_isas() -> list[str]:
    """Every instruction set this machine can run, from ``"ref"`` (scalar C++) upwards."""
    return list(_C.supported_isas())


def set_isa(isa: str) -> None:
    """Forces the CPU kernels to ``isa``; ValueError if unknown or not supported here."""
    if not isinstance(isa, str):
        raise TypeError(f"isa must be a str, got {type(isa).__name__}")
    _C.set_isa(isa)


@contextlib.contextmanager
def use_isa(isa: str) -> Iterator[None]:
    """Runs the enclosed block with the CPU kernels forced to ``isa``, then restores."""
    previous = cpu_capability()
    set_isa(isa)
    try:
        yield
    finally:
        set_isa(previous)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX, as oneDNN sees it).
    Elsewhere torch's bf16 matmuls are emulated: on an AVX2-only AMD EPYC (Zen 3) a MiniLM
    distillation step took ~14 s under bf16 autocast against ~0.9 s in fp32, so bf16 is
    used only where asked for or where this is True (``RecoverConfig(bf16="auto")``, the
    benchmark harness's dense bf16 baselines)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
