"""Callbacks that watch a short probe run of the user's own recipe: they read what the loop did (gradients,
weights, timings) and never change what it computes, except NoDropout, which the gradient comparison needs."""
from __future__ import annotations

import time

import torch


class ProbeDone(Exception):
    """Raised by a probe to end its run early (what it needed has been read)."""


class CaptureGradients:
    """The first optimizer step's whole gradient (every parameter that has one), then the run ends."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_gradients(self, loop) -> None:
        # A sharded (FSDP2) gradient is gathered whole: every rank takes part, in the same parameter order.
        self.grads = {n: _whole(p.grad).detach().float().cpu().clone() for n, p in loop.model.named_parameters()
                      if p.grad is not None}
        raise ProbeDone


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class NoDropout:
    """Dropout off while training: masks are drawn per micro-batch, so with dropout k micro-batches and one batch
    of the same rows differ by their masks, not by the loop's arithmetic."""

    def on_train_start(self, loop) -> None:
        for m in loop.model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            for name in ("attention_dropout", "dropout_prob", "attn_dropout", "dropout_rate"):
                if isinstance(getattr(m, name, None), float):
                    setattr(m, name, 0.0)


class FinalWeights:
    """The trainable weights at the end of training."""

    def __init__(self):
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_end(self, loop) -> None:
        self.weights = {n: _whole(p).detach().float().cpu().clone() for n, p in loop.model.named_parameters()
                        if p.requires_grad}


class InterruptAfter:
    """Ends the run at the end of optimizer step `step` (before that step's checkpoint would be written)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, loop) -> None:
        if loop.state.global_step == self.step:
            raise ProbeDone


class Timings:
    """Seconds per optimizer step (after the first, which pays for warm-up), per checkpoint save, per evaluation."""

    def __init__(self):
        self.steps: list[float] = []
        self.saves: list[float] = []
        self.evaluations: list[float] = []
        self.resettable = False  # whether the memory peak was reset before the run (check/memory.py)
        self.peak: float | None = None  # the run's peak memory (MB), read after it
        self._last = None

    def on_train_start(self, loop) -> None:
        self._last = time.perf_counter()

    def on_step_end(self, loop) -> None:
        now = time.perf_counter()
        self.steps.append(now - self._last)
        self._last = now

    def on_evaluate(self, loop, metrics: dict) -> None:
        self.evaluations.append(float(metrics.get("eval_seconds", 0.0)))
        self._last = time.perf_counter()

    def on_save(self, loop, path) -> None:
        now = time.perf_counter()
        self.saves.append(now - self._last)  # the save follows the step's end (and any evaluation) at once
        self._last = now
