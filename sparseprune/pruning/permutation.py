"""Input-channel permutations that raise the magnitude N:M pruning keeps.

N:M keeps the N largest of every M consecutive input columns; which columns share a group is
an accident of the layer's input order. Reordering the columns (and the activations that
feed them, so the function is unchanged) lets large weights avoid competing in one group.

Search: the columns are split into groups of M in the current order. For every pair of
groups in a window, every swap of one column of each is scored exactly (the kept magnitude
of both groups after the swap, summed over all rows, in O(rows) per swap); the best non-overlapping improving
swaps are applied together, and this repeats until no swap in any window improves. Windows
are all groups for small layers, random sets of groups for large ones (new sets each round),
so the cost stays bounded. When no swap improves, a few random swaps are forced ("bounded
regressions", as in Apex ASP's search) and the best permutation seen is kept.

Efficacy: the share of the gap closed between plain N:M and unstructured pruning at the same
density (the unstructured kept magnitude is the upper bound any permutation can reach).
"""

from __future__ import annotations

import dataclasses
import time

import torch

__all__ = ["GroupPermutation", "PermutationResult", "carry_permutation", "permute_for_nm",
           "search_permutation", "nm_kept", "unstructured_kept"]

_CHUNK = 32 * 2**20  # values in one candidate tensor (x4 bytes)


def nm_kept(scores: torch.Tensor, n: int, m: int) -> float:
    """Total score N:M keeps on ``scores`` [rows, cols] (cols a multiple of m)."""
    g = scores.reshape(scores.shape[0], -1, m)
    return g.topk(n, dim=2).values.sum().item()


def unstructured_kept(scores: torch.Tensor, n: int, m: int) -> float:
    """Total score unstructured pruning keeps at density n/m (per row, as N:M is)."""
    k = scores.shape[1] * n // m
    return scores.topk(k, dim=1).values.sum().item()


@dataclasses.dataclass(frozen=True)
class PermutationResult:
    perm: torch.Tensor     # new column j is old column perm[j]
    plain: float           # kept score of N:M in the original order
    permuted: float        # ... after the permutation
    upper: float           # ... of unstructured pruning at the same density
    seconds: float
    rounds: int

    @property
    def efficacy(self) -> float:
        gap = self.upper - self.plain
        return (self.permuted - self.plain) / gap if gap > 0 else 0.0


def _swap_gains(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """w: [windows, rows, k*m] (k groups of m). Returns gains [windows, k*m, k*m]: the change
    in kept score when columns i and j (in different groups) trade places.

    With i taken out, its group keeps ``rest`` (m-1 values); adding value v keeps
    ``S_n(rest) + max(0, v - r_n(rest))`` (S_n: sum of the n largest, r_n: the n-th largest),
    so a swap costs one subtraction and a max per row instead of a top-n."""
    nw, rows, c = w.shape
    k = c // m
    groups = w.reshape(nw, rows, k, m)
    old = groups.topk(n, dim=3).values.sum(3).sum(1)                   # [nw, k]
    idx = torch.arange(c)
    others = torch.stack([torch.cat([torch.arange(m)[:s], torch.arange(m)[s + 1:]])
                          for s in range(m)])                          # [m, m-1]
    gvals = groups[:, :, idx // m]                                     # [nw, rows, c, m]
    rest = gvals.gather(3, others[idx % m][None, None].expand(nw, rows, c, m - 1))
    top = rest.topk(n, dim=3).values                                   # [nw, rows, c, n]
    s_n = top.sum(3).sum(1)                                            # [nw, c]
    r_n = top[..., n - 1]                                              # [nw, rows, c]
    # gain_in[i, j]: column j joins i's group (without i)
    gain_in = (w[:, :, None, :] - r_n[:, :, :, None]).clamp_(min=0).sum(1) + s_n[:, :, None]
    g = gain_in + gain_in.transpose(1, 2)
    g -= old[:, idx // m][:, :, None] + old[:, idx // m][:, None, :]
    same = (idx[:, None] // m) == (idx[None, :] // m)
    return g.masked_fill_(same, float("-inf"))


def _apply_best(perm: torch.Tensor, windows: torch.Tensor, gains: torch.Tensor, m: int,
                eps: float) -> int:
    """Applies, per window, the best improving swaps that touch disjoint groups."""
    applied = 0
    c = gains.shape[1]
    for wi in range(gains.shape[0]):
        g = gains[wi]
        flat = g.flatten()
        vals, order = flat.sort(descending=True)
        used: set[int] = set()
        cols = windows[wi]
        for v, o in zip(vals.tolist(), order.tolist()):
            if v <= eps:
                break
            i, j = divmod(o, c)
            gi, gj = i // m, j // m
            if gi in used or gj in used:
                continue
            used.update((gi, gj))
            a, b = cols[i].item(), cols[j].item()
            perm[a], perm[b] = perm[b].clone(), perm[a].clone()
            applied += 1
            if len(used) >= c // m - 1:
                break
    return applied


def search_permutation(scores: torch.Tensor, n: int, m: int, *, time_budget: float = 30.0,
                       window_groups: int | None = None, max_rounds: int = 10_000,
                       regressions: int = 100, seed: int = 0) -> PermutationResult:
    """Searches a column permutation of ``scores`` [rows, cols] (e.g. ``|W|``, or Wanda
    scores) that raises the score N:M pruning keeps. ``cols`` must be a multiple of ``m``.
    Stops when no swap improves after ``regressions`` perturbations, after ``max_rounds``
    rounds, or after ``time_budget`` seconds."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [rows, cols], got shape {tuple(scores.shape)}")
    if not 1 <= n < m:
        raise ValueError(f"need 1 <= n < m, got {n}:{m}")
    rows, cols = scores.shape
    if cols % m or cols < 2 * m:
        raise ValueError(f"columns ({cols}) must be a multiple of m={m} with at least two "
                         f"groups")
    t0 = time.perf_counter()
    s = scores.detach().abs().to(torch.float32).cpu()
    groups = cols // m
    if window_groups is None:  # every group pair while that is cheap, else windows of 8
        window_groups = groups if rows * cols * cols <= _CHUNK else min(groups, 8)
    if not 2 <= window_groups <= groups:
        raise ValueError(f"window_groups must be in [2, {groups}], got {window_groups}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(cols)
    plain = nm_kept(s, n, m)
    best_perm, best = perm.clone(), plain
    stale, rounds = 0, 0
    eps = 1e-6 * max(plain, 1.0) / max(groups, 1)
    while rounds < max_rounds and time.perf_counter() - t0 < time_budget:
        rounds += 1
        if window_groups >= groups:
            order = torch.arange(groups)[None]
        else:
            order = torch.randperm(groups, generator=gen)
            usable = groups - groups % window_groups
            order = order[:usable].reshape(-1, window_groups)
        windows = (order[:, :, None] * m + torch.arange(m)).reshape(order.shape[0], -1)
        w = s[:, perm][:, windows].permute(1, 0, 2)                # [nw, rows, k*m]
        c = windows.shape[1]
        step = max(1, _CHUNK // (rows * c * c))
        gains = torch.cat([_swap_gains(w[i:i + step], n, m) for i in range(0, len(w), step)])
        applied = _apply_best(perm, windows, gains, m, eps)
        if applied:
            kept = nm_kept(s[:, perm], n, m)
            if kept > best + eps:
                best, best_perm, stale = kept, perm.clone(), 0
            continue
        if window_groups < groups and stale < 3:  # other windows may still improve
            stale += 1
            continue
        if regressions <= 0:
            break
        regressions -= 1
        stale = 0
        perm = best_perm.clone()
        for _ in range(max(1, groups // 8)):  # a few random swaps between groups
            a, b = torch.randint(cols, (2,), generator=gen).tolist()
            if a // m != b // m:
                perm[a], perm[b] = perm[b].clone(), perm[a].clone()
    return PermutationResult(best_perm, plain, best, unstructured_kept(s, n, m),
                             time.perf_counter() - t0, rounds)


@dataclasses.dataclass(frozen=True)
class GroupPermutation:
    """What :func:`permute_for_nm` did to one channel group."""

    group: str
    consumers: tuple[str, ...]
    channels: int
    result: PermutationResult
    applied: bool


def _linear_consumers(group, modules, m: int):
    """The group's consumers if all are Linear columns the N:M groups align with, else the
    reason it cannot be permuted."""
    from torch import nn

    if group.kind != "channel":
        return None, "attention heads: a permutation across heads changes the function"
    cons = group.consumers
    if not cons:
        return None, "no layer reads these channels"
    for c in cons:
        if not isinstance(modules[c.module], nn.Linear) or c.unit != 1:
            return None, (f"{c.module!r} reads them as a Conv2d or through a flatten; only "
                          f"Linear inputs are permuted")
        if c.offset % m or group.size % m or group.size < 2 * m:
            return None, f"{group.size} channels at column {c.offset} do not align with M={m}"
    return cons, None


def _permute_input(module, args):
    perm = module._buffers.get("input_perm")
    if perm is None or not args:
        return None
    return (args[0].index_select(-1, perm), *args[1:])


def carry_permutation(linear, perm: torch.Tensor) -> None:
    """Reorders the columns of ``linear`` (new column j = old column perm[j]) and makes it
    gather its input the same way (buffer ``input_perm`` + a forward pre-hook), so its
    output is unchanged. :class:`~sparseprune.SparseLinear` ``.from_linear`` keeps the
    gather; ``sp.save``/``sp.load`` store it."""
    from torch import nn

    from ..nn import check_permutation

    if not isinstance(linear, nn.Linear):
        raise TypeError(f"carry_permutation needs an nn.Linear, got {type(linear).__name__}")
    perm = check_permutation(perm, linear.in_features, "perm").to(linear.weight.device)
    with torch.no_grad():
        linear.weight.copy_(linear.weight[:, perm])
    old = linear._buffers.get("input_perm")
    linear.register_buffer("input_perm", perm if old is None else old[perm])
    if _permute_input not in linear._forward_pre_hooks.values():
        linear.register_forward_pre_hook(_permute_input)


def permute_for_nm(model, n: int, m: int, *, example_inputs=None, include=None,
                   exclude=None, scores=None, time_budget: float = 10.0, carry: bool = True,
                   seed: int = 0) -> tuple[list[GroupPermutation], list[tuple[str, str]]]:
    """Reorders the channels between layers so that N:M pruning of the layers that read them
    keeps more: for every channel group (:func:`sparseprune.structured.find_groups`) read by
    Linear layers, a permutation is searched on the readers' stacked weights (or on
    ``scores(name, module)`` -> ``[out, in]``, e.g. Wanda scores) and applied to the producers'
    rows, BatchNorms and the readers' columns, so the model computes exactly what it did.
    ``include``/``exclude`` are globs on the reading layers' names. Selected Linear layers
    whose inputs are no such group (they read a LayerNorm output, the model's input, or
    attention heads) get their own permutation carried into the layer when ``carry`` is
    True (:func:`carry_permutation`: one gather of the input per call); else they are
    skipped. Returns what was done (groups and carried layers; a carried layer's entry has
    ``group`` = its name and ``consumers`` = (its name,)), and the (layer, reason) of
    skipped layers. Run it before :class:`~sparseprune.Pruner` with an N:M pattern."""
    from torch import nn

    from ..structured import find_groups, permute
    from .config import selects

    def selected(name: str) -> bool:
        return selects(name, include, exclude)

    if not 1 <= n < m:
        raise ValueError(f"need 1 <= n < m, got {n}:{m}")
    found = find_groups(model, example_inputs)
    modules = dict(model.named_modules())
    done, covered = [], set()
    reasons: dict[str, str] = {}
    for g in found.groups:
        cons, why = _linear_consumers(g, modules, m)
        names = [c.module for c in g.consumers]
        if not any(selected(c) for c in names):
            continue
        if cons is None:
            for c in names:
                reasons.setdefault(c, why)
            continue
        parts = []
        for c in cons:
            mod = modules[c.module]
            s = scores(c.module, mod) if scores is not None else mod.weight
            parts.append(s.detach().abs().float()[:, c.offset:c.offset + g.size])
        res = search_permutation(torch.cat(parts), n, m, time_budget=time_budget, seed=seed)
        applied = res.permuted > res.plain
        if applied:
            with torch.no_grad():
                permute(model, g, res.perm)
        done.append(GroupPermutation(g.name, tuple(names), g.size, res, applied))
        covered.update(names)
    skipped = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or not selected(name) or name in covered:
            continue
        if carry and mod.in_features % m == 0 and mod.in_features >= 2 * m:
            s = scores(name, mod) if scores is not None else mod.weight
            res = search_permutation(s.detach().abs().float(), n, m, time_budget=time_budget,
                                     seed=seed)
            applied = res.permuted > res.plain
            if applied:
                carry_permutation(mod, res.perm)
            done.append(GroupPermutation(name, (name,), mod.in_features, res, applied))
            continue
        skipped.append((name, reasons.get(name, "its input channels are not a permutable "
                                                "group (normalized, the model's input, or "
                                                "not followed)")))
    return done, skipped
