"""The one way tuneforge builds a training loop, for the task's training and for a stage's own (self-training):
the loop with the standard callbacks and its learning-rate schedule."""
from __future__ import annotations

from pathlib import Path

from .adapters.fused_lora import fuse_lora, unfuse_lora
from .engine.callbacks import DuringTraining, EarlyStopping, JsonlLogger, KeepBest, ProgressBar
from .engine.dropout import fast_dropout, restore_dropout
from .engine.loop import Loop
from .engine.optim import make_scheduler, warmup_steps
from .engine.prefix_cache import FrozenPrefixCache
from .tasks import higher_is_better
from .tracking import callbacks_for


def best_weights(run_dir: Path) -> Path:
    """Where a loop keeps its best step's weights."""
    return run_dir / "checkpoints" / "best" / "model.safetensors"


def prepare_loop(*, model, optimizer, task, train, validation, cfg, run_dir: Path, runtime, console, num_labels: int,
                 threshold: float, pad_id: int, data_seed: int, saved_names, set_train_mode, first=(), after_best=(), callbacks=(),
                 checkpoints: bool = True) -> Loop:
    """A loop over `train` by the training settings `cfg`, with, in this order: `first`; the best step kept by
    cfg.metric (or the task's), with early stopping when cfg asks; `after_best`; on rank 0 only, the experiment
    trackers of cfg.report_to (tracking/), `run_dir/metrics.jsonl` and the progress bar; then `callbacks` (on every
    rank, like the loop: one that writes asks loop.runtime). Decisions (best step, early stopping) are taken on every
    rank from the same reduced metrics."""
    metric = cfg.metric or task.default_metric
    cbs: list = [*first, KeepBest(metric, higher_is_better(metric), cfg.early_stopping.min_delta if cfg.early_stopping
                                  else 0.0, best_weights(run_dir), saved_names, write=runtime.is_main)]
    if cfg.early_stopping:
        cbs.append(EarlyStopping(cfg.early_stopping.patience))
    cbs.extend(after_best)
    # Before anything is built: a tracker asked for but not installed is refused here, naming the key and the fix.
    trackers = callbacks_for(getattr(cfg, "report_to", ["tensorboard"]), run_dir, runtime, console)
    if runtime.is_main:
        cbs.extend(trackers)  # first: a tracker's start (a new database, a login) is not timed as training's speed
        cbs.append(JsonlLogger(run_dir / "metrics.jsonl", cfg.log_every))
        if cfg.progress:
            cbs.append(ProgressBar(console))
    cbs.extend(callbacks)
    if runtime.device.type == "cpu":  # measured on CPU only (docs/performance.md)
        if getattr(cfg, "fast_dropout", False):
            cbs.insert(0, DuringTraining(model, fast_dropout, restore_dropout))
        if getattr(cfg, "fused_lora", False):
            cbs.insert(0, DuringTraining(model, fuse_lora, unfuse_lora))
    cache = _prefix_cache(model, cfg, runtime, pad_id, run_dir, console)
    if cache is not None:
        cbs.insert(0, cache)
        modes = set_train_mode

        def set_train_mode():
            modes()
            cache.refresh()  # after the modes: what is frozen and in eval mode is what can be cached
    loop = Loop(model=model, optimizer=optimizer, scheduler=None, task=task, train=train, validation=validation,
                cfg=cfg, num_labels=num_labels, threshold=threshold, pad_id=pad_id, data_seed=data_seed,
                run_dir=run_dir, callbacks=cbs, set_train_mode=set_train_mode, saved_names=saved_names,
                checkpoints=checkpoints, runtime=runtime)
    loop.scheduler = make_scheduler(optimizer, cfg.schedule, warmup_steps(loop.total_steps, cfg.warmup_ratio,
                                                                          cfg.warmup_steps), loop.total_steps)
    loop.prefix_cache = cache
    return loop


def _prefix_cache(model, cfg, runtime, pad_id: int, run_dir: Path, console):
    """The frozen-prefix cache of a loop (engine/prefix_cache.py), or None where it cannot apply: turned off, an
    adapter (PEFT changes what the frozen blocks compute: prompts, prefixes), weights sharded, no block stack."""
    if not getattr(cfg, "cache_frozen_prefix", False) or runtime.fsdp or hasattr(model, "peft_config"):
        return None
    try:
        return FrozenPrefixCache(model, runtime, cfg.eval_batch_size, pad_id, int(cfg.cache_memory_gb * 2**30),
                                 run_dir / "cache", console)
    except ValueError:  # no stack of repeated blocks (a CNN)
        return None
