"""Masks attached to modules, and kept applied while the model trains.

A mask is a bool buffer ``weight_mask`` on the module, so it is in ``state_dict()``, is
copied by ``copy.deepcopy`` and moves with ``.to(device)``. ``weight`` stays the plain
parameter (same name, same object, so existing optimizers keep working), with its pruned
entries set to zero:

* a forward pre-hook (a module-level function reading the module's own buffer, so it
  survives ``deepcopy``) zeroes pruned entries before every forward;
* :func:`lock_optimizer` adds an ``Optimizer.register_step_post_hook`` that zeroes pruned
  weights and their optimizer state (momentum, Adam moments) after every step, so they are
  exactly zero between steps too, whatever the optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["MASK_NAME", "attach_mask", "apply_mask", "has_mask", "remove_masks",
           "lock_optimizer"]

MASK_NAME = "weight_mask"


def has_mask(module: nn.Module) -> bool:
    return MASK_NAME in module._buffers and module._buffers[MASK_NAME] is not None


def _zero_pruned(module: nn.Module, args) -> None:
    mask = module._buffers.get(MASK_NAME)
    if mask is None:
        return
    with torch.no_grad():
        # Through .data on purpose: the values only change where an optimizer moved a
        # pruned weight, and bumping the parameter's version would break a backward pass
        # that spans two forwards of this module (shared layers, gradient accumulation).
        module.weight.data.mul_(mask)


def attach_mask(module: nn.Module) -> torch.Tensor:
    """Gives ``module`` an all-True mask (or keeps the one it has) and the zeroing hook."""
    if not has_mask(module):
        module.register_buffer(MASK_NAME, torch.ones(module.weight.shape, dtype=torch.bool,
                                                     device=module.weight.device))
    if _zero_pruned not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_zero_pruned)
    return module._buffers[MASK_NAME]


def apply_mask(module: nn.Module, keep: torch.Tensor) -> None:
    """Stores ``keep`` as the module's mask (in place: the buffer object stays) and zeroes
    the pruned weights."""
    mask = module._buffers[MASK_NAME]
    with torch.no_grad():
        mask.copy_(keep.reshape(mask.shape))
        module.weight.mul_(mask)


def remove_masks(model: nn.Module) -> nn.Module:
    """Bakes every mask in ``model`` into its weight and removes masks and hooks; works on
    any model a :class:`Pruner` touched, a deep copy or reloaded one included."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook is _zero_pruned:
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
        if has_mask(module):
            with torch.no_grad():
                module.weight.mul_(module._buffers[MASK_NAME])
            del module._buffers[MASK_NAME]
    return model


def zero_optimizer_state(optimizer: torch.optim.Optimizer, masked: dict[int, nn.Module]) -> None:
    """Zeroes pruned weights, and every per-entry state tensor of theirs (momentum,
    ``exp_avg``, ``exp_avg_sq``, ...), so no stale state pushes them off zero."""
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                module = masked.get(id(p))
                if module is None or not has_mask(module):
                    continue
                mask = module._buffers[MASK_NAME]
                p.mul_(mask)
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value.mul_(mask)


def lock_optimizer(optimizer: torch.optim.Optimizer, modules: Iterable[nn.Module]):
    """Keeps the pruned weights of ``modules`` exactly zero across ``optimizer.step()``.
    Returns the hook handle (``.remove()`` to unlock)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    masked = {id(m.weight): m for m in modules}
    zero_optimizer_state(optimizer, masked)

    def after_step(opt, args, kwargs):
        zero_optimizer_state(opt, masked)

    return optimizer.register_step_post_hook(after_step)
