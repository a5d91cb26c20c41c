"""Explicit rules for blocks that torch.fx does not trace: Hugging Face BERT-style layers.

A layer matches when it has ``attention.self.{query,key,value}`` (Linear, same input),
``attention.self.attention_head_size``, ``attention.output.dense``, ``intermediate.dense``
and ``output.dense``: the layout of BERT, MiniLM, RoBERTa, ELECTRA and their relatives in
transformers. Two groups per layer:

* FFN neurons: rows of ``intermediate.dense`` and columns of ``output.dense`` (the activation
  between them is elementwise);
* attention heads: ``head_size`` rows of query, key and value per head and the matching
  columns of ``attention.output.dense``; the attention module's head count is updated.

The residual stream (hidden size) feeds LayerNorm, so it is never a group.
"""

from __future__ import annotations

from torch import nn

from .groups import Blocked, Group, Member

__all__ = ["bert_groups"]


def _linear(module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Linear) else None


def _match(layer: nn.Module):
    attn = getattr(getattr(layer, "attention", None), "self", None)
    parts = {p: _linear(layer, p) for p in ("attention.self.query", "attention.self.key",
                                            "attention.self.value", "attention.output.dense",
                                            "intermediate.dense", "output.dense")}
    if attn is None or any(v is None for v in parts.values()):
        return None
    head = getattr(attn, "attention_head_size", None)
    q, k, v = (parts[f"attention.self.{n}"] for n in ("query", "key", "value"))
    if not isinstance(head, int) or head <= 0 or q.out_features % head:
        return None
    if not (q.in_features == k.in_features == v.in_features
            and q.out_features == k.out_features == v.out_features
            == parts["attention.output.dense"].in_features
            and parts["intermediate.dense"].out_features == parts["output.dense"].in_features):
        return None
    return parts, q.out_features // head, head


def bert_groups(model: nn.Module) -> tuple[list[Group], list[Blocked]]:
    """Groups of every BERT-style layer in ``model`` (empty if none matches); every other
    Linear/Conv2d is reported as not followed."""
    groups: list[Group] = []
    covered: set[str] = set()
    for prefix, layer in model.named_modules():
        found = _match(layer)
        if found is None:
            continue
        parts, heads, head = found
        p = f"{prefix}." if prefix else ""
        ffn = parts["intermediate.dense"].out_features
        groups.append(Group(f"{p}intermediate.dense", "channel", ffn, (
            Member(f"{p}intermediate.dense", "out"), Member(f"{p}output.dense", "in"))))
        groups.append(Group(f"{p}attention.self", "head", heads, (
            Member(f"{p}attention.self.query", "out", unit=head),
            Member(f"{p}attention.self.key", "out", unit=head),
            Member(f"{p}attention.self.value", "out", unit=head),
            Member(f"{p}attention.output.dense", "in", unit=head),
            Member(f"{p}attention.self", "heads", unit=head))))
        covered.update(f"{p}{name}" for name in parts)
    if not groups:
        return [], []
    blocked = [Blocked(n, "outside the BERT-layer rule (hidden size feeds LayerNorm / the "
                          "model output)")
               for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in covered]
    return groups, blocked
