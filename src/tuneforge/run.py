"""`fine_tune(recipe)`: the whole run, from recipe to a saved Hugging Face model, metrics and summary.

A short pipeline: the stages the recipe asks for (stages/) hook in at their points; the task (tasks/) decides what
its data, model and predictions are."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from . import runlock
from .adapters import save_adapter, trainable_names
from .engine.callbacks import GradualUnfreezing, truncate_jsonl
from .engine.checkpoint import check_world_size, load_checkpoint, restore_weights
from .engine.evaluate import run_evaluation
from .engine.guard import refuse_nonfinite_weights
from .engine.loop import LoopState
from .engine.optim import make_optimizer
from .engine.runtime import runtime_for
from .errors import DataError, RunDirError
from .methods import apply_plan, count_parameters, freeze_batchnorm_statistics, set_frozen_modules_eval
from .models import find_layer_groups, load_for_recipe
from .preparation import (apply_method, enable_gradient_checkpointing, load_data, param_groups, precompute_reference,
                          prepare_objective, report_start)
from .recipe import Recipe, load_recipe
from .report import console as default_console, print_summary, quiet_console
from .rundir import check_shared_storage, check_writable, prepare_run_dir, save_model, write_text_atomic, writing
from .stages import RunContext, stages_for
from .tasks import task_for
from .tracking import finish_run as finish_tracking
from .training import best_weights, prepare_loop
from .validation import check_fsdp, check_run, validate

RecipeLike = Union[str, Path, dict, Recipe]


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path
    metrics: dict                      # split -> metric -> value
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    best_step: Optional[int]
    steps: int
    method: str = "full"
    task: str = "classification"
    lr: float = 0.0
    stored_bytes: int = 0            # size of the weights a user must keep (the whole model, or the adapter)
    files: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["run_dir"], d["model_dir"] = str(self.run_dir), str(self.model_dir)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d


def fine_tune(recipe: RecipeLike, overrides: Optional[list[str]] = None, *, resume: bool = False,
              overwrite: bool = False, callbacks: Optional[list] = None, console=None) -> RunResult:
    """Fine-tune as the recipe says; returns metrics and the paths written. The run folder is locked against other
    processes from the moment it is prepared until this returns (runlock)."""
    recipe = load_recipe(recipe, overrides)
    with runlock.scope():
        return _fine_tune(recipe, resume, overwrite, callbacks, console)


def _fine_tune(recipe: Recipe, resume: bool, overwrite: bool, callbacks, console) -> RunResult:
    runtime = runtime_for(recipe.training)  # device, precision and, under torchrun, the process group
    # A run another process is training: said now, before data and model load (rank 0 looks; all ranks hear).
    runtime.on_main(lambda: _refuse_output_dir(Path(recipe.output.dir)))
    from .tracking import check_installed
    runtime.on_main(lambda: check_installed(recipe.training.report_to))  # before --overwrite removes anything
    if runtime.fsdp:
        check_fsdp(recipe)  # before anything loads
    if recipe.training.threads:
        torch.set_num_threads(recipe.training.threads)
    ctx = RunContext(recipe=recipe, runtime=runtime, console=(console or default_console()) if runtime.is_main
                     else quiet_console(), run_dir=Path(recipe.output.dir), task=task_for(recipe),
                     train_entry=fine_tune, resume=resume, overwrite=overwrite, callbacks=list(callbacks or []),
                     model_recipe=recipe)
    stages = stages_for(recipe)
    if any(stage.validate_first for stage in stages):
        validate(recipe)
    for stage in stages:
        stage.before(ctx)
    ctx.splits, ctx.space, ctx.origin = load_data(recipe, ctx.notes, stages)
    _load_model(ctx, stages)
    reference_mode, resume_from, groups_now = _prepare(ctx)
    _encode(ctx, stages, reference_mode)
    # What the task sets up from the training split (regression: target statistics), before a checkpoint loads.
    task_lines = ctx.task.start_training(ctx.model, ctx.splits["train"], ctx.run_dir, resume_from is not None,
                                         runtime.is_main)
    loop = _loop(ctx, resume_from, groups_now)
    report_start(ctx.console, recipe, ctx.loaded, ctx.groups, ctx.model, ctx.splits, ctx.origin, ctx.encoded,
                 ctx.run_dir, ctx.plan, reference_mode)
    speed = [f"  {ctx.runtime.precision_note}"] if ctx.runtime.precision_note else []
    for line in [*speed, *task_lines, *(getattr(ctx, "reference_note", None) or []), *_cut_line(ctx),
                 *[line for stage in stages for line in stage.report(ctx)]]:
        ctx.console.print(line)
    started = time.perf_counter()
    loop.run()
    ctx.train_seconds = time.perf_counter() - started
    # Rank 0's disk decides (another machine's rank need not see it); its weights reach every rank.
    if recipe.training.restore_best and ctx.encoded.get("validation") is not None and \
            runtime.gather(best_weights(ctx.run_dir).exists())[0]:
        restore_weights(ctx.model, best_weights(ctx.run_dir), ctx.saved_names, runtime)
    ctx.steps, ctx.best_step = loop.state.global_step, loop.state.best_step
    for stage in stages:
        stage.after_training(ctx)
    for name in ("validation", "test"):
        if name in ctx.encoded and name not in ctx.metrics:
            ctx.metrics[name] = run_evaluation(ctx.model, ctx.encoded[name], ctx.task, len(ctx.space.names),
                                               recipe.task.threshold, recipe.training.eval_batch_size, ctx.pad_id,
                                               runtime)
    return _finish(ctx, stages, reference_mode)


def _refuse_output_dir(run_dir: Path) -> None:
    runlock.refuse_if_locked(run_dir)
    check_writable(run_dir)


def _load_model(ctx: RunContext, stages) -> None:
    """The task's model and head, then what the stages add (distillation's teacher), then the method."""
    recipe, t = ctx.recipe, ctx.recipe.training
    head_seed = t.head_seed if t.head_seed is not None else t.seed
    ctx.loaded = load_for_recipe(ctx.model_recipe, ctx.task, ctx.space, head_seed, ctx.runtime)
    ctx.model, ctx.tokenizer = ctx.loaded.model, ctx.loaded.tokenizer  # tokenizer: an ImageProcessing for images
    for stage in stages:
        stage.with_model(ctx)
    ctx.groups = find_layer_groups(ctx.model)
    ctx.model, ctx.plan = apply_method(ctx.model, recipe.method, ctx.groups, head_seed, recipe.task_kind)
    if not ctx.runtime.fsdp and not recipe.model.quantization:  # (a quantized base is placed as it loads)
        ctx.model.to(ctx.runtime.device)  # before the optimizer and the reference copy are made


def _prepare(ctx: RunContext):
    """The objective's reference, checks that need data and model, the run directory, the optimizer. Returns (the
    reference mode, the checkpoint to resume from or None, the optimizer's group names)."""
    recipe, runtime, model, t = ctx.recipe, ctx.runtime, ctx.model, ctx.recipe.training
    reference_mode = prepare_objective(recipe, ctx.task, model, ctx.tokenizer)  # before a checkpoint loads
    if t.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if runtime.fsdp:  # sharded in place, onto the device, before the optimizer sees its parameters
        from .engine.sharding import shard_model
        if getattr(ctx.task, "reference", None) is not None and hasattr(ctx.task.reference, "model"):
            ctx.task.reference.model.to(runtime.device)
        shard_model(model, runtime)
    # Dropout's RNG, apart from head and adapter initialization and data order; each rank draws its own masks.
    torch.manual_seed(t.seed + runtime.rank)
    warnings = check_run(recipe, ctx.task, ctx.space, ctx.splits, ctx.loaded.model.config, ctx.tokenizer, ctx.plan,
                         runtime.world_size)

    def prepare():  # with recipe, data and model checked, an old run may be replaced (by rank 0 alone)
        with writing(ctx.run_dir):
            found = prepare_run_dir(ctx.run_dir, recipe, ctx.resume, ctx.overwrite, ctx.console, ctx.keep)
            write_text_atomic(ctx.run_dir / "recipe.yaml", recipe.to_yaml())
        return found
    resume_from = runtime.on_main(prepare)  # its decision, and any error it raises, reach every rank
    if runtime.distributed:
        check_shared_storage(ctx.run_dir, runtime, resume_from, recipe)
    for w in ctx.notes + warnings:
        ctx.console.print(f"[yellow]warning:[/] {w}")
    groups = param_groups(recipe, model, ctx.groups, recipe.lr)
    # Adapters: only the adapter's weights and the head are trained, optimized and checkpointed.
    ctx.saved_names = trainable_names(model) if recipe.method.is_adapter else None
    ctx.optimizer = make_optimizer(groups)
    return reference_mode, resume_from, [g["name"] for g in groups]


def _encode(ctx: RunContext, stages, reference_mode) -> None:
    recipe, kind = ctx.recipe, ctx.recipe.task_kind
    ctx.encoded = {k: kind.encode(recipe, ctx.tokenizer, v, ctx.space) for k, v in ctx.splits.items()}
    emptied = [f"{k}: all {len(ctx.splits[k])} example(s) were left with nothing to train on by truncation at "
               f"model.max_length {recipe.model.max_length} (first: {v.dropped[0]}); raise model.max_length"
               for k, v in ctx.encoded.items() if len(v) == 0 and getattr(v, "dropped", None)]
    if emptied:
        raise DataError(emptied)
    ctx.pad_id = getattr(ctx.tokenizer, "pad_token_id", None) or 0
    if reference_mode == "precomputed":
        ctx.reference_note = [precompute_reference(ctx.model, ctx.encoded, recipe.training.eval_batch_size,
                                                   ctx.pad_id, recipe.method.is_adapter, ctx.runtime)]
    for stage in stages:
        stage.with_encoded(ctx)


def _loop(ctx: RunContext, resume_from, groups_now):
    """The task's training loop (training.prepare_loop), resumed from a checkpoint when there is one."""
    recipe, runtime, model, plan, t = ctx.recipe, ctx.runtime, ctx.model, ctx.plan, ctx.recipe.training
    ctx.data_seed = t.data_seed if t.data_seed is not None else t.seed

    def set_train_mode():
        model.train()
        if plan is not None:
            set_frozen_modules_eval(model, plan, loop.state.stage)
        freeze_batchnorm_statistics(model)
    ctx.set_train_mode = set_train_mode
    unfreezing = [GradualUnfreezing(plan, recipe.method.unfreeze_every, lambda stage: apply_plan(model, plan, stage))] \
        if plan is not None and plan.gradual else []
    ctx.prompt_format = recipe.task_kind.prompt_format(recipe, ctx.tokenizer, ctx.splits["train"][0])
    samples = []
    if runtime.is_main and recipe.task.sample_prompts:  # (a key of the tasks that generate)
        from .generation import SampleGenerations
        samples = [SampleGenerations(ctx.tokenizer, recipe.task.sample_prompts, ctx.run_dir / "samples.jsonl",
                                     recipe.task.max_new_tokens, ctx.prompt_format == "chat-template")]
    loop = prepare_loop(model=model, optimizer=ctx.optimizer, task=ctx.task, train=ctx.encoded["train"],
                        validation=ctx.encoded.get("validation"), cfg=t, run_dir=ctx.run_dir, runtime=runtime,
                        console=ctx.console, num_labels=len(ctx.space.names), threshold=recipe.task.threshold,
                        pad_id=ctx.pad_id, data_seed=ctx.data_seed, saved_names=ctx.saved_names,
                        set_train_mode=set_train_mode, after_best=unfreezing + samples, callbacks=ctx.callbacks)
    ctx.loop = loop
    if resume_from is not None:
        check_world_size(resume_from, runtime.world_size)
        saved = load_checkpoint(resume_from, model, ctx.optimizer, loop.scheduler, ctx.saved_names, runtime,
                                loop.scaler)
        if saved.get("param_groups") not in (None, groups_now):
            raise RunDirError(f"{resume_from}: its optimizer groups {saved['param_groups']} differ from this recipe's")
        saved.pop("param_groups", None)
        loop.state = LoopState(**saved)
        if runtime.is_main:
            truncate_jsonl(ctx.run_dir / "metrics.jsonl", loop.state.global_step)
        ctx.console.print(f"resuming from {resume_from} (step {loop.state.global_step})")
    elif runtime.is_main:
        (ctx.run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return loop


def _cut_line(ctx: RunContext) -> list[str]:
    loaded = ctx.loaded
    if loaded.kept_layers is None:
        return []
    return [f"  student cut from {ctx.recipe.model.name}: blocks {loaded.kept_layers} of its {loaded.blocks_before} kept"]


def _finish(ctx: RunContext, stages, reference_mode) -> RunResult:
    """Save the model (rank 0) and the summary; every rank returns the same metrics."""
    recipe, runtime, model = ctx.recipe, ctx.runtime, ctx.model
    adapter = recipe.method.is_adapter
    trainable, total = count_parameters(model)
    refuse_nonfinite_weights(model, "the final model", ctx.steps, ctx.loop.latest_checkpoint, runtime)
    kept = None
    if runtime.fsdp:  # the whole model (or adapter and head) gathered onto rank 0, which saves it
        from .engine.sharding import gather_state
        kept = gather_state(model, ctx.saved_names)
    model_dir = ctx.run_dir / ("adapter" if adapter else "model")
    result = RunResult(run_dir=ctx.run_dir, model_dir=model_dir, metrics=ctx.metrics, trainable_parameters=trainable,
                       total_parameters=total, train_seconds=round(ctx.train_seconds, 2), best_step=ctx.best_step,
                       steps=ctx.steps, method=recipe.method.name, task=recipe.task.type, lr=recipe.lr)
    if not runtime.is_main:
        runtime.barrier()
        return result
    with ctx.task.saving(model, kept):  # (regression: the targets' units folded into the saved head)
        if adapter:
            ctx.stored = save_adapter(model, ctx.tokenizer, model_dir, kept)
        else:
            ctx.stored = save_model(model, ctx.tokenizer, model_dir, recipe.task_kind.saved_extras(model, ctx.loaded),
                                    kept)
    result.stored_bytes = ctx.stored
    result.files = {"adapter" if adapter else "model": model_dir, "recipe": ctx.run_dir / "recipe.yaml",
                    "metrics": ctx.run_dir / "metrics.jsonl", "summary": ctx.run_dir / "summary.json"}
    encoded = ctx.encoded
    summary = {**result.to_json(), "labels": ctx.space.names, "data": ctx.origin,
               "rows": {k: len(v) for k, v in ctx.splits.items()},
               "truncated": {k: v.truncated for k, v in encoded.items()},
               "dropped": {k: len(getattr(v, "dropped", None) or []) for k, v in encoded.items()},
               "prompt_format": ctx.prompt_format, "reference": reference_mode,
               "new_head_parameters": ctx.loaded.new_parameters, "history": ctx.loop.state.history}
    for stage in stages:
        summary.update(stage.summary(ctx))
    task_summary = ctx.task.run_summary(ctx.metrics)
    for w in task_summary.get("warnings", []):
        ctx.console.print(f"[yellow]warning:[/] {w}")
    summary.update(task_summary)
    if ctx.loaded.kept_layers is not None:
        summary["kept_layers"] = {"kept": ctx.loaded.kept_layers, "of": ctx.loaded.blocks_before}
    state = ctx.loop.state
    if state.skipped_steps:
        summary["skipped_steps"] = {"count": state.skipped_steps, "first": state.skipped_at}
        ctx.console.print(f"[yellow]warning:[/] {state.skipped_steps} of {ctx.steps} step(s) skipped for a non-finite "
                          f"loss or gradient (training.nonfinite: skip), first at steps {state.skipped_at[:5]}")
    cache = getattr(ctx.loop, "prefix_cache", None)
    if cache is not None and cache.fills:
        summary["frozen_prefix_cache"] = cache.fills
    summary["runtime"] = {"device": str(runtime.device), "precision": runtime.precision,
                          "world_size": runtime.world_size}
    write_text_atomic(ctx.run_dir / "summary.json", json.dumps(summary, indent=1))
    # Experiment trackers (training.report_to): the saved model or adapter as an artefact, the run closed.
    finish_tracking(ctx.run_dir, model_dir, ctx.metrics)
    print_summary(ctx.console, result)
    runtime.barrier()
    return result


__all__ = ["RunResult", "fine_tune", "validate", "save_model"]
