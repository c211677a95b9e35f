"""Switching modules between a class and a subclass in place, for the length of training.

A fast path that computes what a module already computes (engine/dropout.py, adapters/fused_lora.py) is a
subclass with no state of its own: changing `__class__` swaps the forward without copying weights, hooks or
parameter identities (the optimizer and DDP keep theirs), and what is saved stays the same."""
from __future__ import annotations

from torch import nn


def retype_modules(model: nn.Module, current: type, new: type) -> int:
    """Give every module of `model` whose type is exactly `current` the class `new`; returns how many."""
    switched = 0
    for module in model.modules():
        if type(module) is current:
            module.__class__ = new
            switched += 1
    return switched
