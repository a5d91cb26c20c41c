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


# Headers that a CPU-only torch wheel and a CUDA toolkit without the math libraries lack
# (DESIGN.md, "CUDA on this machine"): just enough declarations for torch's CUDA headers to
# parse, so that our binding's own code is checked. Never used to build anything.
_CUDA_STUBS = {
    "c10/cuda/impl/cuda_cmake_macros.h": "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n",
    "cusparse.h": "#pragma once\ntypedef struct cusparseContext* cusparseHandle_t;\n"
                  "typedef int cusparseStatus_t;\n",
    "cublas_v2.h": "#pragma once\ntypedef struct cublasContext* cublasHandle_t;\n"
                   "typedef int cublasStatus_t;\n",
    "cublasLt.h": "#pragma once\ntypedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolverDn.h": "#pragma once\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n",
    "cusolver_common.h": "#pragma once\ntypedef int cusolverStatus_t;\n",
}


def test_cuda_binding_parses(tmp_path):
    """csrc/cuda/ops_cuda.cpp and the CUDA part of csrc/module.cpp need a CUDA torch to
    build, which no CI machine has; g++ -fsyntax-only against torch's headers (stubs for
    what is missing) catches errors in our binding code before a GPU session does."""
    import shutil

    from torch.utils.cpp_extension import include_paths

    nvcc = shutil.which("nvcc")
    homes = [os.environ.get("CUDA_HOME"), "/usr/local/cuda",
             str(Path(nvcc).resolve().parents[1]) if nvcc else None]
    cuda_include = next((Path(h) / "include" for h in homes
                         if h and (Path(h) / "include" / "cuda_runtime.h").exists()), None)
    if cuda_include is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime.h) on this machine")
    for rel, text in _CUDA_STUBS.items():
        real = [p for p in include_paths() + [str(cuda_include)] if (Path(p) / rel).exists()]
        if not real:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
    import pybind11
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    flags = ["-std=c++17", "-fsyntax-only", "-DSPARSEPRUNE_WITH_CUDA", "-w",
             *(f"-I{p}" for p in include_paths()), f"-I{tmp_path}",
             f"-I{cuda_include}", f"-I{root / 'csrc'}",
             f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}"]
    for src in ("csrc/cuda/ops_cuda.cpp", "csrc/module.cpp"):
        res = subprocess.run(["g++", *flags, str(root / src)], capture_output=True, text=True)
        assert res.returncode == 0, f"{src} does not parse:\n{res.stderr[-3000:]}"
