"""Seeded end-to-end run on real data (sklearn digits), small enough for the suite.

The full experiment, with more seeds, epochs and recipes, is benchmarks/prune_digits.py.
"""

import copy

import pytest
import torch
from torch import nn

import sparseprune as sp

datasets = pytest.importorskip("sklearn.datasets")


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _data():
    x, y = datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1350], perm[1350:]
    return (x[tr], y[tr]), (x[te], y[te])


def _train(model, data, epochs, gen, pruner=None):
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    if pruner is not None:
        pruner.lock(opt)
    x, y = data
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            j = order[i:i + 64]
            if pruner is not None:
                pruner.step()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[j]), y[j]).backward()
            opt.step()


def _accuracy(model, data):
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on two busy ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_digits_gradual_90_percent_recovers_what_one_shot_loses(one_thread):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train, test = _data()
    dense = TinyCNN()
    _train(dense, train, 12, gen)
    dense_acc = _accuracy(dense, test)
    assert dense_acc > 0.93

    one_shot = copy.deepcopy(dense)
    sp.Pruner(one_shot, sp.PruneConfig(sparsity=0.9, scope="global")).prune()
    one_shot_acc = _accuracy(one_shot, test)

    model = copy.deepcopy(dense)
    steps = 22  # batches per epoch
    pruner = sp.Pruner(model, sp.PruneConfig(
        sparsity=0.9, scope="global",
        schedule=sp.CubicSchedule(start=0, end=8 * steps, frequency=steps // 2)))
    _train(model, train, 20, gen, pruner=pruner)
    gradual_acc = _accuracy(model, test)
    final = sp.pruning.remove_masks(copy.deepcopy(model))

    rows = pruner.report()
    assert sum(r.zeros for r in rows) == round(0.9 * sum(r.numel for r in rows))
    assert _accuracy(final, test) == gradual_acc  # baked weights compute the same
    assert one_shot_acc < dense_acc - 0.2  # 90% one-shot hurts on this net ...
    assert gradual_acc > dense_acc - 0.015  # ... the schedule with fine-tuning recovers
