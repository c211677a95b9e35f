"""Layer groups of an architecture, found from its structure rather than from names of one model.

Groups, from the input up: `embeddings` (base-model parameters before the blocks, and parameters the
blocks share, such as MPNet's relative attention bias), `layer.0` ... `layer.{N-1}` (the repeated blocks:
the largest ModuleList of same-class modules), and `head` (everything above the last block: pooler, final
norm, the task head trained from scratch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn


@dataclass
class LayerGroups:
    order: list[str]                 # input -> output
    params: dict[str, list[str]]     # group -> parameter names
    blocks_prefix: str               # e.g. "bert.encoder.layer"

    def group_of(self) -> dict[str, str]:
        return {p: g for g, names in self.params.items() for p in names}

    @property
    def num_blocks(self) -> int:
        return sum(g.startswith("layer.") for g in self.order)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best, best_size = None, -1
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    if best is None:
        raise ValueError(f"{type(model).__name__}: found no stack of repeated blocks (an nn.ModuleList of same-class layers)")
    return best


def find_layer_groups(model: nn.Module) -> LayerGroups:
    prefix, blocks = find_blocks(model)
    n = len(blocks)
    # Inside an encoder wrapper (bert.encoder, mpnet.encoder, deberta.encoder), a parameter beside the block
    # list is shared by the blocks (relative position tables); it is input-side, not head. When the blocks
    # sit directly in the base model (GPT-2, Llama), what follows them is the final norm: head.
    parent = prefix.rsplit(".", 1)[0] if "." in prefix else ""
    base_prefix = getattr(model, "base_model_prefix", "")
    shared_prefix = parent + "." if parent and parent != base_prefix else None
    params: dict[str, list[str]] = {"embeddings": [], **{f"layer.{i}": [] for i in range(n)}, "head": []}
    seen_blocks = False
    for name, _ in model.named_parameters():
        if name.startswith(prefix + "."):
            index = int(name[len(prefix) + 1:].split(".", 1)[0])
            params[f"layer.{index}"].append(name)
            seen_blocks = True
        elif not seen_blocks or (shared_prefix and name.startswith(shared_prefix)):
            params["embeddings"].append(name)
        else:
            params["head"].append(name)
    order = [g for g in params if params[g]]
    return LayerGroups(order=order, params={g: params[g] for g in order}, blocks_prefix=prefix)
