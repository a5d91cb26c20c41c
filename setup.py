"""Builds sparseprune._C.

The kernel core (csrc/cpu/*.cpp) is torch-free and compiled here file by file, each
per-ISA file (``*_avx2.cpp``, ``*_avx512.cpp``) with its own flags from
csrc/cpu/isa_flags.txt; the rest of the library gets no ISA flags at all, so the
extension loads on any x86-64 CPU and the dispatcher picks the kernels at run time.
The torch glue (csrc/ops.cpp, csrc/module.cpp) is built by torch's BuildExtension.

CUDA: when the installed torch is a CUDA build and nvcc is found (CUDA_HOME), the extension
is a CUDAExtension that adds csrc/cuda (kernels for sm_80 and sm_90, plus PTX for newer
GPUs). SPARSEPRUNE_CUDA=1 forces that (and fails clearly if it cannot), SPARSEPRUNE_CUDA=0
forces the CPU-only build. The CPU-only build never touches csrc/cuda.
"""

import os
import sys
from pathlib import Path

from setuptools import setup
import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
CXX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall"]
# `make sanitize` builds a separate copy with AddressSanitizer + UBSan (SPARSEPRUNE_SANITIZE=1).
SANITIZE = os.environ.get("SPARSEPRUNE_SANITIZE") == "1"
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"] if SANITIZE else []
CXX_FLAGS += SAN_FLAGS
NVCC_FLAGS = [
    "-O3", "-std=c++17", "-lineinfo",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",  # PTX, so newer GPUs can JIT it
]


def build_cuda() -> bool:
    """Whether to build the CUDA kernels (see the module docstring)."""
    force = os.environ.get("SPARSEPRUNE_CUDA", "").strip()
    if force not in ("", "0", "1"):
        sys.exit(f"SPARSEPRUNE_CUDA must be 0 or 1, got {force!r}")
    if force == "0":
        return False
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if force == "1" and not possible:
        sys.exit(f"SPARSEPRUNE_CUDA=1 but torch {torch.__version__} is "
                 f"{'a CUDA' if torch.version.cuda else 'a CPU-only'} build and nvcc "
                 f"{'is at ' + CUDA_HOME if CUDA_HOME else 'was not found (set CUDA_HOME)'}")
    return possible


def isa_flags():
    """{isa: [flags]} from csrc/cpu/isa_flags.txt."""
    flags = {}
    for line in (CSRC / "cpu" / "isa_flags.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            isa, *rest = line.split()
            flags[isa] = rest
    return flags


def core_sources():
    """[(source, extra flags)] for the torch-free kernel core."""
    flags = isa_flags()
    out = []
    for src in sorted((CSRC / "cpu").glob("*.cpp")):
        isa = src.stem.rsplit("_", 1)[-1]
        out.append((src, flags.get(isa, [])))
    return out


class BuildCoreThenExtension(BuildExtension):
    """Compiles the kernel core with per-file flags, then links it into the extension."""

    def build_extensions(self):
        objects = []
        for src, flags in core_sources():
            objects += self.compiler.compile(
                [str(src.relative_to(ROOT))],
                output_dir=self.build_temp,
                include_dirs=[str(CSRC)],
                extra_postargs=["-fPIC", *CXX_FLAGS, *flags],
            )
        for ext in self.extensions:
            ext.extra_objects = [*objects, *ext.extra_objects]
        super().build_extensions()


if sys.platform != "linux":
    print("sparseprune: only Linux x86-64 builds are tested", file=sys.stderr)

WITH_CUDA = build_cuda()
_sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/module.cpp"]
_cxx = [*CXX_FLAGS, "-fopenmp"]
if WITH_CUDA:
    print("sparseprune: building the CUDA kernels (csrc/cuda)", file=sys.stderr)
    _sources += ["csrc/cuda/ops_cuda.cpp", *sorted(f"csrc/cuda/{p.name}"
                                                   for p in (CSRC / "cuda").glob("*.cu"))]
    _cxx.append("-DSPARSEPRUNE_WITH_CUDA")
_Extension = CUDAExtension if WITH_CUDA else CppExtension

setup(
    ext_modules=[
        _Extension(
            "sparseprune._C",
            sources=_sources,
            include_dirs=[str(CSRC)],
            # at::parallel_for is a header template over OpenMP in torch's CPU builds: without
            # -fopenmp here it would silently run every op on one thread.
            extra_compile_args={"cxx": _cxx, "nvcc": NVCC_FLAGS} if WITH_CUDA else {"cxx": _cxx},
            extra_link_args=["-fopenmp", *SAN_FLAGS],
            depends=[str(p) for p in CSRC.rglob("*")
                     if p.suffix in {".h", ".cpp", ".txt", ".cu", ".cuh"}],
        )
    ],
    cmdclass={"build_ext": BuildCoreThenExtension.with_options(use_ninja=True)},
)
