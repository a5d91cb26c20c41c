"""Drop-in sparse layers and :func:`sparsify`.

:class:`SparseLinear` and :class:`SparseConv2d` hold a packed weight (see
:mod:`sparseprune.formats`) as module tensors and run it through ``torch.ops.sparseprune``:

* the index tensors (offsets, column indices, N:M metadata) are buffers; the stored values are
  an ``nn.Parameter`` (like ``nn.Linear.weight``), so ``state_dict()``, ``.to()``,
  ``.bfloat16()`` and optimizers work and the sparsity structure stays fixed;
* loading a state dict rebuilds the packed weight through the validating constructor of its
  format (:class:`~sparseprune.formats.FormatError` names the bad field) before anything is
  copied, and accepts a different number of stored entries than the module had;
* backward works: the ops have autograd formulas, so gradients reach the input, the stored
  values and the bias (never the zeros: pruned entries stay pruned). Backward rebuilds the
  dense weight, so it costs about as much as a dense layer's backward.

Format choice (``format="auto"``). The pattern is detected from the weight's zeros
(:func:`detect_pattern`): N:M for 1:4, 2:8, 1:2, 2:4 and 4:8 (tightest first), whole blocks for
the block sizes in :data:`BLOCK_CANDIDATES` (largest first; a block counts when at least 90% of
the entries inside stored blocks are nonzero), else unstructured. Then:

* blocks -> ``"bsr"`` when at least half of the entries of the stored blocks are nonzero;
* N:M -> ``"nm"`` for float32 CPU weights when the AVX-512 kernels run (their row-tile
  kernel, vectorized over 16 output rows, needs m to divide 16, as every detected m does):
  it beat CSR on the same weight in 45 of 48 cases (2:4, 1:4, 2:8 on 384x384, 1536x384,
  384x1536, 768x3072 at batches 1, 8, 128, 4096; by up to 1.9x; the three losses by 7-11%,
  at batch 1, where no row tiles run). bfloat16 N:M (no row-tile kernel; CSR won 9 of 16
  cases), the AVX2 and scalar kernels, and CUDA weights keep ``"csr"``; ``format="nm"``
  still packs N:M there;
* everything else -> ``"csr"``, with 8-bit column indices on the CPU from
  :data:`CSR8_MIN_DENSITY` (20%) nonzeros on, 16-bit below (:func:`csr_index_bits`; the same
  for ``format="csr"``). A module moved to CUDA repacks 8-bit CSR to 16-bit.

The rule comes from ``benchmarks/bench_formats.py`` (same weight packed both ways, interleaved
against dense; MiniLM/BERT shapes, batches 1 / 8 / 128 / 4096; numbers in
benchmarks/RESULTS.md, section "Drop-in layers"). Re-measure and update
:func:`choose_format` when the kernels change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import ops  # noqa: F401  (registers fake kernels + autograd for the ops used below)
from . import activations
from ._ext import cpu_capability
from .activations import ACTIVATIONS, apply_activation
from .csr_bitmap import csr_bitmap_linear
from .tile_cache import nm_tiles_linear
from .formats import (VALUE_DTYPES, BSRWeight, CSRWeight, FormatError, NMWeight, PackedWeight,
                      pack)

__all__ = [
    "AUTO_FORMAT",
    "BLOCK_CANDIDATES",
    "NM_CANDIDATES",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyReport",
    "choose_format",
    "csr_index_bits",
    "detect_pattern",
    "sparsify",
]

#: N:M patterns ``detect_pattern`` looks for, tightest first (1:4 also satisfies 2:4 and 2:8).
NM_CANDIDATES = ((1, 4), (2, 8), (1, 2), (2, 4), (4, 8))
#: block shapes ``detect_pattern`` looks for, largest first.
BLOCK_CANDIDATES = ((32, 32), (16, 16), (8, 8), (4, 4), (4, 1), (1, 4))
# A block pattern is real when the stored blocks are (almost) full of nonzeros.
_BLOCK_FILL = 0.9
# Below this share of nonzeros in the stored slots/blocks, CSR (nonzeros only) is used.
_STRUCTURE_FILL = 0.5
_FORMATS = ("auto", "csr", "bsr", "nm")
#: From this share of nonzeros on, CPU CSR weights are packed with 8-bit column indices:
#: against 16-bit on the MiniLM/BERT/4096x4096 shapes (benchmarks/bench_csr8.py, fp32, 2
#: threads) 8-bit ran 0.99-1.14x at batch 1 and 1.02-1.29x at batch 8-128 at 50% and 70%
#: sparsity; at 90% 1.03-1.21x at batch 8-32 but 0.85-1.00x at batch 1, so sparser
#: weights keep 16-bit indices.
CSR8_MIN_DENSITY = 0.2
#: pattern kind -> the format ``format="auto"`` packs it in (see the module docstring);
#: N:M only where :func:`choose_format` finds the row-tile kernel, CSR elsewhere.
AUTO_FORMAT = {"nm": "nm", "block": "bsr", "unstructured": "csr"}


# --------------------------------------------------------------------------- detection


@dataclasses.dataclass(frozen=True)
class Pattern:
    """What the zeros of a weight look like: ``kind`` is "nm", "block" or "unstructured";
    ``fill`` is the share of nonzeros among the entries the structure would store."""

    kind: str
    n: int | None = None
    m: int | None = None
    block: tuple[int, int] | None = None
    fill: float = 1.0

    def __str__(self):
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block {self.block[0]}x{self.block[1]}"
        return "unstructured"


def _tile_counts(nonzero: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """Nonzeros in every ``bh x bw`` tile of a float 0/1 matrix (edges padded with zeros).

    Pooling rather than ``view(...).sum(dims)``: strided integer reductions over small
    dimensions are ~10x slower on CPU, and this runs for every candidate of every layer.
    """
    out_f, in_f = nonzero.shape
    padded = F.pad(nonzero, (0, (-in_f) % bw, 0, (-out_f) % bh))
    mean = F.avg_pool2d(padded[None, None], (bh, bw), stride=(bh, bw))[0, 0]
    return (mean * (bh * bw)).round_()


def _nm_fits(counts_by_m: dict, nonzero: torch.Tensor, n: int, m: int) -> bool:
    if m not in counts_by_m:
        counts_by_m[m] = _tile_counts(nonzero, 1, m)
    return bool((counts_by_m[m] <= n).all())


def _block_fill(nonzero: torch.Tensor, block: tuple[int, int]) -> float:
    """Nonzeros over the entries of the blocks that hold any (1.0 for an all-zero weight)."""
    bh, bw = block
    tiles = _tile_counts(nonzero, bh, bw)
    stored = int((tiles > 0).sum()) * bh * bw
    return float(tiles.sum()) / stored if stored else 1.0


def detect_pattern(weight: torch.Tensor) -> Pattern:
    """The sparsity pattern of a 2-D weight from its exact zeros (see the module docstring)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("detect_pattern needs a 2-D weight tensor [out_features, in_features]")
    nonzero = (weight != 0).to(torch.float32)
    out_f, in_f = weight.shape
    nnz = int((weight != 0).sum())
    density = nnz / max(1, weight.numel())
    counts_by_m = {}
    for n, m in NM_CANDIDATES:
        # A layer narrower than a group, or one with no zeros per group to speak of, is not
        # N:M in any useful sense.
        if in_f >= m and density <= n / m and _nm_fits(counts_by_m, nonzero, n, m):
            slots = out_f * math.ceil(in_f / m) * n
            return Pattern("nm", n=n, m=m, fill=nnz / slots if slots else 1.0)
    for block in BLOCK_CANDIDATES:
        if block == (1, 1) or out_f < block[0] or in_f < block[1]:
            continue
        fill = _block_fill(nonzero, block)
        if fill >= _BLOCK_FILL and density < 1.0:
            return Pattern("block", block=block, fill=fill)
    return Pattern("unstructured")


def choose_format(pattern: Pattern, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> str:
    """The format ``format="auto"`` packs a weight of this pattern, dtype and device in
    (module docstring)."""
    choice = AUTO_FORMAT[pattern.kind]
    if choice != "csr" and pattern.fill < _STRUCTURE_FILL:
        return "csr"  # mostly zeros inside the structure: CSR stores only the nonzeros
    if choice == "nm" and not (dtype == torch.float32 and torch.device(device).type == "cpu"
                               and cpu_capability() == "avx512" and 16 % pattern.m == 0):
        return "csr"  # no row-tile kernel: CSR was faster (module docstring)
    return choice


def csr_index_bits(weight: torch.Tensor, device: torch.device | str = "cpu") -> int | None:
    """Column index width a CSR weight is packed with: 8 (8-bit CSR, see
    :class:`~sparseprune.formats.CSRWeight`) for CPU weights with at least
    :data:`CSR8_MIN_DENSITY` nonzeros, else None (16-bit; 32-bit past 65536 columns)."""
    if torch.device(device).type != "cpu" or weight.numel() == 0:
        return None
    density = int(torch.count_nonzero(weight)) / weight.numel()
    return 8 if density >= CSR8_MIN_DENSITY else None


def _pack_weight(weight: torch.Tensor, format: str, block=None, n=None, m=None,
                 mask=None) -> tuple[PackedWeight, Pattern]:
    if not isinstance(format, str) or format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if weight.dtype not in VALUE_DTYPES:
        raise TypeError(f"the sparse kernels take float32 or bfloat16 (float16 too on CUDA) "
                        f"weights, got {weight.dtype}; "
                        f"convert the layer first (e.g. .float())")
    if block is not None and format not in ("bsr", "auto"):
        raise ValueError(f"block= only applies to format='bsr', not {format!r}")
    if (n is not None or m is not None) and format not in ("nm", "auto"):
        raise ValueError(f"n=/m= only apply to format='nm', not {format!r}")
    if (n is None) != (m is None):
        raise ValueError("give both n= and m= (or neither, to detect them)")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool \
                or mask.shape != weight.shape:
            raise TypeError(f"mask must be a bool tensor of the weight's shape "
                            f"{tuple(weight.shape)} (True = keep)")
        weight = torch.where(mask, weight, 0)  # detect the pattern of what will be stored
    pattern = detect_pattern(weight)
    if block is not None:
        format = "bsr"
        pattern = Pattern("block", block=tuple(block), fill=_block_fill(
            (weight != 0).to(torch.float32), tuple(block)) if weight.numel() else 1.0)
    elif n is not None:
        format = "nm"
        pattern = Pattern("nm", n=n, m=m)
    elif format == "auto":
        format = choose_format(pattern, weight.dtype, weight.device)
    elif format == "bsr":
        if pattern.kind != "block":
            raise ValueError("format='bsr': no whole-block zero pattern found in the weight "
                             f"(tried {list(BLOCK_CANDIDATES)}); pass block=(bh, bw)")
        block = pattern.block
    elif format == "nm":
        if pattern.kind != "nm":
            raise ValueError("format='nm': the weight is not N:M sparse for any of "
                             f"{[f'{a}:{b}' for a, b in NM_CANDIDATES]}; pass n= and m=")
        n, m = pattern.n, pattern.m
    if format == "bsr":
        packed = pack(weight, "bsr", mask=mask, block=tuple(block or pattern.block))
    elif format == "nm":
        packed = pack(weight, "nm", mask=mask, n=n or pattern.n, m=m or pattern.m)
    else:
        packed = pack(weight, "csr", mask=mask,
                      index_bits=csr_index_bits(weight, weight.device))
    return packed, pattern


# --------------------------------------------------------------------------- modules


def _format_pattern(packed: PackedWeight) -> str:
    """The pattern a packed weight stores, when nobody detected a finer one."""
    if isinstance(packed, NMWeight):
        return f"{packed.n}:{packed.m}"
    if isinstance(packed, BSRWeight):
        return f"block {packed.block[0]}x{packed.block[1]}"
    return "unstructured"

_CLASSES = {cls.format: cls for cls in (CSRWeight, BSRWeight, NMWeight)}


class _PackedModule(nn.Module):
    """Holds one packed weight as module tensors; shared by the sparse layers."""

    def _set_packed(self, packed: PackedWeight, pattern: str, requires_grad: bool):
        self.format = packed.format
        self.pattern = pattern
        self.weight_shape = tuple(packed.shape)
        self.nm = (packed.n, packed.m) if isinstance(packed, NMWeight) else None
        for name, t in packed.tensors().items():
            if name == packed._values_field:
                self.register_parameter(name, nn.Parameter(t, requires_grad=requires_grad))
            else:
                self.register_buffer(name, t)

    @property
    def _fields(self) -> tuple[str, ...]:
        return _CLASSES[self.format]._tensor_fields

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # 8-bit CSR is a CPU layout: on another device, the same entries with 16/32-bit
        # column indices (the values keep their order, so the parameter is untouched).
        if self.format == "csr" and self.col_indices.dtype == torch.uint8 \
                and self.col_indices.device.type not in ("cpu", "meta"):
            wide = self.packed_weight().with_index_bits(None)
            self._buffers["row_offsets"] = wide.row_offsets
            self._buffers["col_indices"] = wide.col_indices
        return self

    @property
    def _values_name(self) -> str:
        return _CLASSES[self.format]._values_field

    def packed_weight(self) -> PackedWeight:
        """The module's tensors as a validated packed weight (detached)."""
        return self._make_packed({f: getattr(self, f).detach() for f in self._fields})

    def _make_packed(self, tensors: dict[str, torch.Tensor]) -> PackedWeight:
        cls = _CLASSES[self.format]
        extra = {"n": self.nm[0], "m": self.nm[1]} if self.nm else {}
        return cls(**tensors, **extra, shape=self.weight_shape)

    @property
    def nnz(self) -> int:
        return getattr(self, self._values_name).numel()

    @property
    def density(self) -> float:
        """Stored entries over ``out * in`` of the dense weight."""
        total = math.prod(self.weight_shape)
        return self.nnz / total if total else 1.0

    @property
    def packed_nbytes(self) -> int:
        return sum(getattr(self, f).numel() * getattr(self, f).element_size()
                   for f in self._fields)

    def to_dense_weight(self) -> torch.Tensor:
        """The dense 2-D weight ``[out, in(*kh*kw)]`` the module computes with."""
        return self.packed_weight().to_dense()

    def _check_input(self, x: torch.Tensor) -> None:
        """Input dtype and device must be the layer's (checked before any reshaping op, so
        the error names the layer, not an im2col internal)."""
        values = getattr(self, self._values_name)
        if x.dtype != values.dtype:
            raise TypeError(f"{type(self).__name__}: input is {x.dtype} but the layer is "
                            f"{values.dtype}")
        if x.device != values.device:
            raise RuntimeError(f"{type(self).__name__}: input is on {x.device} but the layer "
                               f"is on {values.device}; move one of them (.to(device))")

    def _sparse_linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        values = getattr(self, self._values_name)
        if values.dtype not in VALUE_DTYPES:
            raise TypeError(f"{type(self).__name__} holds {values.dtype} values; the sparse "
                            f"kernels take float32 or bfloat16, float16 too on CUDA (use .float() or "
                            f".bfloat16())")
        self._check_input(x)
        out_f = self.weight_shape[0]
        if self.format == "csr":
            y = csr_bitmap_linear(self, x, self.row_offsets, self.col_indices, values, bias,
                                  out_f)
            if y is not None:
                return y
            return torch.ops.sparseprune.linear_csr(x, self.row_offsets, self.col_indices,
                                                    values, bias, out_f)
        if self.format == "bsr":
            return torch.ops.sparseprune.linear_bsr(x, self.block_row_offsets,
                                                    self.block_col_indices, values, bias, out_f)
        y = nm_tiles_linear(self, x, values, self.metadata, bias, *self.nm, out_f)
        if y is not None:
            return y
        return torch.ops.sparseprune.linear_nm(x, values, self.metadata, bias, *self.nm)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        keys = {f: prefix + f for f in self._fields}
        if all(k in state_dict for k in keys.values()):
            incoming = {f: state_dict[k] for f, k in keys.items()}
            try:
                self._make_packed(incoming)
            except FormatError as e:
                raise FormatError(f"loading {prefix.rstrip('.') or type(self).__name__}: "
                                  f"{e}") from None
            # The number of stored entries (and the CSR index width) may differ from this
            # module's: resize our tensors (keeping their device and, for the values, dtype)
            # so the copy below fits; index tensors take the incoming dtype (copying 16-bit
            # columns into an 8-bit buffer would truncate them).
            for f, t in incoming.items():
                mine = getattr(self, f)
                if mine.shape != t.shape or (f != self._values_name and mine.dtype != t.dtype):
                    fresh = torch.empty(t.shape, dtype=mine.dtype if f == self._values_name
                                        else t.dtype, device=mine.device)
                    if f == self._values_name:
                        self._parameters[f] = nn.Parameter(fresh,
                                                           requires_grad=mine.requires_grad)
                    else:
                        self._buffers[f] = fresh
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _sparse_repr(self) -> str:
        return f"format={self.format}, pattern={self.pattern}, density={self.density:.3f}"


class SparseLinear(_PackedModule):
    """``nn.Linear`` with a packed sparse weight: ``y = x W^T + b`` for ``x [..., in]``.

    Build with :meth:`from_linear` (or :func:`sparsify`); the module computes exactly with
    the linear's weight as it was when packed (its zeros are not stored).
    """

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, *,
                 pattern: str | None = None, requires_grad: bool = True,
                 input_perm: torch.Tensor | None = None, activation: str | None = None):
        super().__init__()
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed must be a CSRWeight, BSRWeight or NMWeight, got "
                            f"{type(packed).__name__}")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got "
                             f"{activation!r}")
        # Applied to the product's output (in place when autograd is off); fused_from names
        # the module a fusion replaced (sparseprune.activations).
        self.activation = activation
        self.fused_from: str | None = None
        self.out_features, self.in_features = packed.shape
        self._set_packed(packed, pattern or _format_pattern(packed), requires_grad)
        if input_perm is not None:
            input_perm = check_permutation(input_perm, self.in_features, "input_perm")
            input_perm = input_perm.to(packed.device)
        # The packed columns are in this order: x[..., input_perm] is what they multiply
        # (an N:M channel permutation carried into the layer).
        self.register_buffer("input_perm", input_perm)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or bias.shape != (self.out_features,):
                raise ValueError(f"bias must be a tensor of shape [{self.out_features}]")
            if bias.dtype != packed.dtype or bias.device != packed.device:
                raise ValueError(f"bias is {bias.dtype} on {bias.device}; the weight is "
                                 f"{packed.dtype} on {packed.device}")
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=requires_grad)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "auto", *,
                    block: tuple[int, int] | None = None, n: int | None = None,
                    m: int | None = None, mask: torch.Tensor | None = None) -> SparseLinear:
        """Packs ``linear.weight`` (times ``mask`` when given; else its zeros are dropped).

        ``format``: "auto" (detect the pattern, pick the fastest format; module docstring),
        "csr", "bsr" (``block=(bh, bw)``, detected when omitted) or "nm" (``n=, m=``, detected
        when omitted).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        packed, pattern = _pack_weight(weight, format, block, n, m, mask)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(packed, bias, pattern=str(pattern),
                   requires_grad=linear.weight.requires_grad,
                   input_perm=getattr(linear, "input_perm", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear expects input [..., {self.in_features}], got "
                             f"{tuple(x.shape)}")
        if self.input_perm is not None:
            x = x.index_select(-1, self.input_perm)
        return apply_activation(self._sparse_linear(x, self.bias), self.activation)

    def extra_repr(self) -> str:
        perm = ", input_perm" if self.input_perm is not None else ""
        act = f", activation={self.activation}" if self.activation else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._sparse_repr()}{perm}{act}")


def check_permutation(perm, size: int, what: str) -> torch.Tensor:
    """``perm`` as an int64 tensor if it is a permutation of ``range(size)``, else ValueError
    (it may come from a file)."""
    if not isinstance(perm, torch.Tensor) or perm.dtype not in (torch.int64, torch.int32) or \
            perm.shape != (size,):
        raise ValueError(f"{what} must be an int64 tensor of shape [{size}], got "
                         f"{getattr(perm, 'dtype', type(perm).__name__)} "
                         f"{tuple(getattr(perm, 'shape', ()))}")
    perm = perm.long()
    if not torch.equal(perm.sort().values.cpu(), torch.arange(size)):
        raise ValueError(f"{what} is not a permutation of range({size})")
    return perm


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class SparseConv2d(_PackedModule):
    """``nn.Conv2d`` (``groups=1``) with a packed sparse weight viewed as
    ``[out, in * kh * kw]``.

    1x1 kernels run the sparse product on the channels directly; k x k kernels unfold the input
    (im2col) and run one sparse product over all patches. Stride, padding (ints or "same"/
    "valid"), dilation and every ``padding_mode`` are supported; ``groups > 1`` is rejected
    (a grouped conv is many small products the kernels have no fast path for).
    """

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None, *, in_channels: int,
                 kernel_size, stride=1, padding=0, dilation=1, padding_mode: str = "zeros",
                 pattern: str | None = None, requires_grad: bool = True):
        super().__init__()
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed must be a packed weight, got {type(packed).__name__}")
        self.in_channels = int(in_channels)
        self.out_channels = packed.shape[0]
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode must be zeros|reflect|replicate|circular, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        if packed.shape[1] != self.in_channels * math.prod(self.kernel_size):
            raise ValueError(f"packed weight has {packed.shape[1]} columns; in_channels * kh * kw "
                             f"= {self.in_channels * math.prod(self.kernel_size)}")
        if isinstance(self.padding, str) and self.padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' needs stride 1 (as in nn.Conv2d)")
        self._set_packed(packed, pattern or _format_pattern(packed), requires_grad)
        if bias is not None:
            if bias.shape != (self.out_channels,) or bias.dtype != packed.dtype:
                raise ValueError(f"bias must be [{self.out_channels}] of dtype {packed.dtype}")
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=requires_grad)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, format: str = "auto", *,
                  block: tuple[int, int] | None = None, n: int | None = None,
                  m: int | None = None, mask: torch.Tensor | None = None) -> SparseConv2d:
        """Packs ``conv.weight`` viewed as ``[out, in * kh * kw]`` (``mask`` in the weight's
        4-D or that 2-D shape); the formats as in :meth:`SparseLinear.from_linear`."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"SparseConv2d supports groups=1 only, got groups={conv.groups} "
                             f"(grouped/depthwise convs have no sparse kernel; leave them dense)")
        weight = conv.weight.detach().reshape(conv.out_channels, -1)
        if isinstance(mask, torch.Tensor) and mask.numel() == weight.numel():
            mask = mask.reshape(weight.shape)  # the 4-D conv mask as the 2-D packed view
        packed, pattern = _pack_weight(weight, format, block, n, m, mask)
        bias = None if conv.bias is None else conv.bias.detach()
        return cls(packed, bias, in_channels=conv.in_channels, kernel_size=conv.kernel_size,
                   stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   padding_mode=conv.padding_mode, pattern=str(pattern),
                   requires_grad=conv.weight.requires_grad)

    def _pad_amounts(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) as nn.Conv2d pads."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            amounts = []
            for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
                total = d * (k - 1)
                amounts += [total // 2, total - total // 2]
            return tuple(amounts)
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SparseConv2d expects input [N, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got {tuple(x.shape)}")
        self._check_input(x)
        pad = self._pad_amounts()
        if any(pad):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, pad, mode=mode)
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        batch, _, height, width = x.shape
        out_h = (height - dh * (kh - 1) - 1) // sh + 1
        out_w = (width - dw * (kw - 1) - 1) // sw + 1
        if (kh, kw) == (1, 1):
            # Channels as the product's input dimension: [N, H, W, C] -> [N, H, W, out].
            patches = x[:, :, ::sh, ::sw].permute(0, 2, 3, 1).contiguous()
            y = self._sparse_linear(patches, self.bias).permute(0, 3, 1, 2)
        else:
            cols = F.unfold(x, (kh, kw), dilation=(dh, dw), stride=(sh, sw))  # [N, C*kh*kw, L]
            y = self._sparse_linear(cols.transpose(1, 2).contiguous(), self.bias)  # [N, L, out]
            y = y.transpose(1, 2).reshape(batch, self.out_channels, out_h, out_w)
        y = y.contiguous()
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"padding_mode={self.padding_mode}, bias={self.bias is not None}, "
                f"{self._sparse_repr()}")


# --------------------------------------------------------------------------- sparsify


@dataclasses.dataclass
class SwapRecord:
    """One layer :func:`sparsify` looked at."""

    name: str
    kind: str  # "Linear" | "Conv2d"
    shape: tuple[int, ...]
    sparsity: float  # share of exact zeros in the dense weight
    swapped: bool
    format: str | None = None
    pattern: str | None = None
    dense_bytes: int = 0  # the dense weight's bytes
    sparse_bytes: int = 0  # the packed tensors' bytes (equal to dense_bytes when not swapped)
    reason: str = ""  # why a layer was left dense
    activation: str | None = None  # fused into the layer (fuse_activations=True)


@dataclasses.dataclass
class SparsifyReport:
    """What :func:`sparsify` did; ``model`` is the model it changed in place."""

    model: nn.Module
    layers: list[SwapRecord]

    @property
    def swapped(self) -> list[SwapRecord]:
        return [r for r in self.layers if r.swapped]

    @property
    def skipped(self) -> list[SwapRecord]:
        return [r for r in self.layers if not r.swapped]

    @property
    def dense_bytes(self) -> int:
        """Weight bytes of every examined layer before."""
        return sum(r.dense_bytes for r in self.layers)

    @property
    def sparse_bytes(self) -> int:
        """Weight bytes of the same layers after (packed where swapped)."""
        return sum(r.sparse_bytes for r in self.layers)

    @property
    def bytes_saved(self) -> int:
        return self.dense_bytes - self.sparse_bytes

    def as_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.layers]

    def __str__(self):
        lines = [f"sparsify: {len(self.swapped)} of {len(self.layers)} layers swapped; weight "
                 f"bytes {self.dense_bytes:,} -> {self.sparse_bytes:,} (saved "
                 f"{self.bytes_saved:,})"]
        for r in self.layers:
            what = (f"{r.format} ({r.pattern})" if r.swapped else f"kept dense: {r.reason}")
            if r.activation:
                what += f" + fused {r.activation}"
            lines.append(f"  {r.name}: {r.kind} {r.shape}, {r.sparsity:.1%} zeros, {what}")
        return "\n".join(lines)


def _matches(name: str, patterns) -> bool:
    import fnmatch

    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def sparsify(model: nn.Module, format: str = "auto", *, min_sparsity: float = 0.5,
             include: str | Iterable[str] | None = None,
             exclude: str | Iterable[str] | None = None,
             on_layer: Callable[[SwapRecord], None] | None = None,
             fuse_activations: bool = True, **format_kwargs) -> SparsifyReport:
    """Swaps, in place, every ``nn.Linear`` / ``nn.Conv2d`` whose weight has at least
    ``min_sparsity`` exact zeros for a :class:`SparseLinear` / :class:`SparseConv2d`.

    ``fuse_activations``: a ReLU/GELU that directly follows a swapped Linear (next in an
    ``nn.Sequential``, or the ``intermediate_act_fn`` of an HF ``*Intermediate`` block) moves
    into the layer, which applies it in place on its fresh output
    (:mod:`sparseprune.activations`); its old place holds an ``nn.Identity``.

    ``include`` / ``exclude``: fnmatch patterns on module names (as in ``PruneConfig``).
    ``format`` and ``format_kwargs`` (``block=``, ``n=``, ``m=``) go to ``from_linear`` /
    ``from_conv``. Layers that cannot be swapped (dtype the kernels lack, grouped conv, not
    sparse enough) are left dense and listed with the reason. Returns a
    :class:`SparsifyReport` (``report.model`` is ``model``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) \
            or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    records = []
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) in (nn.Linear, nn.Conv2d) and name
               and (include is None or _matches(name, include)) and not _matches(name, exclude)]
    for name, mod in targets:
        weight = mod.weight.detach()
        zeros = int((weight == 0).sum())
        sparsity = zeros / weight.numel() if weight.numel() else 0.0
        dense_bytes = weight.numel() * weight.element_size()
        rec = SwapRecord(name, type(mod).__name__.removeprefix("nn."), tuple(weight.shape),
                         sparsity, False, dense_bytes=dense_bytes, sparse_bytes=dense_bytes)
        if weight.dtype not in VALUE_DTYPES:
            rec.reason = f"dtype {weight.dtype} (kernels take float32/bfloat16/float16)"
        elif isinstance(mod, nn.Conv2d) and mod.groups != 1:
            rec.reason = f"groups={mod.groups} (only groups=1 is supported)"
        elif sparsity < min_sparsity:
            rec.reason = f"{sparsity:.1%} zeros < min_sparsity {min_sparsity:.0%}"
        else:
            new = (SparseLinear.from_linear(mod, format, **format_kwargs)
                   if isinstance(mod, nn.Linear)
                   else SparseConv2d.from_conv(mod, format, **format_kwargs))
            new.train(mod.training)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            rec.swapped, rec.format, rec.pattern = True, new.format, new.pattern
            rec.sparse_bytes = new.packed_nbytes
        records.append(rec)
        if on_layer is not None:
            on_layer(rec)
    if fuse_activations:
        fused = activations.fuse_activations(model)
        for rec in records:
            rec.activation = fused.get(rec.name)
    return SparsifyReport(model, records)
