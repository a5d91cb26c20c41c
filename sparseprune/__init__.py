"""sparseprune: pruning that makes PyTorch models actually run faster.

The chain: importance scores -> masks (:mod:`sparseprune.masks`) -> packed weights
(:mod:`sparseprune.formats`) -> compiled kernels (``torch.ops.sparseprune.*``, wrapped in
:mod:`sparseprune.ops`).
"""

from . import _ext  # noqa: F401  (loads the extension: the ops exist from here on)
from . import formats, masks, ops
from ._ext import available_isas, cpu_capability, set_isa, use_isa
from .formats import BSRWeight, CSRWeight, FormatError, NMWeight, PackedWeight, pack

__version__ = "0.1.0"

__all__ = [
    "BSRWeight",
    "CSRWeight",
    "FormatError",
    "NMWeight",
    "PackedWeight",
    "available_isas",
    "cpu_capability",
    "formats",
    "masks",
    "ops",
    "pack",
    "set_isa",
    "use_isa",
]
