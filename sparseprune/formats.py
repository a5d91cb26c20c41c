"""Packed sparse weights: what the kernels consume.

A packed weight stands for a dense ``W [out_features, in_features]`` (the layout of
``nn.Linear.weight``) and computes ``y = x W^T + bias`` through ``torch.ops.sparseprune``:

* :class:`CSRWeight` - unstructured: row offsets, column indices (uint16 when
  ``in_features <= 65536``, else int32), values.
* :class:`BSRWeight` - dense ``bh x bw`` blocks: block-row offsets, block-column indices,
  blocks ``[nnzb, bh, bw]``; ragged edge blocks are allowed (entries outside the matrix are
  ignored).
* :class:`NMWeight` - N:M: every group of ``m`` consecutive input columns keeps ``n``
  slots; values ``[out, ceil(in/m)*n]`` and bit-packed in-group indices
  (``ceil(log2 m)`` bits per slot, LSB first, row by row). A trailing partial group is
  padded; slots that have no column to point at hold index 0 and value 0.

Every constructor validates what it is given - dtypes, shapes, devices, offsets monotone
and in range, indices in range, metadata consistent, values finite - and raises
:class:`FormatError` (a ValueError) naming the field, so packed tensors read from files are
safe to hand to the kernels. The kernels themselves trust index contents.

CSR is canonical: column indices strictly increasing within each row (one entry per
position, as from_dense produces). Repeated block columns (BSR) and repeated N:M slots mean a sum, the
same in the kernels and in :meth:`PackedWeight.to_dense`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import torch

from .csr_bitmap import csr_bitmap_linear

__all__ = [
    "FormatError",
    "PackedWeight",
    "CSRWeight",
    "BSRWeight",
    "NMWeight",
    "VALUE_DTYPES",
    "CSR_SEGMENT",
    "csr_index_dtype",
    "nm_index_bits",
    "pack",
]

#: dtypes the packed values (and the activations they multiply) may have. The CPU kernels
#: take float32 and bfloat16; the CUDA kernels take float16 too.
VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Row-chunked helpers keep their temporaries near this many elements, so packing and
# validating a large layer does not peak at several times its size.
_CHUNK_ELEMS = 1 << 18


class FormatError(ValueError):
    """A packed weight is malformed; the message names the class and the field."""


#: Columns per segment of an 8-bit CSR weight (``CSRWeight.from_dense(..., index_bits=8)``).
CSR_SEGMENT = 256


def csr_index_dtype(in_features: int) -> torch.dtype:
    """Column index dtype of a CSR weight: uint16 while every column fits, else int32."""
    return torch.uint16 if in_features <= 65536 else torch.int32


def csr_segments(in_features: int) -> int:
    """Segments of ``CSR_SEGMENT`` columns per row of an 8-bit CSR weight."""
    return -(-in_features // CSR_SEGMENT)


def nm_index_bits(m: int) -> int:
    """Bits per in-group index of an N:M weight: ceil(log2(m)), at least 1."""
    return max(1, (m - 1).bit_length())


def _nm_sizes(in_features: int, n: int, m: int) -> tuple[int, int, int]:
    """(groups, slots per row, metadata bytes per row)."""
    groups = -(-in_features // m)
    slots = groups * n
    return groups, slots, -(-slots * nm_index_bits(m) // 8)


def _row_chunks(rows: int, row_elems: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMS // max(1, row_elems))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _row_counts(keep: torch.Tensor) -> torch.Tensor:
    """Kept entries per row, int64, without the full-size int64 copy ``keep.sum(1)`` makes."""
    counts = torch.empty(keep.shape[0], dtype=torch.int64, device=keep.device)
    for rows in _row_chunks(keep.shape[0], keep.shape[1]):
        counts[rows] = keep[rows].sum(1)
    return counts


def _segment_counts(keep: torch.Tensor, segs: int) -> torch.Tensor:
    """Kept entries per (row, segment of CSR_SEGMENT columns), int64 ``[out * segs]``,
    row-chunked like :func:`_row_counts`."""
    out_f, in_f = keep.shape
    counts = torch.empty(out_f, segs, dtype=torch.int64, device=keep.device)
    pad = segs * CSR_SEGMENT - in_f
    for rows in _row_chunks(out_f, in_f):
        part = keep[rows]
        if pad:
            part = torch.nn.functional.pad(part.to(torch.uint8), (0, pad))
        counts[rows] = part.reshape(part.shape[0], segs, CSR_SEGMENT).sum(2)
    return counts.reshape(-1)


# --------------------------------------------------------------------------- validation


def _fail(owner: str, field: str, message: str):
    raise FormatError(f"{owner}.{field}: {message}")


def _check_tensor(owner, field, t, *, dtypes, ndim, shape=None):
    """Type, dtype, rank, shape (None = any extent) and contiguity of one tensor field."""
    if not isinstance(t, torch.Tensor):
        _fail(owner, field, f"expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
        _fail(owner, field, f"dtype must be {names}, got {str(t.dtype).removeprefix('torch.')}")
    if t.dim() != ndim:
        _fail(owner, field, f"must be {ndim}-D, got shape {tuple(t.shape)}")
    if shape is not None:
        for want, got in zip(shape, t.shape):
            if want is not None and want != got:
                _fail(owner, field, f"must have shape {_fmt_shape(shape)}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        _fail(owner, field, "must be contiguous (call .contiguous())")


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def _check_int(owner, field, v, *, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(owner, field, f"must be an int, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        _fail(owner, field, f"must be {bound}, got {v}")


def _check_shape(owner, shape) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        _fail(owner, "shape", f"must be (out_features, in_features), got {shape!r}")
    for name, v in zip(("out_features", "in_features"), shape):
        _check_int(owner, f"shape.{name}", v, lo=0, hi=2**31 - 1)
    return int(shape[0]), int(shape[1])


def _check_same_device(owner, tensors: dict[str, torch.Tensor]):
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            _fail(owner, name, f"is on {dev} but the other fields are on {first}")


def _check_offsets(owner, field, offsets: torch.Tensor, total: int):
    if offsets[0].item() != 0:
        _fail(owner, field, f"must start at 0, got {offsets[0].item()}")
    if offsets[-1].item() != total:
        _fail(owner, field, f"must end at {total} (the number of stored entries), "
              f"got {offsets[-1].item()}")
    steps = offsets.diff()
    if steps.numel() and bool((steps < 0).any()):
        at = int((steps < 0).nonzero()[0, 0])
        _fail(owner, field, f"must be non-decreasing, but entry {at + 1} "
              f"({offsets[at + 1].item()}) < entry {at} ({offsets[at].item()})")


def _check_indices(owner, field, idx: torch.Tensor, bound: int, what: str):
    if idx.numel() == 0:
        return
    wide = idx.to(torch.int64)
    bad = (wide < 0) | (wide >= bound)
    if bool(bad.any()):
        at = int(bad.nonzero()[0, 0]) if bad.dim() else 0
        _fail(owner, field, f"entry {at} is {int(wide.reshape(-1)[at])}, outside [0, {bound}) "
              f"({what})")


def _check_sorted_rows(owner, field, idx: torch.Tensor, offsets: torch.Tensor):
    """Indices strictly increasing within each row of a compressed-row structure."""
    if idx.numel() < 2:
        return
    wide = idx.to(torch.int64)
    same_row = torch.ones(idx.numel() - 1, dtype=torch.bool, device=idx.device)
    starts = offsets[1:-1]
    starts = starts[(starts > 0) & (starts < idx.numel())]
    same_row[starts - 1] = False  # entry k-1 -> k crosses into a new row at k = start
    bad = same_row & (wide[1:] <= wide[:-1])
    if bool(bad.any()):
        at = int(bad.nonzero()[0, 0]) + 1
        _fail(owner, field, f"must be strictly increasing within each row, but entry {at} "
              f"({int(wide[at])}) follows {int(wide[at - 1])} in the same row")


def _check_finite(owner, field, values: torch.Tensor):
    flat = values.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK_ELEMS):  # isfinite's temporaries are large
        if not bool(torch.isfinite(flat[start:start + _CHUNK_ELEMS]).all()):
            _fail(owner, field, "contains NaN or Inf")


def _check_dense_input(weight, mask, default_keep=True):
    """Checks the weight and mask; returns the mask, or ``weight != 0`` when it is None
    (None instead with ``default_keep=False``, for callers that compare row chunks)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape "
                         f"{tuple(weight.shape)}")
    if weight.dtype not in VALUE_DTYPES:
        raise ValueError(f"weight dtype must be float32 or bfloat16 (or float16, for CUDA), "
                         f"got {weight.dtype}")
    if mask is None:
        return weight != 0 if default_keep else None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor (True = keep)")
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"mask is on {mask.device} but weight is on {weight.device}")
    return mask


# --------------------------------------------------------------------------- dense views
# Functional forms, used by to_dense() and by the autograd formulas in sparseprune.ops
# (they trace under torch.compile: every output size is known from the inputs' shapes).


def csr_coords(row_offsets, col_indices, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every stored entry, int64; an 8-bit (uint8) CSR's offsets count
    (row, segment) pairs and its indices are columns within the segment."""
    out_features, in_features = shape
    nnz = col_indices.numel()
    cols = col_indices.to(torch.int64)
    if col_indices.dtype != torch.uint8:
        rows = torch.repeat_interleave(
            torch.arange(out_features, device=cols.device), row_offsets.diff(), output_size=nnz)
        return rows, cols
    segs = csr_segments(in_features)
    pair = torch.repeat_interleave(
        torch.arange(out_features * segs, device=cols.device), row_offsets.diff(),
        output_size=nnz)
    return pair // max(segs, 1), pair % max(segs, 1) * CSR_SEGMENT + cols


def csr_to_dense(row_offsets, col_indices, values, shape) -> torch.Tensor:
    rows, cols = csr_coords(row_offsets, col_indices, shape)
    dense = values.new_zeros(*shape)
    return dense.index_put_((rows, cols), values, accumulate=True)


def bsr_to_dense(block_row_offsets, block_col_indices, blocks, shape) -> torch.Tensor:
    out_features, in_features = shape
    nnzb, bh, bw = blocks.shape
    rows_b = block_row_offsets.numel() - 1
    cols_b = -(-in_features // bw)
    block_rows = torch.repeat_interleave(
        torch.arange(rows_b, device=blocks.device), block_row_offsets.diff(), output_size=nnzb)
    slot = block_rows * cols_b + block_col_indices.to(torch.int64)
    grid = blocks.new_zeros(rows_b * cols_b, bh, bw).index_add_(0, slot, blocks)
    grid = grid.view(rows_b, cols_b, bh, bw).permute(0, 2, 1, 3).reshape(rows_b * bh, cols_b * bw)
    return grid[:out_features, :in_features]


def nm_decode(metadata: torch.Tensor, in_features: int, n: int, m: int) -> torch.Tensor:
    """In-group index of every slot, int64 ``[out, slots]``."""
    _, slots, row_bytes = _nm_sizes(in_features, n, m)
    bits = nm_index_bits(m)
    pos = torch.arange(slots, device=metadata.device) * bits
    byte, shift = pos // 8, pos % 8
    has_hi = byte + 1 < row_bytes
    hi_byte = torch.where(has_hi, byte + 1, byte)
    out = torch.empty(metadata.shape[0], slots, dtype=torch.int64, device=metadata.device)
    for rows in _row_chunks(metadata.shape[0], slots):
        meta = metadata[rows].to(torch.int64)
        word = meta[:, byte] | ((meta[:, hi_byte] * has_hi) << 8)
        out[rows] = (word >> shift) & ((1 << bits) - 1)
    return out


def nm_encode(indices: torch.Tensor, in_features: int, n: int, m: int) -> torch.Tensor:
    """Bit-packs in-group indices ``[out, slots]`` into uint8 ``[out, row_bytes]``."""
    _, slots, row_bytes = _nm_sizes(in_features, n, m)
    bits = nm_index_bits(m)
    pos = torch.arange(slots, device=indices.device) * bits
    byte, shift = pos // 8, pos % 8
    out = torch.empty(indices.shape[0], row_bytes, dtype=torch.uint8, device=indices.device)
    for rows in _row_chunks(indices.shape[0], slots):
        word = indices[rows].to(torch.int32) << shift.to(torch.int32)
        acc = torch.zeros(word.shape[0], row_bytes + 1, dtype=torch.int32, device=indices.device)
        # Fields never overlap, so adding them into bytes is the same as OR-ing them.
        acc.scatter_add_(1, byte.expand_as(word), word & 0xFF)
        acc.scatter_add_(1, (byte + 1).expand_as(word), word >> 8)
        out[rows] = acc[:, :row_bytes].to(torch.uint8)
    return out


def nm_columns(indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Absolute input column of every slot from its in-group index."""
    group = torch.arange(indices.shape[1], device=indices.device) // n
    return group * m + indices


def nm_to_dense(values, metadata, in_features, n, m) -> torch.Tensor:
    cols = nm_columns(nm_decode(metadata, in_features, n, m), n, m)
    dense = values.new_zeros(values.shape[0], in_features)
    return dense.scatter_add_(1, cols, values)


# --------------------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class PackedWeight:
    """Base of the packed formats: a validated, immutable set of tensors."""

    format: ClassVar[str]
    _tensor_fields: ClassVar[tuple[str, ...]]
    _values_field: ClassVar[str]

    def __post_init__(self):
        self._validate()

    def _validate(self):  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    # ---- shared properties
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def values_tensor(self) -> torch.Tensor:
        return getattr(self, self._values_field)

    @property
    def dtype(self) -> torch.dtype:
        return self.values_tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.values_tensor.device

    @property
    def nnz(self) -> int:
        """Stored weight entries (explicit zeros and block padding included)."""
        return self.values_tensor.numel()

    @property
    def density(self) -> float:
        """Stored entries over ``out * in`` (1.0 for an empty matrix)."""
        total = self.out_features * self.in_features
        return self.nnz / total if total else 1.0

    @property
    def nbytes(self) -> int:
        """Bytes of every packed tensor together."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The packed tensors by field name (what a checkpoint stores)."""
        return {name: getattr(self, name) for name in self._tensor_fields}

    def with_values(self, values: torch.Tensor):
        """The same sparsity structure holding other values (e.g. a trainable copy)."""
        return dataclasses.replace(self, **{self._values_field: values})

    def to(self, *args, **kwargs):
        """Moves the packed tensors to a device and/or casts the values to a dtype,
        with the same arguments as :meth:`torch.Tensor.to`."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"{type(self).__name__}.to: dtype must be floating point, got {dtype}")
        changes = {}
        for name, t in self.tensors().items():
            cast = dtype if name == self._values_field else None
            changes[name] = t.to(device=device, dtype=cast, non_blocking=non_blocking)
        return dataclasses.replace(self, **changes)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x W^T + bias`` for ``x [..., in_features]``."""
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def to_dense(self) -> torch.Tensor:
        """The dense ``W [out_features, in_features]`` this packs."""
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape [..., {self.in_features}] for this "
                             f"{type(self).__name__}, got {tuple(x.shape)}")

    def __repr__(self):
        return (f"{type(self).__name__}(shape={tuple(self.shape)}, {self._describe()}"
                f"nnz={self.nnz}, density={self.density:.3f}, dtype={self.dtype}, "
                f"device={self.device}, nbytes={self.nbytes})")

    def _describe(self) -> str:
        return ""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CSRWeight(PackedWeight):
    """Unstructured sparsity: compressed sparse rows.

    With 16- or 32-bit column indices (:func:`csr_index_dtype`), ``row_offsets[r] ..
    row_offsets[r + 1]`` are row r's entries. 8-bit CSR (``from_dense(..., index_bits=8)``,
    uint8 ``col_indices``) is the CSR of W seen as ``[out * segments, CSR_SEGMENT]``:
    ``row_offsets`` has ``out * csr_segments(in) + 1`` entries, one run per (row, segment of
    256 columns), and each index is the column within its segment. It stores 5 bytes per
    fp32 entry instead of 6 plus 8 bytes per 256 columns of every row: fewer bytes below
    ~97% sparsity (90%: 13.3% of the dense fp32 weight instead of 15.05%). The CPU kernels
    take both; :meth:`to` a CUDA device repacks 8-bit CSR to 16-bit (the CUDA kernel's)."""

    row_offsets: torch.Tensor  # int64 [out + 1], 8-bit: [out * segments + 1]
    col_indices: torch.Tensor  # uint16 or int32 (see csr_index_dtype), or uint8 [nnz]
    values: torch.Tensor  # float32 | bfloat16 | float16 [nnz]
    shape: tuple[int, int]

    format: ClassVar[str] = "csr"
    _tensor_fields: ClassVar[tuple[str, ...]] = ("row_offsets", "col_indices", "values")
    _values_field: ClassVar[str] = "values"

    @property
    def index_bits(self) -> int:
        """Bits per stored column index: 8 (segmented), 16 or 32."""
        return self.col_indices.element_size() * 8

    @property
    def segments(self) -> int:
        """Offset runs per row: ``csr_segments(in_features)`` for 8-bit CSR, else 1."""
        return csr_segments(self.in_features) if self.index_bits == 8 else 1

    def _describe(self):
        return f"index_bits={self.index_bits}, "

    def _validate(self):
        owner = type(self).__name__
        out_f, in_f = _check_shape(owner, self.shape)
        object.__setattr__(self, "shape", (out_f, in_f))
        _check_tensor(owner, "values", self.values, dtypes=VALUE_DTYPES, ndim=1)
        nnz = self.values.numel()
        _check_tensor(owner, "col_indices", self.col_indices,
                      dtypes=(csr_index_dtype(in_f), torch.uint8), ndim=1, shape=(nnz,))
        runs = out_f * self.segments
        _check_tensor(owner, "row_offsets", self.row_offsets, dtypes=(torch.int64,), ndim=1,
                      shape=(runs + 1,))
        _check_same_device(owner, self.tensors())
        _check_offsets(owner, "row_offsets", self.row_offsets, nnz)
        if self.index_bits == 8:
            # The last segment of a row may be narrower than CSR_SEGMENT columns.
            segs = self.segments
            last = in_f - (segs - 1) * CSR_SEGMENT
            _check_indices(owner, "col_indices", self.col_indices, CSR_SEGMENT,
                           f"columns within a segment of {CSR_SEGMENT}")
            if last < CSR_SEGMENT and nnz:
                _, cols = csr_coords(self.row_offsets, self.col_indices, self.shape)
                bad = cols >= in_f  # only in the last segment: indices are < 256 (above)
                if bool(bad.any()):
                    at = int(bad.nonzero()[0, 0])
                    _fail(owner, "col_indices", f"entry {at} is {int(self.col_indices[at])}, "
                          f"outside [0, {last}) (the last segment's columns, in_features="
                          f"{in_f})")
        else:
            _check_indices(owner, "col_indices", self.col_indices, in_f, f"in_features={in_f}")
        _check_sorted_rows(owner, "col_indices", self.col_indices, self.row_offsets)
        _check_finite(owner, "values", self.values)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, *,
                   index_bits: int | None = None) -> CSRWeight:
        """Packs ``weight * mask`` (default mask: ``weight != 0``); explicit zeros inside
        the mask are stored. ``index_bits=8`` packs 8-bit CSR (see the class); the default
        (``None``) is 16-bit, 32-bit beyond 65536 columns."""
        if index_bits not in (None, 8):
            raise ValueError(f"index_bits must be None (16- or 32-bit by in_features) or 8, "
                             f"got {index_bits!r}")
        keep = _check_dense_input(weight, mask)
        out_f, in_f = weight.shape
        flat = keep.reshape(-1).nonzero().squeeze(1)
        values = weight.reshape(-1)[flat]
        if index_bits == 8:
            segs = csr_segments(in_f)
            row_offsets = torch.zeros(out_f * segs + 1, dtype=torch.int64, device=weight.device)
            torch.cumsum(_segment_counts(keep, segs), 0, out=row_offsets[1:])
            # int64 -> uint8 keeps the low byte: the column within its 256-column segment
            cols = (flat % max(in_f, 1)).to(torch.uint8)
            return cls(row_offsets, cols, values, (out_f, in_f))
        row_offsets = torch.zeros(out_f + 1, dtype=torch.int64, device=weight.device)
        torch.cumsum(_row_counts(keep), 0, out=row_offsets[1:])
        col_indices = (flat % max(in_f, 1)).to(csr_index_dtype(in_f))
        return cls(row_offsets, col_indices, values, (out_f, in_f))

    def with_index_bits(self, index_bits: int | None) -> CSRWeight:
        """The same entries (explicit zeros included) with ``index_bits`` 8 or None (16- or
        32-bit by in_features), on the same device."""
        if index_bits not in (None, 8):
            raise ValueError(f"index_bits must be None or 8, got {index_bits!r}")
        want8 = index_bits == 8
        if want8 == (self.index_bits == 8):
            return self
        out_f, in_f = self.shape
        rows, cols = csr_coords(self.row_offsets, self.col_indices, self.shape)
        if want8:
            segs = csr_segments(in_f)
            counts = torch.bincount(rows * segs + cols // CSR_SEGMENT, minlength=out_f * segs)
            idx = (cols % CSR_SEGMENT).to(torch.uint8)
        else:
            counts = torch.bincount(rows, minlength=out_f)
            idx = cols.to(csr_index_dtype(in_f))
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        return type(self)(offsets, idx, self.values, self.shape)

    def to(self, *args, **kwargs):
        moved = super().to(*args, **kwargs)
        if moved.index_bits == 8 and moved.device.type not in ("cpu", "meta"):
            return moved.with_index_bits(None)  # the CUDA kernel reads 16/32-bit CSR
        return moved

    def to_dense(self) -> torch.Tensor:
        return csr_to_dense(self.row_offsets, self.col_indices, self.values, self.shape)

    def linear(self, x, bias=None):
        self._check_x(x)
        y = csr_bitmap_linear(self, x, self.row_offsets, self.col_indices, self.values, bias,
                              self.out_features)
        if y is not None:
            return y
        return torch.ops.sparseprune.linear_csr(
            x, self.row_offsets, self.col_indices, self.values, bias, self.out_features)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class BSRWeight(PackedWeight):
    """Block sparsity: dense ``bh x bw`` blocks in compressed block rows."""

    block_row_offsets: torch.Tensor  # int64 [ceil(out / bh) + 1]
    block_col_indices: torch.Tensor  # int32 [nnzb], in units of blocks
    blocks: torch.Tensor  # float32 | bfloat16 | float16 [nnzb, bh, bw]
    shape: tuple[int, int]

    format: ClassVar[str] = "bsr"
    _tensor_fields: ClassVar[tuple[str, ...]] = (
        "block_row_offsets", "block_col_indices", "blocks")
    _values_field: ClassVar[str] = "blocks"

    @property
    def block(self) -> tuple[int, int]:
        return int(self.blocks.shape[1]), int(self.blocks.shape[2])

    @property
    def nnzb(self) -> int:
        return int(self.blocks.shape[0])

    def _describe(self):
        return f"block={self.block}, nnzb={self.nnzb}, "

    def _validate(self):
        owner = type(self).__name__
        out_f, in_f = _check_shape(owner, self.shape)
        object.__setattr__(self, "shape", (out_f, in_f))
        _check_tensor(owner, "blocks", self.blocks, dtypes=VALUE_DTYPES, ndim=3)
        nnzb, bh, bw = self.blocks.shape
        if bh < 1 or bw < 1:
            _fail(owner, "blocks", f"block size must be at least 1x1, got {bh}x{bw}")
        _check_tensor(owner, "block_row_offsets", self.block_row_offsets, dtypes=(torch.int64,),
                      ndim=1, shape=(-(-out_f // bh) + 1,))
        _check_tensor(owner, "block_col_indices", self.block_col_indices, dtypes=(torch.int32,),
                      ndim=1, shape=(nnzb,))
        _check_same_device(owner, self.tensors())
        _check_offsets(owner, "block_row_offsets", self.block_row_offsets, nnzb)
        cols_b = -(-in_f // bw)
        _check_indices(owner, "block_col_indices", self.block_col_indices, cols_b,
                       f"{cols_b} block columns of width {bw}")
        _check_finite(owner, "blocks", self.blocks)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, block: tuple[int, int],
                   mask: torch.Tensor | None = None) -> BSRWeight:
        """Packs ``weight * mask`` in ``block``-sized tiles, keeping every tile that holds
        at least one kept entry (default mask: ``weight != 0``)."""
        keep = _check_dense_input(weight, mask)
        if (not isinstance(block, (tuple, list)) or len(block) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                           for b in block)):
            raise ValueError(f"block must be (bh, bw) with positive ints, got {block!r}")
        bh, bw = block
        out_f, in_f = weight.shape
        rows_b, cols_b = -(-out_f // bh), -(-in_f // bw)
        if (rows_b * bh, cols_b * bw) == (out_f, in_f):
            grid, kept = weight, keep  # views only: packing copies just the kept tiles
        else:
            grid = weight.new_zeros(rows_b * bh, cols_b * bw)
            grid[:out_f, :in_f] = weight
            kept = torch.zeros(rows_b * bh, cols_b * bw, dtype=torch.bool,
                               device=weight.device)
            kept[:out_f, :in_f] = keep
        tiles = kept.view(rows_b, bh, cols_b, bw).any(dim=3).any(dim=1)  # [rows_b, cols_b]
        offsets = torch.zeros(rows_b + 1, dtype=torch.int64, device=weight.device)
        torch.cumsum(tiles.sum(1), 0, out=offsets[1:])
        where = tiles.nonzero()
        pick = (where[:, 0], where[:, 1])
        blocks = grid.view(rows_b, bh, cols_b, bw).permute(0, 2, 1, 3)[pick]
        blocks.masked_fill_(~kept.view(rows_b, bh, cols_b, bw).permute(0, 2, 1, 3)[pick], 0)
        return cls(offsets, where[:, 1].to(torch.int32), blocks.contiguous(), (out_f, in_f))

    def to_dense(self) -> torch.Tensor:
        return bsr_to_dense(self.block_row_offsets, self.block_col_indices, self.blocks,
                            self.shape)

    def linear(self, x, bias=None):
        self._check_x(x)
        return torch.ops.sparseprune.linear_bsr(
            x, self.block_row_offsets, self.block_col_indices, self.blocks, bias,
            self.out_features)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class NMWeight(PackedWeight):
    """N:M sparsity: ``n`` kept slots in every ``m`` consecutive input columns."""

    values: torch.Tensor  # float32 | bfloat16 | float16 [out, ceil(in / m) * n]
    metadata: torch.Tensor  # uint8 [out, ceil(slots * bits / 8)]
    n: int
    m: int
    shape: tuple[int, int]

    format: ClassVar[str] = "nm"
    _tensor_fields: ClassVar[tuple[str, ...]] = ("values", "metadata")
    _values_field: ClassVar[str] = "values"

    def _describe(self):
        return f"pattern={self.n}:{self.m}, "

    def _validate(self):
        owner = type(self).__name__
        out_f, in_f = _check_shape(owner, self.shape)
        object.__setattr__(self, "shape", (out_f, in_f))
        _check_int(owner, "m", self.m, lo=2, hi=32)
        _check_int(owner, "n", self.n, lo=1, hi=self.m - 1)
        groups, slots, row_bytes = _nm_sizes(in_f, self.n, self.m)
        _check_tensor(owner, "values", self.values, dtypes=VALUE_DTYPES, ndim=2,
                      shape=(out_f, slots))
        _check_tensor(owner, "metadata", self.metadata, dtypes=(torch.uint8,), ndim=2,
                      shape=(out_f, row_bytes))
        _check_same_device(owner, self.tensors())
        if out_f and slots:
            # Group g spans columns [g*m, min(in, (g+1)*m)): a short last group has fewer.
            group = torch.arange(slots, device=self.metadata.device) // self.n
            width = (in_f - group * self.m).clamp(max=self.m)
            # Within a full group the kept indices increase (the canonical form from_dense
            # makes; the sparse tensor cores require it); a short last group may repeat.
            follows = (group[1:] == group[:-1]) & (width[1:] == self.m)
            for rows in _row_chunks(out_f, slots):
                idx = nm_decode(self.metadata[rows], in_f, self.n, self.m)
                bad = idx >= width
                if bool(bad.any()):
                    r, s = (int(v) for v in bad.nonzero()[0])
                    _fail(owner, "metadata", f"row {rows.start + r} slot {s} has in-group index "
                          f"{int(idx[r, s])}, but group {s // self.n} has {int(width[s])} "
                          f"columns (in_features={in_f}, m={self.m})")
                unordered = follows & (idx[:, 1:] <= idx[:, :-1])
                if bool(unordered.any()):
                    r, s = (int(v) for v in unordered.nonzero()[0])
                    _fail(owner, "metadata", f"row {rows.start + r} group {int(group[s])}: in-group "
                          f"indices must increase, got {int(idx[r, s])} then "
                          f"{int(idx[r, s + 1])}")
        _check_finite(owner, "values", self.values)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, n: int, m: int,
                   mask: torch.Tensor | None = None) -> NMWeight:
        """Packs ``weight * mask`` (default mask: ``weight != 0``), which must keep at most
        ``n`` entries in every group of ``m`` consecutive columns; ValueError otherwise
        (make such a mask with :func:`sparseprune.masks.n_m`)."""
        keep = _check_dense_input(weight, mask, default_keep=False)
        for name, v in (("n", n), ("m", m)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if not 1 <= n < m <= 32:
            raise ValueError(f"need 1 <= n < m <= 32, got n={n}, m={m}")
        out_f, in_f = weight.shape
        groups, slots, row_bytes = _nm_sizes(in_f, n, m)
        padded = groups * m
        valid = torch.arange(padded, device=weight.device) < in_f
        values = weight.new_empty(out_f, slots)
        metadata = torch.empty(out_f, row_bytes, dtype=torch.uint8, device=weight.device)
        # Row chunks end to end, so no temporary is the size of the whole weight.
        for rows in _row_chunks(out_f, padded):
            count = rows.stop - rows.start
            w_rows = weight[rows]
            pad_k = torch.zeros(count, padded, dtype=torch.bool, device=weight.device)
            pad_k[:, :in_f] = w_rows != 0 if keep is None else keep[rows]
            k = pad_k.view(count, groups, m)
            counts = k.sum(-1)
            if bool((counts > n).any()):
                r, g = (int(v) for v in (counts > n).nonzero()[0])
                raise ValueError(
                    f"weight is not {n}:{m} sparse: row {rows.start + r}, group {g} (columns "
                    f"{g * m}..{min(in_f, (g + 1) * m) - 1}) keeps {int(counts[r, g])} entries; "
                    f"prune it with sparseprune.masks.n_m first")
            # Kept positions first, then real columns, then padding; ties by position.
            key = k.to(torch.int8) * 2 + valid.view(groups, m).to(torch.int8)
            chosen = key.sort(dim=-1, descending=True, stable=True).indices[..., :n]
            indices = chosen.sort(dim=-1).values.reshape(count, slots)
            cols = nm_columns(indices, n, m)
            # Slots of a short last group that have no real column point at its first column.
            pad_slot = cols >= in_f
            indices = torch.where(pad_slot, 0, indices)
            cols = torch.where(pad_slot, nm_columns(indices, n, m), cols)
            kept = pad_k.gather(1, cols) & ~pad_slot
            values[rows] = torch.where(kept, w_rows.gather(1, cols), 0)
            metadata[rows] = nm_encode(indices, in_f, n, m)
        return cls(values, metadata, n, m, (out_f, in_f))

    def indices(self) -> torch.Tensor:
        """In-group index of every slot, int64 ``[out, slots]``."""
        return nm_decode(self.metadata, self.in_features, self.n, self.m)

    def to_dense(self) -> torch.Tensor:
        return nm_to_dense(self.values, self.metadata, self.in_features, self.n, self.m)

    def linear(self, x, bias=None):
        self._check_x(x)
        from .tile_cache import nm_tiles_linear
        y = nm_tiles_linear(self, x, self.values, self.metadata, bias, self.n, self.m,
                            self.out_features)
        if y is not None:
            return y
        return torch.ops.sparseprune.linear_nm(x, self.values, self.metadata, bias, self.n,
                                                self.m)


_FORMATS = {cls.format: cls for cls in (CSRWeight, BSRWeight, NMWeight)}


def pack(weight: torch.Tensor, format: str, mask: torch.Tensor | None = None,
         **kwargs) -> PackedWeight:
    """Packs a dense weight: ``pack(w, "csr")``, ``pack(w, "bsr", block=(16, 16))``,
    ``pack(w, "nm", n=2, m=4)``."""
    try:
        cls = _FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(_FORMATS)}") from None
    return cls.from_dense(weight, mask=mask, **kwargs)

