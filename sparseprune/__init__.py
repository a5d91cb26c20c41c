"""sparseprune: pruning that makes PyTorch models actually run faster.

The chain: importance scores -> masks (:mod:`sparseprune.masks`) -> packed weights
(:mod:`sparseprune.formats`) -> compiled kernels (``torch.ops.sparseprune.*``, wrapped in
:mod:`sparseprune.ops`).
"""

from . import _ext  # noqa: F401  (loads the extension: the ops exist from here on)
from . import csr_bitmap, formats, io, masks, nn, ops, pruning, scores, structured, tile_cache
from ._ext import available_isas, cpu_capability, native_bf16, set_isa, use_isa
from .formats import BSRWeight, CSRWeight, FormatError, NMWeight, PackedWeight, pack
from .io import load, save
from .nn import SparseConv2d, SparseLinear, sparsify
from .pruning import CubicSchedule, PruneConfig, Pruner
from .csr_bitmap import set_csr_bitmap
from .tile_cache import set_nm_tile_cache

__version__ = "0.1.0"

__all__ = [
    "BSRWeight",
    "CSRWeight",
    "CubicSchedule",
    "FormatError",
    "NMWeight",
    "PackedWeight",
    "PruneConfig",
    "Pruner",
    "SparseConv2d",
    "SparseLinear",
    "available_isas",
    "cpu_capability",
    "native_bf16",
    "formats",
    "io",
    "load",
    "masks",
    "nn",
    "ops",
    "pack",
    "pruning",
    "save",
    "scores",
    "set_isa",
    "set_csr_bitmap",
    "set_nm_tile_cache",
    "sparsify",
    "structured",
    "csr_bitmap",
    "tile_cache",
    "use_isa",
]
