"""Sparse checkpoints: safetensors (never pickle) + JSON metadata, validated on load.

``save(model, path)`` writes ``model.state_dict()`` with safetensors; the packed tensors of
every :class:`~sparseprune.nn.SparseLinear` / :class:`~sparseprune.nn.SparseConv2d` are stored
as they are (offsets, indices, values), and the header's ``"sparseprune"`` metadata entry holds
JSON describing each sparse layer (format, shape, N:M, conv geometry).

Every other floating tensor of two or more dimensions that is mostly zeros (a pruned
embedding table, a masked weight that was never swapped) is stored as CSR of its
``[shape[0], -1]`` view when that takes at most :data:`PACK_BELOW` of its dense bytes, and
rebuilt dense on load (zeros come back as +0.0; everything else bit for bit). The header's
``"tensors"`` object lists those, with their shape and dtype.

``load(path)`` reads a checkpoint into a :class:`Checkpoint` after rebuilding every packed
weight through the validating constructor of its format; a tampered file (indices out of
range, wrong lengths, wrong dtypes, inconsistent metadata) raises ``ValueError``
(:class:`~sparseprune.formats.FormatError` for packed tensors) naming the layer and field,
before any tensor reaches a kernel. ``load(model, path)`` (or ``load(path).apply(model)``)
also swaps the listed layers of a freshly built dense model for sparse ones and loads the
state dict, so the result computes exactly as the saved model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import torch
from torch import nn

from .activations import ACTIVATIONS, redo_fusion
from .formats import VALUE_DTYPES, BSRWeight, CSRWeight, FormatError, NMWeight, PackedWeight
from .formats import csr_index_dtype
from .nn import SparseConv2d, SparseLinear

__all__ = ["PACK_BELOW", "Checkpoint", "load", "save"]

_KEY = "sparseprune"
_VERSION = 2
_READS = (1, 2)  # version 1: no "tensors" object
#: a dense state-dict tensor is stored as CSR when that needs at most this share of its bytes
PACK_BELOW = 0.75
_DTYPE_NAMES = {str(d).removeprefix("torch."): d for d in VALUE_DTYPES}
_CLASSES = {cls.format: cls for cls in (CSRWeight, BSRWeight, NMWeight)}


def _key(name: str, field: str) -> str:
    """State-dict key of a layer's tensor (a bare layer saved alone has no prefix)."""
    return f"{name}.{field}" if name else field


def _layer_meta(module) -> dict:
    meta = {"class": type(module).__name__, "format": module.format,
            "pattern": module.pattern, "shape": list(module.weight_shape),
            "bias": module.bias is not None}
    if module.nm is not None:
        meta["n"], meta["m"] = module.nm
    if module.format == "bsr":
        meta["block"] = list(module.blocks.shape[1:])
    if getattr(module, "input_perm", None) is not None:
        meta["input_perm"] = True
    if getattr(module, "activation", None) is not None:
        meta["activation"] = module.activation
        meta["fused_from"] = module.fused_from
    if isinstance(module, SparseConv2d):
        meta.update(in_channels=module.in_channels, kernel_size=list(module.kernel_size),
                    stride=list(module.stride), dilation=list(module.dilation),
                    padding=module.padding if isinstance(module.padding, str)
                    else list(module.padding), padding_mode=module.padding_mode)
    return meta


def _packed_key(key: str, field: str) -> str:
    return f"{key}@csr.{field}"


def _pack_tensor(t: torch.Tensor) -> CSRWeight | None:
    """``t`` as CSR of its [shape[0], -1] view, or None where that would not pay (or where CSR
    cannot hold it: another dtype, non-finite values)."""
    if t.dtype not in VALUE_DTYPES or t.dim() < 2 or t.numel() == 0:
        return None
    flat = t.reshape(t.shape[0], -1)
    index_bytes = 2 if csr_index_dtype(flat.shape[1]) == torch.uint16 else 4
    nnz = int(torch.count_nonzero(flat))
    packed_bytes = nnz * (t.element_size() + index_bytes) + (flat.shape[0] + 1) * 8
    if packed_bytes > PACK_BELOW * t.numel() * t.element_size() \
            or not bool(torch.isfinite(flat).all()):
        return None
    return CSRWeight.from_dense(flat)


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None) -> int:
    """Writes ``model``'s state dict and sparse-layer description to ``path`` (safetensors).

    Mostly-zero dense tensors outside the sparse layers are stored packed (see the module
    docstring). ``metadata``: extra JSON-serialisable information kept in the header. Returns
    the file's size in bytes.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sparse = {name: mod for name, mod in model.named_modules()
              if isinstance(mod, (SparseLinear, SparseConv2d))}
    layers = {name: _layer_meta(mod) for name, mod in sparse.items()}
    state = model.state_dict()
    layer_keys = {_key(name, field) for name, mod in sparse.items() for field in mod._fields}
    tensors, packed, seen = {}, {}, set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}; a "
                            f"safetensors checkpoint holds tensors only")
        t = value.detach()
        csr = None if key in layer_keys else _pack_tensor(t)
        if csr is not None and not any(_packed_key(key, f) in state for f in csr.tensors()):
            for field, part in csr.tensors().items():
                tensors[_packed_key(key, field)] = part.contiguous()
            packed[key] = {"format": "csr", "shape": list(t.shape),
                           "dtype": str(t.dtype).removeprefix("torch.")}
            continue
        # safetensors refuses tensors sharing memory (tied weights): store a copy each.
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[key] = t.contiguous()
    header = {"version": _VERSION, "layers": layers, "tensors": packed,
              "user": metadata or {}}
    try:
        text = json.dumps(header)
    except TypeError as e:
        raise TypeError(f"metadata must be JSON-serialisable: {e}") from None
    save_file(tensors, os.fspath(path), metadata={_KEY: text})
    return os.path.getsize(path)


@dataclasses.dataclass
class Checkpoint:
    """A loaded, validated checkpoint: the state dict, the packed weight of every sparse layer
    (already validated), the layer descriptions and the user metadata."""

    state_dict: dict[str, torch.Tensor]
    packed: dict[str, PackedWeight]
    layers: dict[str, dict]
    metadata: dict

    def apply(self, model: nn.Module, *, strict: bool = True) -> nn.Module:
        """Makes ``model`` (the same architecture, dense or already sparsified) hold this
        checkpoint: swaps each listed layer for a sparse one built from the validated packed
        weight, then loads the state dict. Returns ``model``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, meta in self.layers.items():
            try:
                current = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"checkpoint layer {name!r} does not exist in the model") \
                    from None
            self._check_matches(name, meta, current)
            if not name:  # the checkpoint is one bare layer: it cannot replace the model itself
                if meta["class"] != type(current).__name__:
                    raise ValueError(f"the checkpoint holds a single {meta['class']}; load it "
                                     f"into one (got {type(current).__name__})")
                if meta["format"] != current.format:
                    raise ValueError(f"the checkpoint holds a single {meta['class']} packed as "
                                     f"{meta['format']!r}, the layer is packed as "
                                     f"{current.format!r}; load it into a layer of that format "
                                     f"or use sp.load(path) and build one from its packed weight")
                continue
            packed = self.packed[name]
            old_weight = next(current.parameters(), None)
            if old_weight is not None:
                packed = packed.to(device=old_weight.device)
            bias = self.state_dict.get(_key(name, "bias")) if meta["bias"] else None
            if bias is not None:
                bias = bias.to(device=packed.device, dtype=packed.dtype)
            if meta["class"] == "SparseLinear":
                perm = self.state_dict.get(_key(name, "input_perm")) \
                    if meta.get("input_perm") else None
                new = SparseLinear(packed, bias, pattern=meta["pattern"],
                                   input_perm=None if perm is None else perm.to(packed.device),
                                   activation=meta.get("activation"))
                if meta.get("fused_from") is not None:
                    redo_fusion(model, name, meta["activation"], meta["fused_from"])
                    new.fused_from = meta["fused_from"]
            else:
                new = SparseConv2d(packed, bias, in_channels=meta["in_channels"],
                                   kernel_size=meta["kernel_size"], stride=meta["stride"],
                                   padding=meta["padding"] if isinstance(meta["padding"], str)
                                   else tuple(meta["padding"]), dilation=meta["dilation"],
                                   padding_mode=meta["padding_mode"], pattern=meta["pattern"])
            new.train(current.training)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        model.load_state_dict(self.state_dict, strict=strict)
        return model

    @staticmethod
    def _check_matches(name, meta, current):
        out_f, in_f = meta["shape"]
        if meta["class"] == "SparseLinear":
            ok = isinstance(current, (nn.Linear, SparseLinear)) and \
                (current.out_features, current.in_features) == (out_f, in_f)
            want = f"Linear({in_f}, {out_f})"
        else:
            ok = isinstance(current, (nn.Conv2d, SparseConv2d)) and \
                current.out_channels == out_f and current.in_channels == meta["in_channels"] \
                and list(current.kernel_size) == meta["kernel_size"] \
                and getattr(current, "groups", 1) == 1
            want = f"Conv2d({meta['in_channels']}, {out_f}, {meta['kernel_size']})"
        if not ok:
            raise ValueError(f"checkpoint layer {name!r} is a sparse {want}, but the model has "
                             f"{current!r} there")
        if meta["bias"] != (getattr(current, "bias", None) is not None):
            raise ValueError(f"checkpoint layer {name!r} has bias={meta['bias']}, the model's "
                             f"layer does not agree")


def _read_header(path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_KEY)
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise ValueError(f"{path}: no '{_KEY}' metadata; not written by sparseprune.save")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: '{_KEY}' metadata is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("version") not in _READS \
            or not isinstance(header.get("layers"), dict) \
            or not isinstance(header.get("tensors", {}), dict):
        raise ValueError(f"{path}: '{_KEY}' metadata must be an object with a version in "
                         f"{list(_READS)}, a 'layers' object and (optionally) a 'tensors' "
                         f"object")
    return header


def _is_shape(value) -> bool:
    """A JSON list of non-negative ints (bools excluded)."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _unpack_tensors(state: dict, described: dict):
    """Replaces the CSR parts of every tensor listed in the header's "tensors" object by the
    dense tensor, after validating them like any packed weight."""
    for key, meta in described.items():
        def fail(msg):
            raise FormatError(f"checkpoint tensor {key!r}: {msg}")

        if not isinstance(meta, dict) or meta.get("format") != "csr":
            fail("description must be an object with format 'csr'")
        shape = meta.get("shape")
        if not (_is_shape(shape) and len(shape) >= 2):
            fail(f"shape must be a list of >= 2 non-negative ints, got {shape!r}")
        dtype = _DTYPE_NAMES.get(meta.get("dtype"))
        if dtype is None:
            fail(f"dtype must be one of {sorted(_DTYPE_NAMES)}, got {meta.get('dtype')!r}")
        if key in state:
            fail("stored both packed and dense")
        fields = {}
        for field in CSRWeight._tensor_fields:
            part = state.pop(_packed_key(key, field), None)
            if part is None:
                fail(f"tensor {_packed_key(key, field)!r} is missing")
            fields[field] = part
        try:
            csr = CSRWeight(**fields, shape=(shape[0], math.prod(shape[1:])))
        except FormatError as e:
            fail(str(e))
        if csr.dtype != dtype:
            fail(f"values are {csr.dtype}, the header says {meta['dtype']}")
        state[key] = csr.to_dense().reshape(shape)


def _check_layer_meta(name, meta):
    def fail(msg):
        raise ValueError(f"checkpoint layer {name!r}: {msg}")

    if not isinstance(meta, dict):
        fail("description must be a JSON object")
    if meta.get("class") not in ("SparseLinear", "SparseConv2d"):
        fail(f"class must be SparseLinear or SparseConv2d, got {meta.get('class')!r}")
    if meta.get("format") not in _CLASSES:
        fail(f"format must be one of {sorted(_CLASSES)}, got {meta.get('format')!r}")
    shape = meta.get("shape")
    if not (_is_shape(shape) and len(shape) == 2):
        fail(f"shape must be [out, in] with non-negative ints, got {shape!r}")
    if not isinstance(meta.get("bias"), bool) or not isinstance(meta.get("pattern"), str):
        fail("bias must be a bool and pattern a string")
    if meta["format"] == "nm" and not all(isinstance(meta.get(k), int) for k in ("n", "m")):
        fail("an N:M layer needs int n and m")
    if "activation" in meta:
        if meta["class"] != "SparseLinear" or meta["activation"] not in ACTIVATIONS:
            fail(f"activation must be one of {ACTIVATIONS} on a SparseLinear, got "
                 f"{meta['activation']!r}")
        if meta.get("fused_from") is not None and not isinstance(meta["fused_from"], str):
            fail(f"fused_from must be a module name, got {meta['fused_from']!r}")
    if meta["class"] == "SparseConv2d":
        for key in ("in_channels", "kernel_size", "stride", "dilation", "padding",
                    "padding_mode"):
            if key not in meta:
                fail(f"a conv layer needs {key!r}")


def load(path_or_model, path: str | os.PathLike | None = None, *,
         strict: bool = True) -> Checkpoint | nn.Module:
    """``load(path)`` -> :class:`Checkpoint`; ``load(model, path)`` -> ``model`` holding the
    checkpoint (see :meth:`Checkpoint.apply`). Tensors are loaded on the CPU; every packed
    weight is validated first."""
    from safetensors.torch import load_file

    if isinstance(path_or_model, nn.Module):
        if path is None:
            raise TypeError("load(model, path): the checkpoint path is missing")
        return load(path).apply(path_or_model, strict=strict)
    if path is not None:
        raise TypeError("load(path) takes one path; to fill a model use load(model, path)")
    path = path_or_model
    header = _read_header(path)
    try:
        state = load_file(os.fspath(path), device="cpu")
    except Exception as e:
        raise ValueError(f"{path}: tensors could not be read ({e})") from None
    _unpack_tensors(state, header.get("tensors", {}))
    packed = {}
    for name, meta in header["layers"].items():
        _check_layer_meta(name, meta)
        cls = _CLASSES[meta["format"]]
        fields = {}
        for field in cls._tensor_fields:
            key = _key(name, field)
            if key not in state:
                raise FormatError(f"checkpoint layer {name!r}: tensor {key!r} is missing")
            fields[field] = state[key]
        extra = {"n": meta["n"], "m": meta["m"]} if meta["format"] == "nm" else {}
        try:
            packed[name] = cls(**fields, **extra, shape=tuple(meta["shape"]))
        except FormatError as e:
            raise FormatError(f"checkpoint layer {name!r}: {e}") from None
        if meta["format"] == "bsr" and list(packed[name].block) != meta.get("block"):
            raise FormatError(f"checkpoint layer {name!r}: blocks are {packed[name].block}, "
                              f"the header says block={meta.get('block')}")
        if meta["class"] == "SparseConv2d":
            ks = meta["kernel_size"]
            if meta["in_channels"] * ks[0] * ks[1] != meta["shape"][1]:
                raise ValueError(f"checkpoint layer {name!r}: in_channels * kernel_size "
                                 f"does not equal the weight's {meta['shape'][1]} columns")
        if meta.get("input_perm") is not None:
            if meta["input_perm"] is not True or meta["class"] != "SparseLinear":
                raise ValueError(f"checkpoint layer {name!r}: input_perm must be true on a "
                                 f"SparseLinear when present")
            from .nn import check_permutation

            key = _key(name, "input_perm")
            if key not in state:
                raise FormatError(f"checkpoint layer {name!r}: tensor {key!r} is missing")
            check_permutation(state[key], meta["shape"][1], f"checkpoint layer {name!r}: "
                                                             f"input_perm")
        bias = state.get(_key(name, "bias"))
        if meta["bias"] and (bias is None or bias.shape != (meta["shape"][0],)
                             or bias.dtype != packed[name].dtype):
            raise ValueError(f"checkpoint layer {name!r}: bias must be a "
                             f"{packed[name].dtype} tensor of shape [{meta['shape'][0]}]")
    return Checkpoint(state, packed, header["layers"], header.get("user", {}))
