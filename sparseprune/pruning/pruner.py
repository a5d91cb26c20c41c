"""``Pruner``: masks on a model's Linear/Conv2d weights, from calibration to finalize."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .. import scores as criteria
from .allocate import global_keep
from .calibration import LayerStats, _Recorder, calibrate, feed
from .config import LayerSettings, PruneConfig
from .locking import (apply_mask, attach_mask, full_weight, is_dtensor, lock_optimizer,
                      remove_masks, zero_optimizer_state)
from .report import LayerReport, format_table, layer_report
from .sparsegpt import inverse_hessian_factor, sparsegpt_prune
from .structured import global_group_keep, group_masks, group_scores, layer_keep

__all__ = ["Pruner", "PRUNABLE"]

#: module types the pruner selects (subclasses included).
PRUNABLE = (nn.Linear, nn.Conv2d)


class _Reached(Exception):
    """Stops a calibration forward at the layer being calibrated."""


class Pruner:
    """Attaches masks to the selected weights of ``model`` (all True at first).

    Typical use::

        pruner = Pruner(model, PruneConfig(pattern="2:4", criterion="wanda"))
        pruner.calibrate(batches)       # Wanda/Taylor statistics
        pruner.prune()                  # one shot; or pruner.step() every training step
        pruner.lock(optimizer)          # pruned weights stay exactly zero while fine-tuning
        model = pruner.finalize()       # masks baked in, hooks gone

    Structured (``PruneConfig(pattern="channel" | "head", structured=True)``): the units are
    dependency groups (:func:`sparseprune.structured.find_groups`; ``example_inputs`` is
    needed for models traced with torch.fx), masks cover every layer of a group, and
    :meth:`shrink` removes the pruned units for real.
    """

    def __init__(self, model: nn.Module, config: PruneConfig, example_inputs=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(config, PruneConfig):
            raise TypeError(f"config must be a PruneConfig, got {type(config).__name__}")
        self.model, self.config = model, config
        self.groups = None
        self.group_keep: dict[str, torch.Tensor] = {}
        self.plan: dict | None = None
        if config.structured:
            self._select_groups(example_inputs)
        else:
            self.layers = {name: m for name, m in model.named_modules()
                           if isinstance(m, PRUNABLE) and config.selects(name)}
        if not self.layers:
            candidates = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
            raise ValueError(f"no nn.Linear/nn.Conv2d module matches include={config.include} "
                             f"exclude={config.exclude}; candidates: {candidates[:20]}")
        self.settings: dict[str, LayerSettings] = {n: config.settings(n) for n in self.layers}
        for name, module in self.layers.items():
            self._check_fits(name, module)
            attach_mask(module)
        self.stats: dict[str, LayerStats] = {}
        self.targets: dict[str, float | None] = dict.fromkeys(self.layers)
        self.steps_taken = 0
        self._locks: list[tuple[torch.optim.Optimizer, object]] = []
        # SparseGPT along a schedule: each layer's inverse-Hessian factor, kept for the
        # Gram matrix (and version) it came from: name -> (gram, version, factor).
        self._factors: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self._finalized = False

    def _select_groups(self, example_inputs) -> None:
        from ..structured import find_groups

        found = find_groups(self.model, example_inputs)
        cfg = self.config
        self.all_groups = found
        self.groups = {}
        self.group_settings: dict[str, LayerSettings] = {}
        for g in found.groups:
            if not cfg.selects(g.name):
                continue
            st = cfg.settings(g.name)
            if st.pattern.name == g.kind:
                self.groups[g.name] = g
                self.group_settings[g.name] = st
        if not self.groups:
            raise ValueError(f"no dependency group matches pattern {cfg.pattern!r} with "
                             f"include={cfg.include} exclude={cfg.exclude}; groups: "
                             f"{[(g.name, g.kind) for g in found.groups][:20]}; not followed: "
                             f"{[(b.module, b.reason) for b in found.blocked][:10]}")
        modules = dict(self.model.named_modules())
        self.layers = {m.module: modules[m.module] for g in self.groups.values()
                       for m in g.members if m.role in ("out", "in")}

    # ------------------------------------------------------------------ calibration
    def calibrate(self, batches: Iterable, loss_fn: Callable | None = None, *,
                  hessian: bool = False) -> Pruner:
        """Feeds ``batches`` (``model(**b)`` for dicts, ``model(*b)`` for tuples/lists, else
        ``model(b)``) and records input activation norms; with the Taylor criterion (or a
        ``loss_fn``), also gradients of ``loss_fn(output, batch)``; with SparseGPT (or
        ``hessian=True``, for ``PruneConfig(refit=True)``) the inputs' Gram matrices. Statistics
        accumulate over calls. Run it in the mode you want (``model.eval()`` for frozen
        norms)."""
        self._check_live()
        crit = self.config.criterion
        calibrate(self.model, self.layers, batches, self.stats,
                  gradients=crit == "taylor" or loss_fn is not None,
                  gram=crit == "sparsegpt" or hessian, loss_fn=loss_fn)
        return self

    # ------------------------------------------------------------------ pruning
    def prune(self) -> Pruner:
        """One shot: every layer to its final sparsity."""
        self._check_live()
        if self.groups is not None:
            self._apply_structured(lambda final: final)
        else:
            self._apply({n: s.sparsity for n, s in self.settings.items()})
        return self

    def step(self) -> bool:
        """Advances the gradual schedule by one training step; returns whether the masks
        changed at this step."""
        self._check_live()
        schedule = self.config.schedule
        if schedule is None:
            raise ValueError("step() needs PruneConfig(schedule=CubicSchedule(start, end, "
                             "frequency)); use prune() for one-shot pruning")
        t = self.steps_taken
        self.steps_taken += 1
        if not schedule.is_update(t):
            return False
        if self.groups is not None:
            self._apply_structured(lambda final: schedule.sparsity(t, final))
            return True
        self._apply({n: schedule.sparsity(t, s.sparsity) for n, s in self.settings.items()})
        return True

    def prune_sequential(self, batches: Iterable, progress: bool = False) -> Pruner:
        """One shot, layer by layer in the order the model runs them: each layer is
        calibrated on ``batches`` flowing through the layers before it *as already pruned*
        (SparseGPT's sequential pass; also for Wanda), and only that layer's statistics (its
        Hessian, for SparseGPT) are held at a time. Each forward stops at the layer being
        calibrated. Criteria "sparsegpt", "wanda" or "magnitude"; scope "layer"."""
        self._check_live()
        crit = self.config.criterion
        if crit not in ("sparsegpt", "wanda", "magnitude") or self.groups is not None:
            raise ValueError("prune_sequential() takes criterion 'sparsegpt', 'wanda' or "
                             "'magnitude' on single weights (not structured groups)")
        if self.config.scope != "layer":
            raise ValueError("prune_sequential() prunes each layer on its own: scope='layer'")
        batches = list(batches)
        if not batches:
            raise ValueError("prune_sequential() got no batches")
        order = self._execution_order(batches[0])
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(order), desc="sequential", unit="layer")
        for name in order:
            module = self.layers[name]
            stats = self.stats[name] = LayerStats()
            if crit != "magnitude":
                recorder = _Recorder(stats, crit == "sparsegpt")

                def stop_after(mod, args, recorder=recorder):
                    recorder(mod, args)
                    raise _Reached

                handle = module.register_forward_pre_hook(stop_after)
                try:
                    for batch in batches:
                        try:
                            with torch.no_grad():
                                feed(self.model, batch)
                        except _Reached:
                            pass
                        stats.batches += 1
                finally:
                    handle.remove()
            self._apply({name: self.settings[name].sparsity})
            stats.gram = None  # one layer's Hessian at a time
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return self

    def _execution_order(self, batch) -> list[str]:
        """Selected layers in the order one forward pass reaches them (unreached ones
        last)."""
        seen: list[str] = []
        handles = [m.register_forward_pre_hook(
            lambda mod, args, n=n: seen.append(n) if n not in seen else None)
            for n, m in self.layers.items()]
        try:
            with torch.no_grad():
                feed(self.model, batch)
        finally:
            for h in handles:
                h.remove()
        return seen + [n for n in self.layers if n not in seen]

    def lock(self, *optimizers: torch.optim.Optimizer) -> Pruner:
        """Keeps pruned weights exactly zero across each optimizer's ``step()`` (and zeroes
        their momentum / Adam state), for any ``torch.optim.Optimizer``."""
        self._check_live()
        for opt in optimizers:
            self._locks.append((opt, lock_optimizer(opt, self.layers.values())))
        return self

    def finalize(self) -> nn.Module:
        """Bakes the masks into the weights, removes masks, hooks and optimizer locks;
        returns the model (plain modules again, loadable without sparseprune)."""
        self._check_live()
        for _, handle in self._locks:
            handle.remove()
        self._locks.clear()
        for module in self.layers.values():
            remove_masks(module)
        self._factors.clear()
        self._finalized = True
        return self.model

    def shrink(self, inplace: bool = True) -> nn.Module:
        """Removes the pruned units of every group for real (rows, columns, BatchNorm
        entries, head counts): the result is plain torch modules, smaller and dense.
        In place by default (this Pruner is then finalized); ``inplace=False`` shrinks a
        deep copy and leaves the model and this Pruner as they were. The record of what was
        kept is :attr:`plan` (see :func:`sparseprune.structured.apply_plan`); the per-group
        numbers are :meth:`shrink_table`. Optimizers built before must be built again."""
        from ..structured import make_plan, shrink

        self._check_live()
        if self.groups is None:
            raise ValueError("shrink() needs dependency groups: PruneConfig(pattern='channel' "
                             "| 'head', structured=True)")
        target = self.model if inplace else copy.deepcopy(self.model)
        modules = dict(target.named_modules())
        if inplace:
            for _, handle in self._locks:
                handle.remove()
            self._locks.clear()
        for name in self.layers:
            remove_masks(modules[name])
        keeps = {n: k for n, k in self.group_keep.items() if not k.all()}
        self.plan = make_plan(list(self.groups.values()), keeps)
        self._shrunk = [(n, g.kind, g.size, int(keeps[n].sum()) if n in keeps else g.size)
                        for n, g in self.groups.items()]
        shrink(target, list(self.groups.values()), keeps)
        if inplace:
            self._finalized = True
        return target

    def shrink_table(self) -> str:
        """Markdown table: each group's units before and after :meth:`shrink`."""
        if not getattr(self, "_shrunk", None):
            raise RuntimeError("call shrink() first")
        lines = ["| group | kind | before | after | removed |", "|---|---|---|---|---|"]
        for name, kind, before, after in self._shrunk:
            lines.append(f"| {name} | {kind} | {before} | {after} | {1 - after / before:.1%} |")
        return "\n".join(lines)

    # ------------------------------------------------------------------ inspection
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current keep-masks by module name (the buffers themselves)."""
        self._check_live()
        return {n: m.weight_mask for n, m in self.layers.items()}

    def report(self) -> list[LayerReport]:
        return [layer_report(n, m, self._pattern_label(n), self.targets[n])
                for n, m in self.layers.items()]

    def _pattern_label(self, name: str) -> str:
        if self.groups is not None:
            kinds = sorted({g.kind for g in self.groups.values()
                            if any(m.module == name for m in g.members)})
            return "structured " + "+".join(kinds)
        st = self.settings[name]
        ranked = (self.config.scope == "global" and st.pattern.rankable
                  and not st.sparsity_overridden)
        return f"{st.pattern.name} (global)" if ranked else st.pattern.name

    def report_table(self) -> str:
        """Markdown table of per-layer target and actual sparsity."""
        return format_table(self.report())

    # ------------------------------------------------------------------ internals
    def _check_live(self):
        if self._finalized:
            raise RuntimeError("this Pruner was finalized; make a new one to prune again")

    def _check_fits(self, name: str, module: nn.Module):
        pattern = self.settings[name].pattern
        block = getattr(pattern, "block", None)
        w = module.weight
        rows, cols = w.shape[0], w[0].numel()
        if block is not None and (block[0] > rows or block[1] > cols):
            raise ValueError(f"layer {name!r}: block {block[0]}x{block[1]} is larger than its "
                             f"weight {rows}x{cols} (as 2-D); exclude it or override its pattern")

    def layer_scores(self, name: str) -> torch.Tensor:
        """Importance scores of layer ``name`` (the weight's shape) under the configured
        criterion, computed on the current weight. Not for "sparsegpt", which has no
        separate scores (it chooses and updates as it goes)."""
        if name not in self.layers:
            raise KeyError(f"no pruned layer {name!r}; layers: {list(self.layers)}")
        module = self.layers[name]
        crit = self.config.criterion
        w = full_weight(module.weight.detach())
        stats = self.stats.get(name)
        if callable(crit):
            s = crit(module, stats)
            if not isinstance(s, torch.Tensor) or s.numel() != w.numel():
                raise ValueError(f"criterion callable returned "
                                 f"{getattr(s, 'shape', type(s).__name__)} for layer {name!r}; "
                                 f"expected a tensor of the weight's shape {tuple(w.shape)}")
            return s.detach().reshape(w.shape)
        if crit == "magnitude":
            return criteria.magnitude(w)
        if crit == "wanda":
            if stats is None or stats.input_sq is None:
                raise ValueError(f"criterion 'wanda' needs input activations: call "
                                 f"calibrate(batches) before pruning (layer {name!r} saw none)")
            return criteria.wanda(w, stats.input_norm(w.shape[0]).to(w.device))
        if crit == "taylor":
            if stats is None or stats.grad_abs is None:
                raise ValueError(f"criterion 'taylor' needs gradients: call calibrate(batches, "
                                 f"loss_fn) before pruning (layer {name!r} has none)")
            return criteria.taylor(w, stats.grad_abs)
        raise ValueError(f"criterion {crit!r} has no separate scores")

    def _apply(self, sparsity: dict[str, float]) -> None:
        """Prunes the layers named in ``sparsity`` to their given sparsity."""
        cfg = self.config
        for m in self.layers.values():
            # Score what the model computes with: weights moved off zero since the last
            # forward (no lock, or edited by hand) must not rank above kept ones.
            apply_mask(m, m.weight_mask)
        if cfg.criterion == "sparsegpt":
            self._apply_sparsegpt(sparsity)
            return
        scores = {n: self.layer_scores(n) for n in sparsity}
        keeps: dict[str, torch.Tensor] = {}
        groups: dict[str, list[str]] = {}
        for n in sparsity:
            st = self.settings[n]
            if cfg.scope == "global" and st.pattern.rankable and not st.sparsity_overridden:
                groups.setdefault(st.pattern.name, []).append(n)
            else:
                keeps[n] = st.pattern.mask(scores[n], sparsity[n],
                                           per_row=cfg.uses_per_row(st.pattern))
        for names in groups.values():
            pattern = self.settings[names[0]].pattern
            units = [pattern.unit_scores(scores[n]) for n in names]
            unit_keeps = global_keep(units, sparsity[names[0]],
                                     [self.settings[n].min_density for n in names],
                                     [self.settings[n].max_density for n in names])
            for n, k in zip(names, unit_keeps):
                keeps[n] = pattern.expand(k, scores[n].shape)
        for n, keep in keeps.items():
            apply_mask(self.layers[n], keep)
            self.targets[n] = sparsity[n]
        self._clear_locked_state()

    def _check_unsharded(self, what: str) -> None:
        sharded = [n for n, m in self.layers.items() if is_dtensor(m.weight)]
        if sharded:
            raise RuntimeError(f"{what} needs whole weights, but {sharded[0]!r} is sharded "
                               f"(FSDP): prune before fully_shard(), then lock the masks "
                               f"(gradual magnitude, wanda and taylor pruning also run on "
                               f"sharded weights)")

    def _apply_structured(self, target) -> None:
        self._check_unsharded("structured pruning")
        cfg = self.config
        for m in self.layers.values():
            apply_mask(m, m.weight_mask)
        modules = dict(self.model.named_modules())
        magnitude = cfg.criterion == "magnitude"
        cache: dict[str, torch.Tensor] = {}

        def entry_scores(name):
            if name not in cache:
                cache[name] = self.layer_scores(name)
            return cache[name]

        scores = {n: group_scores(g, modules, entry_scores, magnitude)
                  for n, g in self.groups.items()}
        keeps: dict[str, torch.Tensor] = {}
        ranked: dict[str, list[str]] = {}
        for n, st in self.group_settings.items():
            round_to = cfg.round_to if self.groups[n].kind == "channel" else 1
            if cfg.scope == "global" and not st.sparsity_overridden:
                ranked.setdefault(self.groups[n].kind, []).append(n)
            else:
                keeps[n] = layer_keep(scores[n], target(st.sparsity), round_to, n)
        for kind, names in ranked.items():
            sts = [self.group_settings[n] for n in names]
            found = global_group_keep([scores[n] for n in names], target(sts[0].sparsity),
                                      [s.min_density for s in sts], [s.max_density for s in sts],
                                      [cfg.round_to if kind == "channel" else 1] * len(names))
            keeps.update(zip(names, found))
        if cfg.refit:
            from ..structured import refit_readers

            grams = {n: st.gram for n, st in self.stats.items() if st.gram is not None}
            refit_readers(self.model, list(self.groups.values()),
                          {n: k for n, k in keeps.items() if not k.all()}, grams)
        for name, mask in group_masks(list(self.groups.values()), keeps, modules).items():
            apply_mask(self.layers[name], mask.to(self.layers[name].weight.device))
        for n in self.layers:
            self.targets[n] = None
        self.group_keep = keeps
        self._clear_locked_state()

    def _apply_sparsegpt(self, sparsity: dict[str, float]) -> None:
        self._check_unsharded("criterion 'sparsegpt'")
        for n in sparsity:
            m = self.layers[n]
            stats = self.stats.get(n)
            if stats is None or stats.gram is None:
                raise ValueError(f"criterion 'sparsegpt' needs input statistics: call "
                                 f"calibrate(batches) before pruning (layer {n!r} saw none)")
            w = m.weight.detach()
            w2 = w.reshape(w.shape[0], -1)
            new_w, keep = sparsegpt_prune(w2, stats.gram, self.settings[n].pattern, sparsity[n],
                                          factor=self._sparsegpt_factor(n, stats.gram, w.device))
            with torch.no_grad():
                m.weight.copy_(new_w.reshape(w.shape))
            apply_mask(m, keep)
            self.targets[n] = sparsity[n]
        self._clear_locked_state()

    def _sparsegpt_factor(self, name: str, gram: torch.Tensor, device) -> torch.Tensor | None:
        """A schedule re-solves every layer with the same Gram matrix many times (25-31
        times for MiniLM's gradual 90%, ~35% of each re-solve in the factor), so its factor is
        kept; one-shot pruning keeps nothing (a float64 [in, in] per layer)."""
        if self.config.schedule is None:
            return None
        hit = self._factors.get(name)
        if hit is not None and hit[0] is gram and hit[1] == gram._version and \
                hit[2].device == torch.device(device):
            return hit[2]
        factor = inverse_hessian_factor(gram.to(device))
        self._factors[name] = (gram, gram._version, factor)
        return factor

    def _clear_locked_state(self) -> None:
        """Newly pruned weights must not be pushed off zero by momentum they had before."""
        masked = {id(m.weight): m for m in self.layers.values()}
        for opt, _ in self._locks:
            zero_optimizer_state(opt, masked)
