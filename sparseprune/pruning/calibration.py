"""Calibration: run batches through the model and collect what the criteria need.

Per selected layer: the sum of squares of each input feature (Wanda), the sum over
batches of ``|dL/dw|`` (Taylor; ``sum_b |w g_b| = |w| sum_b |g_b|``), and optionally the
input Gram matrix ``X^T X`` (SparseGPT). Hooks live only while :func:`calibrate` runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerStats", "feed", "calibrate", "input_features"]


@dataclasses.dataclass
class LayerStats:
    """What calibration saw at one layer. ``input_sq`` is ``[features]`` or, for grouped
    convolutions, ``[groups, features]``, with features = ``in/groups * kh * kw``."""

    input_sq: torch.Tensor | None = None
    tokens: int = 0
    grad_abs: torch.Tensor | None = None
    batches: int = 0
    gram: torch.Tensor | None = None

    def input_norm(self, out_features: int) -> torch.Tensor:
        """L2 norm of each input feature, ``[features]`` or ``[out, features]``."""
        if self.input_sq is None:
            raise ValueError("no input activations were recorded for this layer")
        norm = self.input_sq.sqrt()
        if norm.dim() == 2:  # grouped conv: each output row sees its group's inputs
            norm = norm.repeat_interleave(out_features // norm.shape[0], dim=0)
        return norm


def feed(model: nn.Module, batch):
    """``model(**b)`` for a dict, ``model(*b)`` for a tuple or list, else ``model(b)``."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def input_features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows the layer's 2-D weight multiplies: ``[tokens, in]`` for Linear,
    ``[groups, tokens, in/groups*kh*kw]`` for Conv2d (im2col)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        padding = module.padding
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = (0, 0)
        elif padding == "same":
            # Exact for odd kernels; for even ones torch pads one more on the far side.
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            x = F.pad(x, (total[1] // 2, total[1] - total[1] // 2,
                          total[0] // 2, total[0] - total[0] // 2))
            padding = (0, 0)
        elif padding == "valid":
            padding = (0, 0)
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                        stride=module.stride)  # [B, C*kh*kw, L]
        g = module.groups
        b, f, length = cols.shape
        return cols.view(b, g, f // g, length).permute(1, 0, 3, 2).reshape(g, b * length, f // g)
    raise TypeError(f"calibration supports nn.Linear and nn.Conv2d, got {type(module).__name__}")


class _Recorder:
    """Forward pre-hook accumulating input statistics of one layer."""

    def __init__(self, stats: LayerStats, want_gram: bool):
        self.stats, self.want_gram = stats, want_gram

    def __call__(self, module, args):
        with torch.no_grad():
            feats = input_features(module, args[0].detach()).to(torch.float64)
            sq = feats.pow(2).sum(dim=-2)
            if isinstance(module, nn.Conv2d) and module.groups == 1:
                sq = sq[0]
            s = self.stats
            s.input_sq = sq if s.input_sq is None else s.input_sq + sq
            s.tokens += feats.shape[-2]
            if self.want_gram:
                if feats.dim() == 3 and feats.shape[0] > 1:
                    raise ValueError("SparseGPT does not support grouped convolutions")
                f2 = feats.reshape(-1, feats.shape[-1])
                gram = f2.T @ f2
                s.gram = gram if s.gram is None else s.gram + gram


def _loss_of(output, batch, loss_fn):
    if loss_fn is not None:
        loss = loss_fn(output, batch)
    elif isinstance(output, torch.Tensor) and output.dim() == 0:
        loss = output
    elif getattr(output, "loss", None) is not None:
        loss = output.loss
    else:
        raise ValueError("the taylor criterion needs a loss: pass loss_fn=(output, batch) -> "
                         "scalar to calibrate(), or a model that returns a scalar or .loss")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"loss must be a scalar tensor, got {loss!r:.80}")
    return loss.reshape(())


def calibrate(model: nn.Module, layers: dict[str, nn.Module], batches: Iterable,
              stats: dict[str, LayerStats], *, gradients: bool, gram: bool,
              loss_fn: Callable | None = None) -> int:
    """Runs ``batches`` through ``model`` and accumulates into ``stats`` (one entry per
    layer name, created if missing). Returns the number of batches seen."""
    for name in layers:
        stats.setdefault(name, LayerStats())
    handles = [m.register_forward_pre_hook(_Recorder(stats[name], gram))
               for name, m in layers.items()]
    weights = [m.weight for m in layers.values()]
    was_required = [w.requires_grad for w in weights]
    count = 0
    try:
        if gradients:
            for w in weights:
                w.requires_grad_(True)
        for batch in batches:
            if gradients:
                with torch.enable_grad():
                    loss = _loss_of(feed(model, batch), batch, loss_fn)
                    if not loss.requires_grad:
                        raise ValueError("the loss does not depend on the pruned weights")
                    grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for name, w, g in zip(layers, weights, grads):
                    s = stats[name]
                    g = torch.zeros_like(w) if g is None else g.detach().abs()
                    s.grad_abs = g if s.grad_abs is None else s.grad_abs + g
                    s.batches += 1
            else:
                with torch.no_grad():
                    feed(model, batch)
                for name in layers:
                    stats[name].batches += 1
            count += 1
    finally:
        for h in handles:
            h.remove()
        for w, req in zip(weights, was_required):
            w.requires_grad_(req)
    if count == 0:
        raise ValueError("calibrate() got no batches")
    return count

