"""What a sweep covers: weight shapes, sparsity patterns, batches, dtypes (the sets of DESIGN.md),
parsed from command-line text with errors that list the valid values."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: named shape sets (out_features x in_features), the Linear layers of real models
SHAPE_SETS: dict[str, tuple[tuple[int, int], ...]] = {
    "minilm": ((384, 384), (1536, 384), (384, 1536)),
    "bert": ((768, 768), (3072, 768), (768, 3072)),
    "llama": ((4096, 4096), (11008, 4096), (4096, 11008)),
    # ResNet-50 bottleneck 1x1 convolutions seen as GEMMs (out channels x in channels);
    # "batch" is then batch x height x width positions
    "resnet50": ((64, 256), (256, 64), (128, 512), (512, 128), (256, 1024), (1024, 256),
                 (512, 2048), (2048, 512)),
}

BATCHES = (1, 8, 32, 128, 512)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
UNSTRUCTURED = (50, 70, 80, 90, 95)
NM = ((2, 4), (1, 4), (2, 8))
BLOCKS = ((4, 1), (1, 4), (8, 8), (16, 16), (32, 32))
BLOCK_SPARSITIES = (50, 80, 90)


@dataclass(frozen=True)
class Pattern:
    """One sparsity pattern. ``kind``: "unstructured" | "nm" | "block"."""

    name: str
    kind: str
    sparsity: float
    nm: tuple[int, int] | None = None
    block: tuple[int, int] | None = None

    @property
    def family(self) -> str:
        """Plot grouping: unstructured, n:m, or one per block shape."""
        if self.kind == "block":
            return f"block {self.block[0]}x{self.block[1]}"
        return "n:m" if self.kind == "nm" else "unstructured"


def _all_patterns() -> dict[str, Pattern]:
    out = {f"{s}%": Pattern(f"{s}%", "unstructured", s / 100) for s in UNSTRUCTURED}
    for n, m in NM:
        out[f"{n}:{m}"] = Pattern(f"{n}:{m}", "nm", 1 - n / m, nm=(n, m))
    for bh, bw in BLOCKS:
        for s in BLOCK_SPARSITIES:
            name = f"{bh}x{bw}@{s}%"
            out[name] = Pattern(name, "block", s / 100, block=(bh, bw))
    return out


PATTERNS = _all_patterns()
PATTERN_GROUPS = {
    "unstructured": tuple(p for p in PATTERNS if PATTERNS[p].kind == "unstructured"),
    "nm": tuple(p for p in PATTERNS if PATTERNS[p].kind == "nm"),
    "block": tuple(p for p in PATTERNS if PATTERNS[p].kind == "block"),
    "all": tuple(PATTERNS),
}

#: ``--quick``: one small and one large shape, three patterns, two batches, fp32
QUICK = dict(shapes=((384, 1536), (4096, 4096)), patterns=("90%", "2:4", "16x16@80%"),
             batches=(1, 32), dtypes=("float32",))


class ChoiceError(ValueError):
    """A value outside the valid set; the message lists the valid values."""


def _items(text: str) -> list[str]:
    items = [v.strip() for v in str(text).split(",") if v.strip()]
    if not items:
        raise ChoiceError(f"expected a comma-separated list, got {text!r}")
    return items


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"minilm,4096x1024"``: set names and/or OUTxIN, in order, without duplicates."""
    out: list[tuple[int, int]] = []
    for item in _items(text):
        key = item.lower()
        if key == "all":
            found = [s for group in SHAPE_SETS.values() for s in group]
        elif key in SHAPE_SETS:
            found = list(SHAPE_SETS[key])
        else:
            try:
                o, i = (int(v) for v in key.split("x"))
                if o < 1 or i < 1:
                    raise ValueError
            except ValueError:
                raise ChoiceError(f"unknown shape {item!r}: use OUTxIN (e.g. 4096x4096) or one "
                                  f"of {', '.join([*SHAPE_SETS, 'all'])}") from None
            found = [(o, i)]
        out.extend(s for s in found if s not in out)
    return tuple(out)


def parse_patterns(text: str) -> tuple[str, ...]:
    """Pattern names (``90%``, ``2:4``, ``16x16@80%``) and/or groups (``nm``, ``block``...)."""
    out: list[str] = []
    for item in _items(text):
        if item in PATTERN_GROUPS:
            found = PATTERN_GROUPS[item]
        elif item in PATTERNS:
            found = (item,)
        else:
            raise ChoiceError(f"unknown pattern {item!r}; valid: {', '.join(PATTERNS)} or a "
                              f"group: {', '.join(PATTERN_GROUPS)}")
        out.extend(p for p in found if p not in out)
    return tuple(out)


def parse_dtypes(text: str) -> tuple[str, ...]:
    out = []
    for item in _items(text):
        if item not in DTYPES:
            raise ChoiceError(f"unknown dtype {item!r}; valid: {', '.join(DTYPES)}")
        if item not in out:
            out.append(item)
    return tuple(out)


def parse_positive_ints(text: str, what: str) -> tuple[int, ...]:
    out = []
    for item in _items(text):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1:
            raise ChoiceError(f"{what} must be positive integers, got {item!r}")
        if value not in out:
            out.append(value)
    return tuple(out)


def shapes_from_module(module: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """The distinct GEMM shapes (out x in) of a model's ``nn.Linear`` layers and its 1x1,
    groups=1 ``nn.Conv2d`` layers, in module order."""
    out: list[tuple[int, int]] = []
    for mod in module.modules():
        if isinstance(mod, torch.nn.Linear):
            shape = (mod.out_features, mod.in_features)
        elif isinstance(mod, torch.nn.Conv2d) and mod.groups == 1 \
                and tuple(mod.kernel_size) == (1, 1):
            shape = (mod.out_channels, mod.in_channels)
        else:
            continue
        if shape not in out:
            out.append(shape)
    return tuple(out)


def load_module(spec: str) -> torch.nn.Module:
    """``minilm`` (the embedded all-MiniLM-L6-v2) or ``package.module:factory`` (called with
    no arguments)."""
    if spec == "minilm":
        from .minilm import load_minilm

        return load_minilm()
    mod_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ChoiceError(f"unknown model {spec!r}: use minilm or package.module:factory")
    import importlib

    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ChoiceError(f"cannot load model {spec!r}: {e}") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ChoiceError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model
