"""Test helpers: capture weights at the start and end of training."""
from __future__ import annotations

import torch


class Snapshot:
    """Copies every parameter at on_train_start and on_train_end (before the best weights are restored)."""

    def __init__(self):
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.trainable_at_start: set[str] = set()

    def on_train_start(self, loop):
        self.start = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
        self.trainable_at_start = {n for n, p in loop.model.named_parameters() if p.requires_grad}

    def on_train_end(self, loop):
        self.end = {n: p.detach().clone() for n, p in loop.model.named_parameters()}

    def changed(self) -> set[str]:
        return {n for n in self.start if not torch.equal(self.start[n], self.end[n])}


class InterruptAt:
    """Simulates Ctrl-C after a given optimizer step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, loop):
        if loop.state.global_step == self.step:
            raise KeyboardInterrupt
