"""Real-data check of the pruning engine: a small CNN on sklearn's digits (8x8 images).

Trains the CNN dense, then from that same dense model prunes with several recipes and
reports test accuracy (held-out 25% split). The headline recipe is 90% unstructured on a
cubic schedule with fine-tuning (masks locked), which issue 3 asks to land within 1 point
of dense. Every number is measured here; run:

    nice -n 15 .venv/bin/python benchmarks/prune_digits.py

Needs scikit-learn (in the Makefile's DEPS).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
from torch import nn

import sparseprune as sp


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def load(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    idx = torch.arange(len(y))
    tr, te = train_test_split(idx.numpy(), test_size=0.25, random_state=seed, stratify=y.numpy())
    return (x[tr], y[tr]), (x[te], y[te])


def batches(data, batch_size, gen):
    x, y = data
    order = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch_size):
        j = order[i:i + batch_size]
        yield x[j], y[j]


def accuracy(model, data) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(data[0]).argmax(1) == data[1]).float().mean().item()
    model.train()
    return 100.0 * acc


def train(model, data, epochs, lr, gen, pruner=None, optimizer=None):
    """Plain Adam training; with a pruner, masks locked and ``pruner.step()`` each step."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    if pruner is not None:
        pruner.lock(opt)
    for _ in range(epochs):
        for xb, yb in batches(data, 64, gen):
            if pruner is not None and pruner.config.schedule is not None:
                pruner.step()
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


def prune_one_shot(dense, cfg, calib, finetune_epochs, data, gen):
    model = copy.deepcopy(dense)
    pruner = sp.Pruner(model, cfg)
    if cfg.criterion != "magnitude":
        # The model takes images only; Taylor's loss looks each batch's labels up in order.
        labels = iter([yb for _, yb in calib])
        loss_fn = ((lambda out, xb: nn.functional.cross_entropy(out, next(labels)))
                   if cfg.criterion == "taylor" else None)
        pruner.calibrate([xb for xb, _ in calib], loss_fn=loss_fn)
    pruner.prune()
    if finetune_epochs:
        train(model, data, finetune_epochs, 1e-3, gen, pruner=pruner)
    return pruner


def run_seed(seed: int, args) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_set, test_set = load(seed)
    dense = train(DigitsCNN(), train_set, args.epochs, 1e-3, gen)
    res = {"dense": accuracy(dense, test_set)}
    # Control: the pruned runs train longer than dense did; so does this dense copy.
    longer = train(copy.deepcopy(dense), train_set, args.ramp_epochs + args.ft_epochs, 1e-3, gen)
    res["dense, trained as long as gradual"] = accuracy(longer, test_set)
    calib = list(batches(train_set, 128, torch.Generator().manual_seed(seed)))[:4]

    # Headline: 90% unstructured, cubic schedule during fine-tuning, then more fine-tuning.
    steps_per_epoch = -(-len(train_set[1]) // 64)
    sched = sp.CubicSchedule(start=0, end=args.ramp_epochs * steps_per_epoch,
                             frequency=steps_per_epoch // 2)
    model = copy.deepcopy(dense)
    pruner = sp.Pruner(model, sp.PruneConfig(sparsity=0.9, schedule=sched, scope=args.scope))
    train(model, train_set, args.ramp_epochs + args.ft_epochs, 1e-3, gen, pruner=pruner)
    res["gradual 90% + FT"] = accuracy(model, test_set)
    res["_gradual_table"] = pruner.report_table()
    res["_gradual_sparsity"] = sum(r.zeros for r in pruner.report()) / sum(
        r.numel for r in pruner.report())

    block_cfg = dict(pattern="block:16x16", sparsity=0.8, include=["conv2", "fc1"])
    recipes = {
        "one-shot 90% magnitude": (sp.PruneConfig(sparsity=0.9), 0),
        "one-shot 90% wanda": (sp.PruneConfig(sparsity=0.9, criterion="wanda"), 0),
        "one-shot 90% taylor": (sp.PruneConfig(sparsity=0.9, criterion="taylor"), 0),
        "one-shot 90% + FT": (sp.PruneConfig(sparsity=0.9), args.ft_epochs),
        "2:4 one-shot": (sp.PruneConfig(pattern="2:4"), 0),
        "2:4 + FT": (sp.PruneConfig(pattern="2:4"), args.ft_epochs),
        "16x16 blocks 80% one-shot": (sp.PruneConfig(**block_cfg), 0),
        "16x16 blocks 80% + FT": (sp.PruneConfig(**block_cfg), args.ft_epochs),
    }
    for name, (cfg, ft) in recipes.items():
        p = prune_one_shot(dense, cfg, calib, ft, train_set, gen)
        res[name] = accuracy(p.model, test_set)
        if name.startswith("16x16") and ft:
            res["_block_table"] = p.report_table()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=30, help="dense training epochs")
    ap.add_argument("--ramp-epochs", type=int, default=30, help="epochs of the cubic ramp")
    ap.add_argument("--ft-epochs", type=int, default=30, help="fine-tuning epochs after pruning")
    ap.add_argument("--scope", choices=["layer", "global"], default="layer",
                    help="scope of the gradual 90%% run")
    ap.add_argument("--json", help="also write the per-seed results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    runs = [run_seed(s, args) for s in args.seeds]
    keys = [k for k in runs[0] if not k.startswith("_")]
    print(f"# digits CNN pruning; seeds {args.seeds}; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}; {time.time() - t0:.0f} s\n")
    print("| recipe | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | mean - dense |")
    print("|---|" + "---|" * (len(args.seeds) + 2))
    dense_mean = statistics.mean(r["dense"] for r in runs)
    for k in keys:
        vals = [r[k] for r in runs]
        m = statistics.mean(vals)
        print(f"| {k} | " + " | ".join(f"{v:.2f}" for v in vals)
              + f" | {m:.2f} | {m - dense_mean:+.2f} |")
    overall = ", ".join(f"{r['_gradual_sparsity']:.2%}" for r in runs)
    print(f"\ngradual run, overall sparsity of the pruned layers per seed: {overall}")
    print("\nper-layer report, gradual 90%, seed", args.seeds[0])
    print(runs[0]["_gradual_table"])
    print("\nper-layer report, 16x16 blocks 80% + FT, seed", args.seeds[0])
    print(runs[0]["_block_table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
