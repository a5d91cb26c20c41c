"""Recovery: fine-tune a pruned model by distillation from its dense original, masks locked.

    pruner = Pruner(student, PruneConfig(pattern="2:4", criterion="wanda"))
    pruner.calibrate(calib_batches).prune()
    result = distill(student, teacher, train_batches, pruner=pruner,
                     config=RecoverConfig(steps=600, lr=1e-4))

Every step feeds one batch to the teacher (no grad) and the student, and minimises a
distillation loss between what :func:`default_outputs` picks from their outputs: 1 - cosine
of the embeddings (``"cosine"``, the default), their MSE (``"mse"``), or the KL divergence of
temperature-softened logits (``"kl"``); plus, for sentence-transformers outputs, the MSE of
the token embeddings (``token_weight``), and an optional task loss. The pruner's optimizer
lock keeps pruned weights exactly zero through every step; a pruner with a schedule is
stepped every optimizer step (prune a little, recover, repeat). Gradient accumulation, bf16
autocast on the CPU, a tqdm progress bar, resumable checkpoints and a cache of the teacher's
outputs per batch are options.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._ext import native_bf16
from .pruning import Pruner
from .pruning.locking import has_mask

__all__ = ["RecoverConfig", "RecoverResult", "distill", "default_outputs", "distill_loss"]

LOSSES = ("cosine", "mse", "kl")


@dataclasses.dataclass
class RecoverConfig:
    """Options of :func:`distill`. ``steps`` counts optimizer steps (each of ``grad_accum``
    batches)."""

    steps: int = 500
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20       # linear warm-up, then cosine decay to 10% of lr
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    loss: str = "cosine"
    token_weight: float = 1.0    # sentence-transformers: MSE of token embeddings
    layer_weight: float = 0.0    # MSE of every layer's hidden states, where outputs have them
    temperature: float = 2.0     # "kl" only
    task_weight: float = 0.0     # with task_loss
    # torch.autocast("cpu", bfloat16) for the forward passes: True, False, or "auto" (only
    # where the CPU multiplies bf16 natively, sparseprune.native_bf16()).
    bf16: bool | str = False
    train_mode: bool = False     # student.train() (dropout on) instead of eval()
    # Keep the teacher's outputs of each batch from its first use on (the teacher is frozen
    # and in eval mode, so they never change): one teacher forward per batch instead of per
    # step, for the memory of every batch's outputs.
    cache_teacher: bool = False
    # The attention implementation of every transformers model inside the student while it
    # trains (restored afterwards), e.g. "eager": torch's CPU flash-attention backward cost
    # ~17 ms per MiniLM layer at batch 16 here, and the explicit softmax(QK^T)V made a whole
    # forward + backward 1.4x faster. None leaves the model as it is.
    attn_implementation: str | None = None
    seed: int = 0
    checkpoint: str | os.PathLike | None = None
    checkpoint_every: int = 100
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "grad_accum", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not isinstance(self.bf16, bool) and self.bf16 != "auto":
            raise ValueError(f"bf16 must be True, False or 'auto', got {self.bf16!r}")
        if self.attn_implementation is not None and (
                not isinstance(self.attn_implementation, str) or not self.attn_implementation):
            raise ValueError(f"attn_implementation must be None or a transformers attention "
                             f"implementation name, got {self.attn_implementation!r}")

    def use_bf16(self) -> bool:
        """Whether the forward passes run under bf16 autocast."""
        return native_bf16() if self.bf16 == "auto" else bool(self.bf16)


@dataclasses.dataclass
class RecoverResult:
    steps: int
    losses: list[float]          # mean loss of each optimizer step
    seconds: float               # wall time of this call (a resumed run counts its part)
    resumed_from: int = 0


def default_outputs(output: Any) -> dict[str, torch.Tensor]:
    """What to match, from a model's output: sentence-transformers dicts give
    ``embedding`` (and ``tokens``: token embeddings with the ``mask``); HF outputs give
    ``logits`` or ``embedding`` = last hidden state; a tensor or the first of a tuple is
    ``embedding``."""
    if isinstance(output, dict) and "sentence_embedding" in output:
        out = {"embedding": output["sentence_embedding"]}
        if "token_embeddings" in output and "attention_mask" in output:
            out["tokens"], out["mask"] = output["token_embeddings"], output["attention_mask"]
            layers = output.get("all_layer_embeddings")
            if layers is not None and len(layers) > 1:  # with config.output_hidden_states
                out["layers"] = torch.stack(list(layers[1:]))  # after each encoder layer
        return out
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is not None:
        return {"logits": logits}
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is not None:
        return {"embedding": hidden}
    if isinstance(output, torch.Tensor):
        return {"embedding": output}
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return {"embedding": output[0]}
    raise TypeError(f"cannot tell what to distil from a {type(output).__name__}; pass "
                    f"outputs=... to distill()")


def distill_loss(student: dict, teacher: dict, config: RecoverConfig) -> torch.Tensor:
    """The distillation loss between two :func:`default_outputs`-style dicts."""
    if student.keys() != teacher.keys():
        raise ValueError(f"student and teacher outputs differ: {sorted(student)} vs "
                         f"{sorted(teacher)}")
    for k in student:
        if k != "mask" and student[k].shape != teacher[k].shape:
            raise ValueError(f"student and teacher {k!r} shapes differ: "
                             f"{tuple(student[k].shape)} vs {tuple(teacher[k].shape)}")
    if "logits" in student:
        t = config.temperature
        s, tt = student["logits"].float() / t, teacher["logits"].float() / t
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(tt, -1), log_target=True,
                        reduction="batchmean") * t * t
    s = student["embedding"].float().flatten(0, -2)
    tt = teacher["embedding"].float().flatten(0, -2)
    if config.loss == "cosine":
        loss = (1 - F.cosine_similarity(s, tt, dim=-1)).mean()
    elif config.loss == "mse":
        loss = F.mse_loss(s, tt)
    else:
        raise ValueError("loss='kl' needs logits in the outputs")
    if "tokens" in student and config.token_weight:
        keep = student["mask"].bool().unsqueeze(-1)
        diff = (student["tokens"].float() - teacher["tokens"].float()) * keep
        loss = loss + config.token_weight * diff.square().sum() / (keep.sum() * diff.shape[-1])
    if "layers" in student and config.layer_weight:
        keep = student["mask"].bool()[None, ..., None]
        diff = (student["layers"].float() - teacher["layers"].float()) * keep
        loss = loss + config.layer_weight * diff.square().sum() / (
            keep.sum() * diff.shape[0] * diff.shape[-1])
    return loss


def _feed(model: nn.Module, batch):
    if isinstance(batch, dict):
        try:
            return model(**batch)
        except TypeError:
            return model(dict(batch))  # sentence-transformers take the dict itself
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def default_optimizer(params: list, config: RecoverConfig) -> torch.optim.Optimizer:
    """AdamW, fused where every parameter is a dense float tensor on a device that has
    the fused kernel (CPU, CUDA): the same update in one pass over each tensor instead of
    a dozen, which took 84-91 ms of a ~600 ms MiniLM step here against 23 ms fused."""
    fusable = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point and not p.is_sparse
        and p.device == params[0].device for p in params)
    if fusable:
        try:
            return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                     fused=True)
        except (RuntimeError, ValueError):  # a torch build without the fused kernel there
            pass
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _lr_factor(step: int, config: RecoverConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _set_attention(model: nn.Module, impl: str) -> list[tuple[Any, str]]:
    """Sets ``impl`` on every outermost transformers model inside ``model``; returns what
    to restore (model, previous implementation)."""
    done, seen = [], set()
    for m in model.modules():
        config = getattr(m, "config", None)
        if not hasattr(m, "set_attn_implementation") or config is None or id(config) in seen:
            continue
        seen.add(id(config))
        done.append((m, config._attn_implementation))
        try:
            m.set_attn_implementation(impl)
        except (ValueError, ImportError) as e:
            _restore_attention(done[:-1])
            raise ValueError(f"attn_implementation={impl!r}: {e}") from e
    if not done:
        raise ValueError(f"attn_implementation={impl!r} but the student holds no transformers "
                         f"model (nothing has set_attn_implementation)")
    return done


def _restore_attention(done) -> None:
    for m, impl in reversed(done):
        m.set_attn_implementation(impl)


def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def distill(student: nn.Module, teacher: nn.Module, batches: Sequence, *,
            pruner: Pruner | None = None, optimizer: torch.optim.Optimizer | None = None,
            config: RecoverConfig | None = None,
            outputs: Callable[[Any], dict] = default_outputs,
            task_loss: Callable[[Any, Any], torch.Tensor] | None = None,
            on_step: Callable[[int, float], None] | None = None,
            require_masks: bool = True) -> RecoverResult:
    """Fine-tunes ``student`` towards ``teacher`` on ``batches`` (a sequence, cycled in a
    seeded order; each item fed as ``model(**b)`` / ``model(dict)`` / ``model(*b)`` /
    ``model(b)``), keeping the pruned weights of ``pruner`` (or, without one, every weight
    mask already attached to ``student``) exactly zero. Returns the per-step losses.

    ``optimizer`` defaults to AdamW over the student's trainable parameters. With
    ``config.checkpoint`` set, state is saved every ``checkpoint_every`` steps and a run
    finding that file resumes from it (same result as an uninterrupted run). ``on_step(step,
    loss)`` is called after every optimizer step (and its checkpoint). ``require_masks=False``
    fine-tunes a student that has no masks, such as a model shrunk by structured pruning
    (its removed units are gone, there is nothing to keep zero)."""
    config = config or RecoverConfig()
    if not isinstance(student, nn.Module) or not isinstance(teacher, nn.Module):
        raise TypeError("student and teacher must be nn.Modules")
    if student is teacher:
        raise ValueError("student and teacher are the same module; distil from a dense copy")
    batches = list(batches)
    if not batches:
        raise ValueError("no training batches (empty corpus)")
    if require_masks and pruner is None and not any(has_mask(m) for m in student.modules()):
        raise ValueError("the student has no pruning masks: prune it with a Pruner (and pass "
                         "pruner=...) first, or pass require_masks=False to fine-tune it "
                         "without masks (a shrunk model)")
    if pruner is not None and pruner.model is not student and not any(
            m is pruner.model for m in student.modules()):
        raise ValueError("pruner= was made for another model than the student")
    if task_loss is not None and config.task_weight == 0:
        raise ValueError("task_loss given but config.task_weight is 0")

    params = [p for p in student.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = default_optimizer(params, config)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    if pruner is not None:
        pruner.lock(optimizer)
    else:
        from .pruning.locking import lock_optimizer
        lock_optimizer(optimizer, [m for m in student.modules() if has_mask(m)])
    teacher.eval()
    student.train(config.train_mode)
    attention = (_set_attention(student, config.attn_implementation)
                 if config.attn_implementation else [])
    try:
        return _train(student, teacher, batches, pruner, optimizer, params, base_lrs, config,
                      outputs, task_loss, on_step)
    finally:
        _restore_attention(attention)


def _train(student, teacher, batches, pruner, optimizer, params, base_lrs, config, outputs,
           task_loss, on_step) -> RecoverResult:
    start, losses = 0, []
    ckpt = Path(config.checkpoint) if config.checkpoint else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        if pruner is not None:
            pruner.steps_taken = state["pruner_steps"]
        start, losses = state["step"], state["losses"]
        _set_rng_state(state["rng"])
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)

    def batch_index(i: int) -> int:
        epoch, pos = divmod(i, len(batches))
        order = list(range(len(batches)))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        return order[pos]

    teacher_cache: dict[int, dict] = {}

    def teacher_outputs(k: int) -> dict:
        if k in teacher_cache:
            return teacher_cache[k]
        with torch.no_grad(), autocast:
            out = outputs(_feed(teacher, batches[k]))
        if config.cache_teacher:
            teacher_cache[k] = out
        return out

    progress = None
    if config.progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=config.steps, initial=start, desc="recover", unit="step")
    t0 = time.perf_counter()
    bf16 = config.use_bf16()
    if config.bf16 is True and not native_bf16():
        warnings.warn("bf16 autocast on a CPU without native bf16 (no AVX512-BF16/AMX) is "
                      "emulated and many times slower than fp32; use bf16='auto' or False",
                      RuntimeWarning, stacklevel=2)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    for step in range(start, config.steps):
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * _lr_factor(step, config)
        if pruner is not None and pruner.config.schedule is not None:
            pruner.step()
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(config.grad_accum):
            k = batch_index(step * config.grad_accum + micro)
            batch = batches[k]
            t_out = teacher_outputs(k)
            with autocast:
                raw = _feed(student, batch)
                loss = distill_loss(outputs(raw), t_out, config)
                if task_loss is not None:
                    loss = loss + config.task_weight * task_loss(raw, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite distillation loss at step {step}")
            (loss / config.grad_accum).backward()
            total += loss.item() / config.grad_accum
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        losses.append(total)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{total:.4f}")
        done = step + 1
        if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.steps):
            tmp = ckpt.with_suffix(ckpt.suffix + ".tmp")
            torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "pruner_steps": pruner.steps_taken if pruner is not None else 0,
                        "step": done, "losses": losses, "rng": _rng_state()}, tmp)
            os.replace(tmp, ckpt)  # never a half-written checkpoint
        if on_step is not None:
            on_step(done, total)
    if progress is not None:
        progress.close()
    return RecoverResult(steps=config.steps, losses=losses,
                         seconds=time.perf_counter() - t0, resumed_from=start)
