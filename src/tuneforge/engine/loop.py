"""The one training loop. Plain PyTorch; hooks: on_train_start, on_epoch_start, on_step_end, on_evaluate,
on_epoch_end, on_save, on_train_end (on_train_abort when an error stops it); on_gradients once a step's
gradient is complete, before clipping and the update.

Exactness matters more than brevity here:
- the loss of each micro-batch is a *sum* divided by the examples (causal LM: target tokens) of the whole
  accumulated step, so accumulating 4x8 gives the gradient of one batch of 32;
- the data order of epoch e is a permutation drawn from (data_seed, e) alone, so a resumed run can skip
  to the exact step it stopped at; dropout draws from the global RNG, saved in every checkpoint;
- in N processes each step's global batch is the one a single process would take, dealt out among ranks, and
  the loss is divided by the global count, so N processes compute the 1-process gradient (engine/parallel.py);
- the loss is read back from the device on logging steps only: a GPU never waits for the host in between.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data.split import Split
from ..errors import TrainingDiverged
from .checkpoint import list_checkpoints, save_checkpoint
from .evaluate import run_evaluation
from .guard import diverged_message, full_value, gradient_norm, refuse_nonfinite_weights, step_is_finite
from .parallel import padding, share_of, sync_gradients, trains_now, wrap_for_training
from .runtime import CPU, Runtime


@dataclass
class LoopState:
    epoch: int = 0            # epochs finished
    step_in_epoch: int = 0    # optimizer steps finished in the current epoch
    global_step: int = 0
    stage: int = 0            # gradual-unfreezing stage
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    examples_seen: int = 0
    should_stop: bool = False
    log_loss_sum: float = 0.0  # training-loss window of the log since its last line (up to the last checkpoint)
    log_steps: int = 0
    world_size: int = 1       # processes the run trains in: a step's rows depend on it
    skipped_steps: int = 0    # steps skipped for a non-finite loss or gradient (training.nonfinite: skip)
    skipped_at: list = field(default_factory=list)  # the first of them (step numbers)
    history: list = field(default_factory=list)  # validation metrics per evaluation


def count_steps(rows: int, cfg, world_size: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, optimizer steps in the run) for `rows` training rows; each step takes
    batch_size x grad_accum rows in every one of `world_size` processes."""
    per_epoch = math.ceil(math.ceil(rows / cfg.batch_size) / (cfg.grad_accum * world_size))
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def epoch_order(n: int, data_seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(data_seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def group_by_length(order: list[int], lengths: list[int], step_rows: int, window: int = 50,
                    seed: int = 0) -> list[int]:
    """The random order regrouped so that each optimizer step holds rows of similar length, steps still in a
    random order.

    `step_rows` is what one optimizer step takes (batch_size x grad_accum x processes). The random order is cut into
    windows of `window` steps (at most a quarter of the epoch's steps, so a small data set still has several
    windows); each window is sorted by length and cut into steps, and the steps of a window are shuffled. A step's
    micro-batches are consecutive rows of it, so they are of similar length too and dynamic padding pads little,
    while which rows meet, and the order of the steps, change from epoch to epoch. Grouping by steps, not
    micro-batches, keeps a step's rows the same whatever its split into micro-batches and processes, so
    accumulation and N processes still compute the one-process, one-batch gradient. The order is a function of the
    permutation and `seed` alone (the loop derives it from the data seed and epoch), so a resumed run is exact.
    """
    steps = -(-len(order) // step_rows)
    window = max(1, min(window, steps // 4))
    size = step_rows * window
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for start in range(0, len(order), size):
        rows = sorted(order[start:start + size], key=lambda i: -lengths[i])
        cut = [rows[k:k + step_rows] for k in range(0, len(rows), step_rows)]
        # A short last step stays last: the epoch's steps keep the sizes the random order gave them.
        full = [c for c in cut if len(c) == step_rows]
        for j in torch.randperm(len(full), generator=g).tolist():
            out.extend(full[j])
        for c in cut[len(full):]:
            out.extend(c)
    return out


class Loop:
    def __init__(self, *, model, optimizer, scheduler, task, train: Split, validation: Split | None,
                 cfg, num_labels: int, threshold: float, pad_id: int, data_seed: int, run_dir: Path,
                 callbacks: list, set_train_mode, state: LoopState | None = None, saved_names: set[str] | None = None,
                 checkpoints: bool = True, runtime: Runtime = CPU):
        self.model, self.optimizer, self.scheduler, self.task = model, optimizer, scheduler, task
        self.train_split, self.validation, self.cfg = train, validation, cfg
        self.num_labels, self.threshold, self.pad_id, self.data_seed = num_labels, threshold, pad_id, data_seed
        self.run_dir, self.callbacks, self.set_train_mode = run_dir, callbacks, set_train_mode
        self.saved_names = saved_names  # what checkpoints hold: None = every weight; adapters: adapter and head
        self.checkpoints = checkpoints  # False: a stage that restarts from its beginning on resume writes none
        self.runtime = runtime
        self.prefix_cache = None  # set by training.prepare_loop when the frozen prefix is cached
        self.state = state or LoopState(world_size=runtime.world_size)
        self.steps_per_epoch, self.total_steps = count_steps(len(train), cfg, runtime.world_size)
        self.scaler = runtime.grad_scaler()  # fp16 only
        # This rank's share of the loss since the last read, summed in float64 as the host would (MPS has none).
        self._window = torch.zeros((), dtype=torch.float32 if runtime.device.type == "mps" else torch.float64,
                                   device=runtime.device)
        self.last_loss = float("nan")  # mean step loss over the logging window that closed at this step
        self.logged = False            # whether this step closed one (callbacks log then)
        self._wrapped, self._wrapped_for = None, None
        self.lengths = train.lengths if cfg.group_by_length else []
        self.params = [p for g in optimizer.param_groups for p in g["params"]]  # clip_grad_norm_ skips grad None

    def fire(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn:
                fn(self, *args)

    def run(self) -> LoopState:
        try:
            return self._run()
        except BaseException:  # (a non-finite step, Ctrl-C): progress bars, logs and caches are closed all the same
            self.fire("on_train_abort")
            raise

    def _run(self) -> LoopState:
        s, cfg = self.state, self.cfg
        self.fire("on_train_start")
        while s.epoch < cfg.epochs and s.global_step < self.total_steps and not s.should_stop:
            self.fire("on_epoch_start")
            self.set_train_mode()
            order = epoch_order(len(self.train_split), self.data_seed, s.epoch)
            per_step = cfg.grad_accum * self.runtime.world_size
            if cfg.group_by_length:
                order = group_by_length(order, self.lengths, cfg.batch_size * per_step,
                                        seed=self.data_seed * 1_000_003 + s.epoch + 1)
            micro = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            steps = [micro[i:i + per_step] for i in range(0, len(micro), per_step)]
            for step_batches in steps[s.step_in_epoch:]:
                self._optimizer_step(step_batches)
                s.global_step += 1
                s.step_in_epoch += 1
                self._read_loss()
                self.fire("on_step_end")
                due_eval = isinstance(cfg.eval_every, int) and s.global_step % cfg.eval_every == 0
                if due_eval:
                    self.evaluate()
                last = s.global_step >= self.total_steps or s.should_stop
                if self.checkpoints and cfg.checkpoint_every and s.global_step % cfg.checkpoint_every == 0 and not last \
                        and s.step_in_epoch < len(steps):
                    self.save()
                if last:
                    break
            ended_epoch = s.step_in_epoch >= len(steps)
            if ended_epoch:
                s.epoch, s.step_in_epoch = s.epoch + 1, 0
            evaluated_now = bool(s.history) and s.history[-1]["step"] == s.global_step
            if not evaluated_now and ((cfg.eval_every == "epoch" and ended_epoch) or s.global_step >= self.total_steps):
                self.evaluate()
            self.fire("on_epoch_end")
            if self.checkpoints:
                self.save()
        self.runtime.barrier()  # rank 0's last files (best weights, checkpoint) are complete before anyone reads them
        self.fire("on_train_end")
        return s

    def forward_model(self, batch: dict):
        """The model as the training forward sees it: the model itself in one process; in several, a DDP wrapper,
        built again when what trains changes (gradual unfreezing), since DDP syncs the parameters it was given."""
        if not self.runtime.distributed or self.runtime.fsdp:  # FSDP: the model is sharded in place already
            return self.model
        now = trains_now(self.model)
        if now != self._wrapped_for:
            def loss_of(model):  # a probe: draws nothing from the generators training uses
                with self.runtime.fork_rng(), self.runtime.autocast():
                    return self.task.batch_loss(model, batch)[0]
            self._wrapped, self._wrapped_for = wrap_for_training(self.model, self.runtime, loss_of), now
        return self._wrapped

    def _optimizer_step(self, step_batches: list[list[int]]) -> None:
        # Normalize by the examples (causal LM: target tokens) of the whole accumulated step, not per micro-batch.
        # (A masked LM's count depends on the step's masks, drawn from `augment`.) Never 0: a step of rows that
        # all lack targets adds nothing instead of dividing by zero. Every rank counts the whole step.
        rt, augment = self.runtime, (self.data_seed, self.state.epoch)
        normalizer = max(sum(self.train_split.count(b, augment) for b in step_batches), 1)
        mine = share_of(step_batches, rt)
        # DDP and FSDP average gradients over ranks: scaled by the world size they sum to the 1-process gradient.
        # Padding forwards (a rank short of rows on a short step) count with a loss of zero.
        # (Divided, then multiplied: one process computes loss_sum / normalizer bit for bit as it always has.)
        work = [(b, rt.world_size) for b in mine] + [(step_batches[0], 0)] * padding(len(mine), len(step_batches), rt)
        total = torch.zeros((), dtype=self._window.dtype, device=rt.device)
        for i, (indices, weight) in enumerate(work):
            batch = rt.to_device(self.train_split.batch(indices, self.pad_id, augment))
            model = self.forward_model(batch) if i == 0 else model
            with sync_gradients(model, last=i == len(work) - 1):
                with rt.autocast():
                    loss_sum, _ = self.task.batch_loss(model, batch)
                loss = loss_sum / normalizer * weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach().to(total.dtype)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        self.fire("on_gradients")  # the step's whole gradient, before clipping and the update (tuneforge check reads it)
        if self.cfg.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        else:  # (under fp16's scaler the gradients' finiteness is the scaler's to judge)
            norm = None if self.scaler else gradient_norm(self.params)
        # fp16's scaler skips steps whose scaled gradients overflowed by design; the loss must be finite anyway.
        if not step_is_finite(total, None if self.scaler else norm, rt):
            self._nonfinite_step(total, norm)  # raises, or (training.nonfinite: skip) leaves the weights as they are
            if self.scaler:
                self.scaler.update()  # (unscale_ ran: the scaler must close this step before the next one)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.examples_seen += sum(len(b) for b in step_batches)
            return
        if self.scaler:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._window += total / rt.world_size
        self.state.examples_seen += sum(len(b) for b in step_batches)

    def _nonfinite_step(self, total: torch.Tensor, norm) -> None:
        s, rt = self.state, self.runtime
        if getattr(self.cfg, "nonfinite", "stop") == "skip":
            s.skipped_steps += 1
            s.log_steps -= 1  # not a step of the loss window (_read_loss counts it back)
            if len(s.skipped_at) < 20:
                s.skipped_at.append(s.global_step + 1)
            return
        loss = float(rt.sum(total)) / rt.world_size
        grad = None if norm is None else float(full_value(norm))
        raise TrainingDiverged(diverged_message(s.global_step + 1, self.total_steps, loss, grad,
                                                max(self.scheduler.get_last_lr()), self.latest_checkpoint()))

    def latest_checkpoint(self) -> str | None:
        found = list_checkpoints(self.run_dir / "checkpoints") if self.checkpoints else []
        return str(found[-1]) if found else None

    def _read_loss(self) -> None:
        """On logging steps (the same on every rank), the window's mean step loss, summed over ranks."""
        s, cfg = self.state, self.cfg
        s.log_steps += 1
        self.logged = s.global_step % cfg.log_every == 0 or s.global_step == self.total_steps
        if self.logged:
            window = s.log_loss_sum + float(self.runtime.sum(self._window))
            self.last_loss = window / s.log_steps if s.log_steps else float("nan")  # (every step of it skipped)
            s.log_loss_sum, s.log_steps = 0.0, 0
            self._window.zero_()

    def _flush_loss(self) -> None:
        # The open window goes into the state, so a checkpoint carries it and a resumed run logs the same.
        self.state.log_loss_sum += float(self.runtime.sum(self._window))
        self._window.zero_()

    def evaluate(self) -> dict | None:
        if self.validation is None:
            return None
        started = time.perf_counter()
        metrics = run_evaluation(self.model, self.validation, self.task, self.num_labels, self.threshold,
                                 self.cfg.eval_batch_size, self.pad_id, self.runtime)
        metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
        self.state.history.append({"step": self.state.global_step, "epoch": self.state.epoch, **metrics})
        self.fire("on_evaluate", metrics)
        self.set_train_mode()
        return metrics

    def save(self) -> Path:
        """A checkpoint with every rank's RNG state, written by rank 0 (FSDP: each rank writes its shard too);
        every rank returns once it is complete."""
        self._flush_loss()
        rt = self.runtime
        refuse_nonfinite_weights(self.model, "its checkpoint", self.state.global_step, self.latest_checkpoint, rt)
        rng = rt.gather(rt.rng_state())
        path = save_checkpoint(self.run_dir / "checkpoints", self.state.global_step, self.model, self.optimizer,
                               self.scheduler,
                               {**asdict(self.state), "param_groups": [g.get("name") for g in self.optimizer.param_groups]},
                               self.cfg.keep_checkpoints, self.saved_names, rng=rng, scaler=self.scaler, runtime=rt)
        self.fire("on_save", path)
        return path
