"""Channel dependency groups of a model that torch.fx traces.

The traced graph is run once on example inputs (``ShapeProp``) so every tensor has a shape.
Each tensor then carries a channel *layout*: its channel dimension and the segments
``(space, channels, unit)`` that dimension is made of. A Linear or Conv2d starts a new space
(its output channels) and is recorded as a consumer of the spaces it reads; elementwise
ops join the spaces of their operands (a residual sum makes one group of every branch);
flatten multiplies the unit; cat along the channel dimension concatenates segments.
Anything else (an unknown op or module, LayerNorm/GroupNorm, grouped convs, reshapes that
split channels, the model's inputs and outputs) blocks the spaces it touches: blocked
channels are never removed, and the Linear/Conv2d that produce them are reported.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .groups import Blocked, Group, Member

__all__ = ["traced_groups"]

_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU,
                        nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.ELU, nn.Mish, nn.Dropout,
                        nn.Dropout1d, nn.Dropout2d, nn.Identity)
_SPATIAL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_, F.relu6, F.gelu, F.silu,
                          F.leaky_relu, F.hardswish, F.hardsigmoid, F.elu, F.mish, F.dropout,
                          torch.tanh, torch.sigmoid, F.sigmoid, F.tanh, torch.abs, torch.neg,
                          operator.neg, torch.clamp, torch.clip}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "abs", "neg", "contiguous", "clone",
                        "detach", "float", "to", "type_as", "clamp", "clip", "clamp_", "gelu"}
_SPATIAL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                      torch.max_pool2d}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
           operator.isub, operator.imul, torch.add, torch.sub, torch.mul, torch.div,
           torch.maximum, torch.minimum}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
_REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


class _Spaces:
    """Union-find over channel spaces, each with its members and a block reason."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: list[list[Member]] = []
        self.reason: list[str | None] = []
        self.order: list[int] = []

    def new(self, size: int, reason: str | None = None) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(size)
        self.members.append([])
        self.reason.append(reason)
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def block(self, i: int, reason: str) -> None:
        r = self.find(i)
        if self.reason[r] is None:
            self.reason[r] = reason

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.block(ra, "joined with a space of another size")
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra] += self.members[rb]
        self.reason[ra] = self.reason[ra] or self.reason[rb]

    def add(self, i: int, member: Member) -> None:
        self.members[self.find(i)].append(member)


class _Layout:
    """The channel dimension ``dim`` of a tensor of rank ``rank`` and its segments
    ``[(space, channels, unit)]``."""

    __slots__ = ("dim", "rank", "segs")

    def __init__(self, dim: int, rank: int, segs: Sequence[tuple[int, int, int]]):
        self.dim, self.rank, self.segs = dim, rank, tuple(segs)

    def width(self) -> int:
        return sum(n * u for _, n, u in self.segs)

    def moved(self, dim: int, rank: int, unit_scale: int = 1) -> _Layout:
        return _Layout(dim, rank, [(s, n, u * unit_scale) for s, n, u in self.segs])


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


class _Walker:
    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.spaces = _Spaces()
        self.layouts: dict[torch.fx.Node, _Layout] = {}
        self.out_space: dict[str, int] = {}
        self.in_segs: dict[str, tuple] = {}
        self.calls: dict[str, int] = {}

    # ---------------------------------------------------------------- helpers
    def block_node(self, node, reason: str) -> None:
        if isinstance(node, torch.fx.Node) and node in self.layouts:
            for s, _, _ in self.layouts[node].segs:
                self.spaces.block(s, reason)

    def block_args(self, node: torch.fx.Node, reason: str) -> None:
        torch.fx.node.map_arg((node.args, node.kwargs), lambda a: self.block_node(a, reason))

    def join(self, a: _Layout, b: _Layout, reason: str) -> bool:
        shape_a = [(n, u) for _, n, u in a.segs]
        if shape_a != [(n, u) for _, n, u in b.segs]:
            for layout in (a, b):
                for s, _, _ in layout.segs:
                    self.spaces.block(s, reason)
            return False
        for (sa, _, _), (sb, _, _) in zip(a.segs, b.segs):
            self.spaces.union(sa, sb)
        return True

    def fresh(self, node, size: int, dim: int, reason: str | None = None) -> int:
        shape = _shape(node)
        space = self.spaces.new(size, reason)
        if shape is not None:
            self.layouts[node] = _Layout(dim % len(shape), len(shape), [(space, size, 1)])
        return space

    # ---------------------------------------------------------------- main loop
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if shape:
                    dim = 1 if len(shape) == 4 else len(shape) - 1
                    self.fresh(node, shape[dim], dim, "a model input")
            elif node.op == "output":
                self.block_args(node, "reaches the model output")
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)

    def call_module(self, node) -> None:
        name, mod = node.target, self.modules[node.target]
        x = node.args[0] if node.args else None
        lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
        self.calls[name] = self.calls.get(name, 0) + 1
        if isinstance(mod, nn.Linear):
            self.consume(node, name, lay, last=True, width=mod.in_features, unit_ok=True)
            self.produce(node, name, mod.out_features, -1)
        elif isinstance(mod, nn.Conv2d):
            depthwise = mod.groups == mod.in_channels == mod.out_channels and mod.groups > 1
            if depthwise and lay is not None and lay.dim == 1 and lay.rank == 4:
                for seg_off, (s, n, u) in self._offsets(lay):
                    self.spaces.add(s, Member(name, "through", seg_off, u))
                self.layouts[node] = lay
                self._track_through(name, lay)
            elif mod.groups != 1:
                self.block_node(x, f"read by grouped conv {name!r}")
                self.fresh(node, mod.out_channels, 1, f"made by grouped conv {name!r}")
            else:
                self.consume(node, name, lay, last=False, width=mod.in_channels, unit_ok=False)
                self.produce(node, name, mod.out_channels, 1)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if lay is not None and lay.dim == 1 and lay.width() == mod.num_features:
                for seg_off, (s, n, u) in self._offsets(lay):
                    self.spaces.add(s, Member(name, "through", seg_off, u))
                self.layouts[node] = lay
                self._track_through(name, lay)
            else:
                self.block_node(x, f"normalized by {name!r} on another dimension")
        elif isinstance(mod, _ELEMENTWISE_MODULES):
            self.passthrough(node, x)
        elif isinstance(mod, _SPATIAL_MODULES):
            if lay is not None and lay.dim == 1 and lay.rank == 4:
                self.passthrough(node, x)
            else:
                self.block_node(x, f"pooled by {name!r} across channels")
        elif isinstance(mod, nn.Flatten):
            self.flatten(node, x, mod.start_dim, mod.end_dim)
        elif isinstance(mod, nn.Softmax):
            if lay is not None and mod.dim is not None and mod.dim % lay.rank != lay.dim:
                self.passthrough(node, x)
            else:
                self.block_node(x, f"softmax {name!r} across channels")
        else:
            self.block_args(node, f"read by {type(mod).__name__} {name!r}, which the graph "
                                  f"cannot follow")

    def _track_through(self, name: str, lay: _Layout) -> None:
        if self.calls[name] > 1:
            self.block_node_layout(lay, f"{name!r} is called more than once")

    def block_node_layout(self, lay: _Layout, reason: str) -> None:
        for s, _, _ in lay.segs:
            self.spaces.block(s, reason)

    @staticmethod
    def _offsets(lay: _Layout):
        off = 0
        for s, n, u in lay.segs:
            yield off, (s, n, u)
            off += n * u

    def consume(self, node, name, lay, *, last: bool, width: int, unit_ok: bool) -> None:
        if lay is None:
            return
        want_dim = lay.rank - 1 if last else 1
        if lay.dim != want_dim or lay.width() != width or (not last and lay.rank != 4) or \
                (not unit_ok and any(u != 1 for _, _, u in lay.segs)):
            self.block_node_layout(lay, f"read by {name!r} along another dimension")
            return
        if name in self.in_segs:  # shared module: every call reads the same columns
            self.join(self.in_segs[name], lay, f"{name!r} reads differently shaped inputs")
            return
        self.in_segs[name] = lay
        for off, (s, n, u) in self._offsets(lay):
            self.spaces.add(s, Member(name, "in", off, u))

    def produce(self, node, name, size: int, dim: int) -> None:
        space = self.fresh(node, size, dim)
        if name in self.out_space:
            self.spaces.union(self.out_space[name], space)
        else:
            self.out_space[name] = space
            self.spaces.add(space, Member(name, "out"))

    def passthrough(self, node, x) -> None:
        lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
        shape = _shape(node)
        if lay is None:
            return
        if shape is None or len(shape) != lay.rank:
            self.block_node_layout(lay, f"changed shape by {node.target}")
            return
        self.layouts[node] = lay

    def flatten(self, node, x, start: int, end: int) -> None:
        lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
        if lay is None:
            return
        in_shape, out_shape = _shape(x), _shape(node)
        if in_shape is None or out_shape is None:
            self.block_node_layout(lay, "flatten of unknown shape")
            return
        start, end = start % lay.rank, end % lay.rank
        if end < lay.dim:
            self.layouts[node] = lay.moved(lay.dim - (end - start), len(out_shape))
        elif start > lay.dim:
            self.layouts[node] = lay.moved(lay.dim, len(out_shape))
        elif start == lay.dim:
            scale = math.prod(in_shape[lay.dim + 1:end + 1])
            self.layouts[node] = lay.moved(lay.dim, len(out_shape), scale)
        else:
            self.block_node_layout(lay, "flattened together with a dimension before it")

    def reshape(self, node, x) -> None:
        lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
        if lay is None:
            return
        a, b = _shape(x), _shape(node)
        d = lay.dim
        if a is None or b is None or tuple(a[:d]) != tuple(b[:d]) or len(b) <= d:
            self.block_node_layout(lay, "reshaped across the channel dimension")
            return
        if b[d] == a[d] and math.prod(b[d:]) == math.prod(a[d:]):
            self.layouts[node] = lay.moved(d, len(b))
            return
        for k in range(d + 1, len(a) + 1):  # b[d] merges a[d:k] into one dimension
            if b[d] == math.prod(a[d:k]) and tuple(b[d + 1:]) == tuple(a[k:]):
                self.layouts[node] = lay.moved(d, len(b), math.prod(a[d + 1:k]))
                return
        self.block_node_layout(lay, "reshaped across the channel dimension")

    def binary(self, node, a, b) -> None:
        out = _shape(node)
        las = [(arg, self.layouts.get(arg)) for arg in (a, b) if isinstance(arg, torch.fx.Node)]
        tracked = [(arg, lay) for arg, lay in las if lay is not None]
        if not tracked:
            return
        if out is None:
            for _, lay in tracked:
                self.block_node_layout(lay, f"{node.target} of unknown shape")
            return
        first = tracked[0][1]
        out_dim = first.dim + len(out) - first.rank
        for arg, lay in las:
            if lay is None:
                shape = _shape(arg)
                if shape is not None:
                    pos = out_dim - (len(out) - len(shape))
                    if 0 <= pos < len(shape) and shape[pos] != 1:
                        for _, t in tracked:
                            self.block_node_layout(t, f"combined with an untracked "
                                                      f"channel-shaped tensor by {node.target}")
                        return
        if len(tracked) == 2:
            second = tracked[1][1]
            if second.dim + len(out) - second.rank != out_dim:
                for _, lay in tracked:
                    self.block_node_layout(lay, f"{node.target} of mismatched layouts")
                return
            if not self.join(first, second, f"{node.target} of differently split channels"):
                return
        self.layouts[node] = first.moved(out_dim, len(out))

    def reduce(self, node, x, dims, keepdim: bool) -> None:
        lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
        if lay is None:
            return
        if dims is None:
            self.block_node_layout(lay, "reduced over every dimension")
            return
        dims = [d % lay.rank for d in ((dims,) if isinstance(dims, int) else dims)]
        if lay.dim in dims:
            self.block_node_layout(lay, "reduced over the channel dimension")
            return
        new_dim = lay.dim if keepdim else lay.dim - sum(d < lay.dim for d in dims)
        self.layouts[node] = lay.moved(new_dim, lay.rank if keepdim else lay.rank - len(dims))

    def cat(self, node, tensors, dim: int) -> None:
        lays = [self.layouts.get(t) if isinstance(t, torch.fx.Node) else None for t in tensors]
        if all(lay is None for lay in lays):
            return
        if any(lay is None for lay in lays):
            for lay in lays:
                if lay is not None:
                    self.block_node_layout(lay, "concatenated with an untracked tensor")
            return
        rank = lays[0].rank
        dim = dim % rank
        if all(lay.dim == dim for lay in lays):
            segs = [seg for lay in lays for seg in lay.segs]
            self.layouts[node] = _Layout(dim, rank, segs)
        elif all(lay.dim == lays[0].dim for lay in lays) and all(
                self.join(lays[0], lay, "concatenated with differently split channels")
                for lay in lays[1:]):
            self.layouts[node] = lays[0]
        else:
            for lay in lays:
                self.block_node_layout(lay, "concatenated along mismatched dimensions")

    def call_function(self, node) -> None:
        t, args, kw = node.target, node.args, node.kwargs
        method = node.op == "call_method"
        x = args[0] if args else None
        if (not method and t in _ELEMENTWISE_FUNCTIONS) or (method and t in _ELEMENTWISE_METHODS):
            self.passthrough(node, x)
        elif not method and t in _SPATIAL_FUNCTIONS:
            lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
            if lay is not None and lay.dim == 1 and lay.rank == 4:
                self.passthrough(node, x)
            else:
                self.block_node(x, f"pooled by {getattr(t, '__name__', t)} across channels")
        elif (not method and t in _BINARY) or (method and t in _BINARY_METHODS):
            self.binary(node, x, args[1] if len(args) > 1 else kw.get("other"))
        elif (not method and t is torch.flatten) or (method and t == "flatten"):
            start = args[1] if len(args) > 1 else kw.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kw.get("end_dim", -1)
            self.flatten(node, x, start, end)
        elif (not method and t is torch.reshape) or (method and t in ("view", "reshape")):
            self.reshape(node, x)
        elif (not method and t in _REDUCE) or (method and t in _REDUCE_METHODS):
            dims = args[1] if len(args) > 1 else kw.get("dim")
            keep = args[2] if len(args) > 2 else kw.get("keepdim", False)
            self.reduce(node, x, dims, bool(keep))
        elif not method and t is torch.cat:
            dim = args[1] if len(args) > 1 else kw.get("dim", 0)
            self.cat(node, list(x), dim)
        elif (not method and t in (F.softmax, torch.softmax)) or (method and t == "softmax"):
            dim = args[1] if len(args) > 1 else kw.get("dim")
            lay = self.layouts.get(x) if isinstance(x, torch.fx.Node) else None
            if lay is not None and dim is not None and dim % lay.rank != lay.dim:
                self.passthrough(node, x)
            else:
                self.block_node(x, "softmax across channels")
        elif (method and t in ("size", "dim")) or (not method and t is getattr):
            return
        else:
            name = getattr(t, "__name__", str(t))
            self.block_args(node, f"read by {name}, which the graph cannot follow")


def traced_groups(model: nn.Module, example_inputs: tuple) -> tuple[list[Group], list[Blocked]]:
    """Groups of ``model`` from its torch.fx graph; ValueError when it does not trace."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, ...)
        raise ValueError(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: "
                         f"{exc}) and no explicit rule matches it; structured pruning needs "
                         f"one of them") from exc
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    walker = _Walker(gm)
    walker.run()
    spaces = walker.spaces
    roots: dict[int, list[Member]] = {}
    for i in range(len(spaces.parent)):
        r = spaces.find(i)
        roots.setdefault(r, spaces.members[r])
    groups, blocked = [], []
    reached = set()
    for r, members in roots.items():
        unique = list(dict.fromkeys(members))
        producers = [m for m in unique if m.role == "out"]
        reached.update(m.module for m in producers)
        reason = spaces.reason[r]
        if reason is not None:
            blocked += [Blocked(m.module, reason) for m in producers]
        elif producers and spaces.size[r] > 1:
            groups.append(Group(producers[0].module, "channel", spaces.size[r], tuple(unique)))
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and name not in reached:
            blocked.append(Blocked(name, "not reached by the traced graph (inside a module "
                                         "the graph cannot follow, or unused)"))
    return groups, blocked
