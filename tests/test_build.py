"""The package runs on the compiled extension, and the ISA dispatch behaves."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparseprune as sp


def test_extension_is_compiled():
    from sparseprune import _C

    assert Path(_C.__file__).suffix == ".so"
    for op in ("linear_csr", "linear_bsr", "linear_nm"):
        assert hasattr(torch.ops.sparseprune, op)


def test_capability_is_best_available():
    isas = sp.available_isas()
    assert isas[0] == "ref"
    assert set(isas) <= {"ref", "avx2", "avx512"}
    if not os.environ.get("SPARSEPRUNE_ISA"):
        assert sp.cpu_capability() == isas[-1]


def test_this_machine_has_avx512():
    # Every machine of this project is a Sapphire Rapids: if detection says otherwise,
    # it is broken (and the fast kernels silently never run).
    flags = Path("/proc/cpuinfo").read_text()
    if " avx512bw " not in flags:
        pytest.skip("CPU without AVX-512BW")
    assert "avx512" in sp.available_isas()


def test_use_isa_restores():
    before = sp.cpu_capability()
    with sp.use_isa("ref"):
        assert sp.cpu_capability() == "ref"
    assert sp.cpu_capability() == before


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        sp.set_isa("sse9")
    with pytest.raises(TypeError):
        sp.set_isa(2)


def _capability_in_subprocess(value):
    env = {**os.environ, "SPARSEPRUNE_ISA": value}
    code = ("import torch, sparseprune as sp\n"
            "w = sp.CSRWeight.from_dense(torch.eye(3))\n"
            "w.linear(torch.ones(1, 3))\n"
            "print(sp.cpu_capability())")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("isa", sp.available_isas())
def test_environment_variable_forces_isa(isa):
    result = _capability_in_subprocess(isa)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa


def test_environment_variable_rejects_unknown():
    result = _capability_in_subprocess("avx9000")
    assert result.returncode != 0
    assert "SPARSEPRUNE_ISA" in result.stderr and "avx9000" in result.stderr
