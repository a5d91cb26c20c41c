"""Structured pruning of a small residual CNN trained on sklearn's digits (8x8 images).

Conv-BN-ReLU stages with a residual add (the add joins the stem's channels and the block's
output channels into one group), max-pooling, a second stage, global average pooling and a
Linear classifier. Trained dense, then 50% of the filters of every group are removed
(:class:`sparseprune.Pruner` with ``structured=True``), the model shrunk and fine-tuned.
Reported: test accuracy (held-out 25% split), FLOPs (``torch.utils.flop_counter``),
parameters, and latency dense vs shrunk interleaved in the same process.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..pruning import PruneConfig, Pruner
from .timing import interleaved

__all__ = ["DigitsResNet", "load_digits", "train", "accuracy", "flops", "run", "table"]


class DigitsResNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        c, c2 = width, 2 * width
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                 nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(c))
        self.stage2 = nn.Sequential(nn.Conv2d(c, c2, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(c2), nn.ReLU())
        self.fc = nn.Linear(c2, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.res(x))
        x = self.stage2(nn.functional.max_pool2d(x, 2))
        return self.fc(x.mean((2, 3)))


def load_digits(seed: int = 0):
    """(train, test) tensors; a stratified 75/25 split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    tr, te = train_test_split(torch.arange(len(y)).numpy(), test_size=0.25, random_state=seed,
                              stratify=y.numpy())
    return (x[tr], y[tr]), (x[te], y[te])


def train(model, data, epochs: int, *, lr: float = 2e-3, seed: int = 0, pruner=None):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    if pruner is not None:
        pruner.lock(opt)
    x, y = data
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            j = order[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[j]), y[j]).backward()
            opt.step()
        sched.step()
    model.eval()
    return model


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


def flops(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run(*, epochs: int = 30, finetune_epochs: int = 15, sparsity: float = 0.5,
        criterion: str = "taylor", seed: int = 0, time_rounds: int = 25) -> dict:
    torch.manual_seed(seed)
    train_data, test_data = load_digits(seed)
    dense = train(DigitsResNet(), train_data, epochs, seed=seed)
    dense_acc = accuracy(dense, test_data)
    model = copy.deepcopy(dense)
    example = test_data[0][:8]
    pruner = Pruner(model, PruneConfig(pattern="channel", sparsity=sparsity, structured=True,
                                       criterion=criterion), example_inputs=example)
    if criterion in ("wanda", "taylor"):
        x, y = train_data
        calib = [x[i:i + 128] for i in range(0, len(y), 128)]
        labels = {id(b): y[i * 128:(i + 1) * 128] for i, b in enumerate(calib)}
        pruner.calibrate(calib, loss_fn=(lambda out, b: nn.functional.cross_entropy(
            out, labels[id(b)])) if criterion == "taylor" else None)
    pruner.prune()
    model.eval()
    one_shot = accuracy(model, test_data)
    pruner.shrink()
    t0 = time.perf_counter()
    train(model, train_data, finetune_epochs, lr=1e-3, seed=seed + 1)
    finetune_s = time.perf_counter() - t0
    acc = accuracy(model, test_data)
    timing = {1: None, 256: None}
    with torch.inference_mode():
        for batch in (1, 256) if time_rounds else ():
            xb = test_data[0][:batch]
            t = interleaved({"dense": lambda: dense(xb), "shrunk": lambda: model(xb)},
                            rounds=time_rounds, warmup=3)
            timing[batch] = t["dense"].median / t["shrunk"].median
    one = test_data[0][:1]
    return {"seed": seed, "criterion": criterion, "sparsity": sparsity,
            "dense_accuracy": dense_acc, "one_shot_accuracy": one_shot,
            "finetuned_accuracy": acc, "finetune_seconds": finetune_s,
            "flops_dense": flops(dense, one), "flops_shrunk": flops(model, one),
            "params_dense": _params(dense), "params_shrunk": _params(model),
            "speedup_b1": timing[1], "speedup_b256": timing[256],
            "groups": pruner.shrink_table()}



def table(results) -> str:
    lines = ["| seed | criterion | filters removed | dense acc | one-shot acc | fine-tuned acc "
             "| FLOPs (1 image) | params | speed b=1 | speed b=256 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        speed = [f"{r[k]:.2f}x" if r[k] is not None else "-"
                 for k in ("speedup_b1", "speedup_b256")]
        lines.append(
            f"| {r['seed']} | {r['criterion']} | {r['sparsity']:.0%} | "
            f"{r['dense_accuracy']:.2%} | {r['one_shot_accuracy']:.2%} | "
            f"{r['finetuned_accuracy']:.2%} | {r['flops_shrunk'] / 1e6:.2f} M of "
            f"{r['flops_dense'] / 1e6:.2f} M | {r['params_shrunk']:,} of {r['params_dense']:,} "
            f"| {speed[0]} | {speed[1]} |")
    return "\n".join(lines) + "\n"
