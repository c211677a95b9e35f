"""Callbacks on the loop's hooks: keep-best, early stopping, gradual unfreezing, the JSONL log, progress. (TensorBoard
and the other experiment trackers: tuneforge.tracking.)"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .checkpoint import save_weights
from .guard import refuse_nonfinite_weights


class KeepBest:
    """Track the best validation metric and keep those weights on disk (atomically)."""

    def __init__(self, metric: str, higher_is_better: bool, min_delta: float, path: Path,
                 names: set[str] | None = None, write: bool = True):
        self.metric, self.higher, self.min_delta, self.path = metric, higher_is_better, min_delta, path
        self.names = names  # what is kept: None = every weight; adapters: adapter and head
        self.write = write  # False on ranks other than 0: they decide alike and rank 0 keeps the file

    def improved(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):  # a NaN metric is never the best (NaN compares False, but -inf loss would win)
            return False
        if best is None:
            return True
        return value > best + self.min_delta if self.higher else value < best - self.min_delta

    def on_evaluate(self, loop, metrics: dict) -> None:
        s = loop.state
        value = metrics[self.metric]  # the name was checked against the task before training
        if self.improved(value, s.best_metric):
            s.best_metric, s.best_step, s.bad_evals = value, s.global_step, 0
            runtime = getattr(loop, "runtime", None)
            latest = getattr(loop, "latest_checkpoint", lambda: None)
            refuse_nonfinite_weights(loop.model, "the best weights", s.global_step, latest, runtime)
            state = None
            if runtime is not None and runtime.fsdp:  # gathered whole onto rank 0: every rank takes part
                from .sharding import gather_state
                state = gather_state(loop.model, self.names)
            if self.write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                save_weights(loop.model, self.path, self.names, state)
        else:
            s.bad_evals += 1


class EarlyStopping:
    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, loop, metrics: dict) -> None:
        if loop.state.bad_evals >= self.patience:
            loop.state.should_stop = True


class GradualUnfreezing:
    """Top-down unfreezing (ULMFiT): the head first, then one more group every epoch or every N steps."""

    def __init__(self, plan, every, apply_stage):
        self.plan, self.every, self.apply_stage = plan, every, apply_stage

    def stage_for(self, state) -> int:
        raw = state.epoch if self.every == "epoch" else state.global_step // self.every
        return min(raw, self.plan.num_stages - 1)

    def _update(self, loop) -> None:
        stage = self.stage_for(loop.state)
        if stage != loop.state.stage:
            loop.state.stage = stage
        self.apply_stage(stage)

    def on_train_start(self, loop):
        if loop.state.global_step >= loop.total_steps:  # resumed from the final checkpoint: keep its stage
            self.apply_stage(loop.state.stage)
            return
        self._update(loop)

    def on_epoch_start(self, loop):
        self._update(loop)

    def on_step_end(self, loop):
        if self.every != "epoch" and self.stage_for(loop.state) != loop.state.stage:
            self._update(loop)
            loop.set_train_mode()


class DuringTraining:
    """A model change for the length of training only: `switch_on(model)` at the start, `switch_off(model)` at the
    end, so the model a run hands back (and any stage after it) is as it was built (e.g. faster dropout masks, fused
    adapter layers)."""

    def __init__(self, model, switch_on, switch_off):
        self.model, self.switch_on, self.switch_off = model, switch_on, switch_off

    def on_train_start(self, loop) -> None:
        self.switch_on(self.model)

    def on_train_end(self, loop) -> None:
        self.switch_off(self.model)

    on_train_abort = on_train_end  # (training stopped by an error: the same clean-up)


class JsonlLogger:
    """Appends one JSON object per logged step and per evaluation to metrics.jsonl."""

    def __init__(self, path: Path, log_every: int):
        self.path, self.log_every = path, log_every
        self._t0, self._examples0 = time.perf_counter(), 0

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, loop):
        self._t0, self._examples0 = time.perf_counter(), loop.state.examples_seen

    def on_step_end(self, loop):
        # The loop averages the loss over the window (kept in its state, so it survives a checkpoint and resume)
        # and reads it back from the device on logging steps only.
        s = loop.state
        if loop.logged:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self._write({"step": s.global_step, "epoch": s.epoch + s.step_in_epoch / loop.steps_per_epoch,
                         "split": "train", "loss": loop.last_loss,
                         "lr": loop.scheduler.get_last_lr()[-1],
                         "samples_per_s": (s.examples_seen - self._examples0) / elapsed})
            self._t0, self._examples0 = time.perf_counter(), s.examples_seen

    def on_evaluate(self, loop, metrics):
        self._write({"step": loop.state.global_step, "epoch": loop.state.epoch, "split": "validation", **metrics})


def truncate_jsonl(path: Path, max_step: int) -> None:
    """On resume, drop records written after the checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the process was killed
            continue
        if record.get("step", 0) <= max_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


class ProgressBar:
    """A rich progress bar: loss, learning rate, samples/s, ETA."""

    def __init__(self, console=None):
        self.console = console
        self.progress = None
        self.seen_loss = False

    def on_train_start(self, loop):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=loop.total_steps, completed=loop.state.global_step, info="")
        self._t0, self._ex0 = time.perf_counter(), loop.state.examples_seen

    def on_step_end(self, loop):
        s = loop.state
        rate = (s.examples_seen - self._ex0) / max(time.perf_counter() - self._t0, 1e-9)
        # The loss shown is the last logging window's: read from the device only on logging steps.
        self.seen_loss = self.seen_loss or loop.logged  # before the first logging window closes there is no loss yet
        loss = f"{loop.last_loss:.4f}" if self.seen_loss else "-"
        info = f"loss {loss}  lr {loop.scheduler.get_last_lr()[-1]:.2e}  {rate:.0f} samples/s  epoch {s.epoch + 1}"
        self.progress.update(self.task, completed=s.global_step, info=info)

    def on_evaluate(self, loop, metrics):
        keys = ["loss", "accuracy", "f1_macro", "f1_micro", "mse", "pearson"]
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
        self.progress.console.print(f"  step {loop.state.global_step}  validation: {shown}")

    def on_train_end(self, loop):
        if self.progress:
            self.progress.stop()

    on_train_abort = on_train_end  # (training stopped by an error: the same clean-up)
