"""Builds sparseprune._C.

The kernel core (csrc/cpu/*.cpp) is torch-free and compiled here file by file, each
per-ISA file (``*_avx2.cpp``, ``*_avx512.cpp``) with its own flags from
csrc/cpu/isa_flags.txt; the rest of the library gets no ISA flags at all, so the
extension loads on any x86-64 CPU and the dispatcher picks the kernels at run time.
The torch glue (csrc/ops.cpp, csrc/module.cpp) is built by torch's BuildExtension.
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
CXX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-Wall"]


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

setup(
    ext_modules=[
        CppExtension(
            "sparseprune._C",
            sources=["csrc/ops.cpp", "csrc/module.cpp"],
            include_dirs=[str(CSRC)],
            # at::parallel_for is a header template over OpenMP in torch's CPU builds: without
            # -fopenmp here it would silently run every op on one thread.
            extra_compile_args={"cxx": [*CXX_FLAGS, "-fopenmp"]},
            extra_link_args=["-fopenmp"],
            depends=[str(p) for p in CSRC.rglob("*") if p.suffix in {".h", ".cpp", ".txt"}],
        )
    ],
    cmdclass={"build_ext": BuildCoreThenExtension.with_options(use_ninja=True)},
)
