"""``PruneConfig``: what to prune, how much, by which criterion; validated on creation."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import scores
from .patterns import Pattern, parse_pattern
from .schedule import CubicSchedule

__all__ = ["PruneConfig", "LayerSettings", "CRITERIA_HELP", "config_to_dict", "config_from_dict",
           "save_config", "load_config"]

CRITERIA_HELP = (", ".join(f'"{c}"' for c in scores.CRITERIA)
                 + ", or a callable (module, stats) -> scores")
_SCOPES = ("layer", "global")
_OVERRIDE_KEYS = ("pattern", "sparsity", "min_density", "max_density")


def _density(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    return float(v)


def _sparsity_for(pattern: Pattern, sparsity, where: str) -> float:
    implied = pattern.implied_sparsity()
    if sparsity is None:
        if implied is None:
            raise ValueError(f"{where}: pattern {pattern} needs a sparsity in [0, 1)")
        return implied
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{where}: sparsity must be a number in [0, 1), "
                        f"got {type(sparsity).__name__}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{where}: sparsity must be in [0, 1), got {sparsity}")
    if implied is not None and not math.isclose(sparsity, implied, abs_tol=1e-9):
        raise ValueError(f"{where}: pattern {pattern} fixes sparsity {implied:g}, "
                         f"got sparsity={sparsity}; leave sparsity out or pass {implied:g}")
    return float(sparsity)


def _globs(name, v) -> tuple[str, ...] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return (v,)
    if isinstance(v, Sequence) and all(isinstance(p, str) for p in v):
        return tuple(v)
    raise TypeError(f"{name} must be a glob string, a sequence of them, or None; got {v!r}")


def selects(name: str, include, exclude) -> bool:
    """Whether ``name`` matches some ``include`` glob (or include is None) and no
    ``exclude`` glob; each a glob string, a sequence of them, or None."""
    include, exclude = _globs("include", include), _globs("exclude", exclude)
    if include is not None and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in exclude or ())


@dataclasses.dataclass(frozen=True)
class LayerSettings:
    """What one selected layer gets after overrides are applied."""

    pattern: Pattern
    sparsity: float
    min_density: float
    max_density: float
    sparsity_overridden: bool


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """How to prune a model.

    pattern: ``"unstructured"`` | ``"N:M"`` | ``"block:BHxBW"`` | ``"channel"`` |
        ``"channel:in"`` | callable ``(scores, sparsity) -> bool mask``.
    sparsity: fraction of units to prune, in ``[0, 1)``; N:M patterns fix it (leave it out).
    criterion: ``"magnitude"`` | ``"taylor"`` | ``"wanda"`` | ``"sparsegpt"`` (prunes and
        updates the kept weights from calibration inputs; scope "layer" only) | callable
        ``(module, stats) -> scores`` (``stats`` is a
        :class:`~sparseprune.pruning.calibration.LayerStats` or None before calibration).
    scope: ``"layer"`` (every layer to its own sparsity) or ``"global"`` (one ranking of the
        units of all layers that share a pattern, within ``min_density``/``max_density``
        per layer; layers whose sparsity is overridden stay per layer).
    include / exclude: glob patterns (``fnmatch``) on module names from ``named_modules()``;
        a layer is selected if it matches some include (or include is None) and no exclude.
    overrides: ``{glob: {"pattern": ..., "sparsity": ..., "min_density": ...,
        "max_density": ...}}``; the first matching glob applies.
    per_row: rank unstructured scores within each output row; None = only for Wanda, as in
        the Wanda paper. Not with ``scope="global"``.
    schedule: :class:`CubicSchedule` for :meth:`Pruner.step`.
    structured: prune dependency groups instead of single weights (patterns ``"channel"``
        and ``"head"`` only): a removed output channel, FFN neuron or attention head is
        masked in every layer that produces or reads it, and :meth:`Pruner.shrink` then
        removes it for real. Overrides and include/exclude globs match group names (the
        first producer, e.g. ``"*.intermediate.dense"``, ``"*.attention.self"``, ``"conv1"``).
    round_to: with ``structured=True``, channel groups keep a multiple of this many channels
        (e.g. 8 or 16, for fast dense kernels); heads are not rounded.
    refit: with ``structured=True``, when units are removed, the layers that read them get
        their kept columns refitted by least squares on the calibration inputs
        (:func:`sparseprune.structured.refit_readers`), compensating for what the removed
        units contributed; needs ``Pruner.calibrate(batches, hessian=True)``.
    """

    pattern: str | Callable = "unstructured"
    sparsity: float | None = None
    criterion: str | Callable = "magnitude"
    scope: str = "layer"
    include: str | Sequence[str] | None = None
    exclude: str | Sequence[str] | None = None
    overrides: Mapping[str, Mapping[str, Any]] | None = None
    min_density: float = 0.0
    max_density: float = 1.0
    per_row: bool | None = None
    schedule: CubicSchedule | None = None
    structured: bool = False
    round_to: int = 1
    refit: bool = False

    def __post_init__(self):
        pattern = parse_pattern(self.pattern)
        _sparsity_for(pattern, self.sparsity, "PruneConfig")
        if isinstance(self.criterion, str):
            if self.criterion not in scores.CRITERIA:
                raise ValueError(f"unknown criterion {self.criterion!r}; valid: {CRITERIA_HELP}")
        elif not callable(self.criterion):
            raise TypeError(f"criterion must be a string or callable; valid: {CRITERIA_HELP}")
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {self.scope!r}")
        object.__setattr__(self, "include", _globs("include", self.include))
        object.__setattr__(self, "exclude", _globs("exclude", self.exclude))
        lo = _density("min_density", self.min_density)
        hi = _density("max_density", self.max_density)
        if lo > hi:
            raise ValueError(f"min_density ({lo}) must not exceed max_density ({hi})")
        if self.per_row not in (None, True, False):
            raise TypeError(f"per_row must be None, True or False, got {self.per_row!r}")
        if self.criterion == "sparsegpt" and self.scope != "layer":
            raise ValueError("criterion 'sparsegpt' reconstructs each layer on its own; "
                             "use scope='layer'")
        if self.per_row and self.scope == "global":
            raise ValueError("per_row=True ranks within a row; it cannot be combined with "
                             "scope='global'")
        if self.schedule is not None and not isinstance(self.schedule, CubicSchedule):
            raise TypeError(f"schedule must be a CubicSchedule or None, got "
                            f"{type(self.schedule).__name__}")
        overrides = dict(self.overrides or {})
        for glob, spec in overrides.items():
            if not isinstance(glob, str) or not isinstance(spec, Mapping):
                raise TypeError(f"overrides must map glob strings to dicts, got {glob!r}: {spec!r}")
            unknown = set(spec) - set(_OVERRIDE_KEYS)
            if unknown:
                raise ValueError(f"override {glob!r} has unknown keys {sorted(unknown)}; "
                                 f"valid: {_OVERRIDE_KEYS}")
            self._settings_from(spec, f"override {glob!r}")
        object.__setattr__(self, "overrides", overrides)
        self._check_structured(pattern)

    def _check_structured(self, pattern: Pattern) -> None:
        if self.structured not in (True, False):
            raise TypeError(f"structured must be True or False, got {self.structured!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or \
                self.round_to < 1:
            raise ValueError(f"round_to must be a positive int, got {self.round_to!r}")
        if self.refit not in (True, False):
            raise TypeError(f"refit must be True or False, got {self.refit!r}")
        if self.refit and not self.structured:
            raise ValueError("refit=True rewrites the readers of removed channels; it needs "
                             "structured=True (SparseGPT does the same for single weights)")
        names = [pattern.name] + [parse_pattern(spec["pattern"]).name
                                  for spec in self.overrides.values() if "pattern" in spec]
        if not self.structured:
            if "head" in names:
                raise ValueError('pattern "head" removes whole attention heads; it needs '
                                 'PruneConfig(..., structured=True)')
            return
        bad = sorted({n for n in names if n not in ("channel", "head")})
        if bad:
            raise ValueError(f"structured=True prunes dependency groups: patterns must be "
                             f'"channel" or "head", got {bad}')
        if self.criterion == "sparsegpt":
            raise ValueError("criterion 'sparsegpt' updates single weights; structured pruning "
                             "takes 'magnitude', 'wanda', 'taylor' or a callable")

    def _settings_from(self, spec: Mapping, where: str) -> LayerSettings:
        pattern = parse_pattern(spec.get("pattern", self.pattern))
        if "sparsity" in spec:
            sparsity = _sparsity_for(pattern, spec["sparsity"], where)
        elif "pattern" in spec:
            # A new pattern that fixes its sparsity (N:M) must not inherit the top-level one.
            implied = pattern.implied_sparsity()
            sparsity = implied if implied is not None else _sparsity_for(pattern, self.sparsity,
                                                                         where)
        else:
            sparsity = _sparsity_for(pattern, self.sparsity, where)
        lo = _density(f"{where}: min_density", spec.get("min_density", self.min_density))
        hi = _density(f"{where}: max_density", spec.get("max_density", self.max_density))
        if lo > hi:
            raise ValueError(f"{where}: min_density ({lo}) must not exceed max_density ({hi})")
        return LayerSettings(pattern, sparsity, lo, hi, "sparsity" in spec)

    def selects(self, name: str) -> bool:
        """Whether the module called ``name`` is pruned (include/exclude globs)."""
        return selects(name, self.include, self.exclude)

    def settings(self, name: str) -> LayerSettings:
        """Pattern, sparsity and density bounds of the layer ``name``."""
        for glob, spec in self.overrides.items():
            if fnmatch.fnmatchcase(name, glob):
                return self._settings_from(spec, f"override {glob!r}")
        return self._settings_from({}, "PruneConfig")

    def uses_per_row(self, pattern: Pattern) -> bool:
        if self.scope == "global" or pattern.name != "unstructured":
            return False
        return self.criterion == "wanda" if self.per_row is None else self.per_row


_FIELDS = ("pattern", "sparsity", "criterion", "scope", "include", "exclude", "overrides",
           "min_density", "max_density", "per_row", "schedule", "structured", "round_to",
           "refit")


def config_to_dict(config: PruneConfig) -> dict:
    """Plain data (for YAML/JSON); callables cannot be written."""
    if callable(config.pattern) or callable(config.criterion):
        raise ValueError("a PruneConfig with a callable pattern or criterion cannot be saved")
    out = {}
    for f in _FIELDS:
        v = getattr(config, f)
        if f == "schedule" and v is not None:
            v = dataclasses.asdict(v)
        elif f in ("include", "exclude") and v is not None:
            v = list(v)
        elif f == "overrides":
            v = {k: dict(s) for k, s in v.items()}
        out[f] = v
    return out


def config_from_dict(data: Mapping) -> PruneConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error (untrusted files)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a prune config must be a mapping, got {type(data).__name__}")
    unknown = set(data) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown prune config keys {sorted(unknown)}; valid: {_FIELDS}")
    kw = dict(data)
    if kw.get("schedule") is not None:
        if not isinstance(kw["schedule"], Mapping):
            raise ValueError("schedule must be a mapping of CubicSchedule fields")
        kw["schedule"] = CubicSchedule(**kw["schedule"])
    return PruneConfig(**kw)


def save_config(config: PruneConfig, path) -> None:
    """Writes ``config`` as YAML (``sparseprune prune --config`` reads it)."""
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)


def load_config(path) -> PruneConfig:
    import yaml

    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not YAML ({exc})") from None
    return config_from_dict(data)
