"""A smaller student cut from a bigger model: keep some of its transformer blocks (DistilBERT-style).

The blocks are the architecture's largest stack of same-class layers (as for layer groups), so this works on
encoders and decoders alike. The kept blocks keep their trained weights; embeddings and head are unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from ..errors import RecipeError
from .layers import find_blocks


def select_layers(num_blocks: int, every: Optional[int] = None, keep: Optional[list[int]] = None) -> list[int]:
    """Which blocks a student keeps: `keep` as given, or one in every `every` from the first (0, k, 2k, ...),
    as DistilBERT was initialized from BERT by taking one layer out of two."""
    if keep is not None:
        outside = [i for i in keep if i >= num_blocks]
        if outside:
            raise RecipeError([f"model.keep_layers: {outside} are not blocks of this model, which has {num_blocks} "
                               f"(0 to {num_blocks - 1})"])
        return list(keep)
    if every is None:
        return list(range(num_blocks))
    if every >= num_blocks:
        raise RecipeError([f"model.keep_every: {every} keeps only block 0 of this model's {num_blocks}; use a smaller "
                           "k, or model.keep_layers: [0] if one block is really meant"])
    return list(range(0, num_blocks, every))


def keep_layers(model: nn.Module, indices: list[int]) -> tuple[int, int]:
    """Keep only the blocks `indices` of `model`, in place; the config says the new depth, so the model saves and
    reloads as an ordinary smaller one. Returns (blocks before, blocks after)."""
    prefix, blocks = find_blocks(model)
    before = len(blocks)
    kept = nn.ModuleList([blocks[i] for i in indices])
    parent_name, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, kept)
    for new_index, block in enumerate(kept):
        # Decoders index their key/value cache by the block's position: renumber, or generation mixes layers.
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == before:  # per-block attention kinds (Qwen2, Gemma)
        config.layer_types = [layer_types[i] for i in indices]
    config.num_hidden_layers = len(indices)  # n_layer on GPT-2, through the config's attribute map
    return before, len(indices)


def truncate_for_recipe(model: nn.Module, spec) -> tuple[Optional[list[int]], Optional[int]]:
    """Apply model.keep_layers / model.keep_every; returns (the kept indices, how many blocks the model had), or
    (None, None) when the model stays whole."""
    if spec.keep_layers is None and spec.keep_every is None:
        return None, None
    _, blocks = find_blocks(model)
    indices = select_layers(len(blocks), spec.keep_every, spec.keep_layers)
    before, _ = keep_layers(model, indices)
    return indices, before
