"""`fine_tune(recipe)`: the whole run, from recipe to a saved Hugging Face model, metrics and summary."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from .adapters import adapter_param_groups, attach_adapter, save_adapter, trainable_names
from .data.splits import load_examples
from .engine.callbacks import (EarlyStopping, GradualUnfreezing, JsonlLogger, KeepBest, ProgressBar,
                               TensorBoardLogger, tensorboard_available, truncate_jsonl)
from .engine.checkpoint import atomic_folder, check_world_size, list_checkpoints, load_checkpoint, restore_weights
from .engine.evaluate import run_evaluation
from .engine.loop import Loop, LoopState, count_steps
from .engine.runtime import runtime_for
from .engine.optim import make_optimizer, make_scheduler, warmup_steps
from .errors import DataError, RecipeError, RunDirError
from .methods import (apply_plan, build_param_groups, build_plan, count_parameters, freeze_batchnorm_statistics,
                      set_frozen_modules_eval)
from .methods.param_groups import group_learning_rates
from .tasks.preference import disable_dropout, make_reference
from .models import find_layer_groups, load_for_recipe
from .recipe import Recipe, load_recipe
from .report import console as default_console, print_summary, quiet_console
from .tasks import higher_is_better, task_for

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


RUN_MARKER = ".tuneforge-run"  # written by tuneforge into every run directory; only such folders are ever deleted
RANKS_FILE = ".tuneforge-ranks"  # a token of rank 0's: the other ranks find it where output.dir is shared


def _prepare_run_dir(run_dir: Path, recipe: Recipe, resume: bool, overwrite: bool, console,
                     keep: tuple[str, ...] = ()) -> Optional[Path]:
    """Return the checkpoint to resume from (or None); never destroy a finished run without `overwrite`,
    and never delete a folder tuneforge did not create. `keep`: folders of an earlier stage of this same run
    (the adaptation stage), left in place when the run starts over."""
    check_run_dir(run_dir, overwrite, keep)
    if _holds_a_run(run_dir, keep):
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        if overwrite:
            remove_run(run_dir, keep)
        elif resume and checkpoints:
            saved = saved_recipe(run_dir)
            if saved != recipe:
                raise RunDirError(f"{run_dir}: --resume with a recipe that differs from the run's recipe.yaml; "
                                  "resume with the same recipe, or start over with --overwrite")
            return checkpoints[-1]
        elif checkpoints:
            raise RunDirError(f"{run_dir} holds an unfinished run (latest checkpoint {checkpoints[-1].name}); "
                              "pass --resume to continue it or --overwrite to start over")
        else:
            # A run stopped before its first checkpoint: nothing to continue from.
            console.print(f"{run_dir}: an earlier run stopped before its first checkpoint; starting over")
            remove_run(run_dir, keep)
    mark_run_dir(run_dir)
    return None


def _holds_a_run(run_dir: Path, keep: tuple[str, ...] = ()) -> bool:
    return run_dir.exists() and any(p.name not in (*keep, RUN_MARKER, RANKS_FILE) for p in run_dir.iterdir())


def check_run_dir(run_dir: Path, overwrite: bool, keep: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is written or removed, a file, a non-empty folder tuneforge did not make, and a
    finished run without `overwrite`."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"output.dir {str(run_dir)!r} is a file; choose a folder")
    if not _holds_a_run(run_dir, keep):
        return
    if not (run_dir / RUN_MARKER).exists():
        raise RunDirError(f"output.dir {str(run_dir)!r} is not empty and was not made by tuneforge "
                          f"(no {RUN_MARKER} file); nothing in it is touched, even with --overwrite. "
                          "Choose another output.dir")
    if (run_dir / "summary.json").exists() and not overwrite:
        raise RunDirError(f"{run_dir} holds a finished run; pass --overwrite (overwrite=True) to replace it, "
                          "or set output.dir to a new folder")


def mark_run_dir(run_dir: Path) -> None:
    """Create the folder with the marker that lets tuneforge (and only it) remove what is inside later."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("a tuneforge run directory\n")


def remove_run(run_dir: Path, keep: tuple[str, ...]) -> None:
    if not keep:
        shutil.rmtree(run_dir)
        return
    for p in run_dir.iterdir():
        if p.name not in keep and p.name != RUN_MARKER:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def saved_recipe(run_dir: Path) -> Optional[Recipe]:
    """The recipe a run was started with (compared as values, so a newer version's extra defaults do not count)."""
    try:
        return load_recipe(run_dir / "recipe.yaml")
    except (RecipeError, OSError):
        return None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fine_tune(recipe: RecipeLike, overrides: Optional[list[str]] = None, *, resume: bool = False,
              overwrite: bool = False, callbacks: Optional[list] = None, console=None) -> RunResult:
    """Fine-tune as the recipe says; returns metrics and the paths written."""
    recipe = load_recipe(recipe, overrides)
    t = recipe.training
    runtime = runtime_for(t)  # device, precision and, under torchrun, the process group
    console = (console or default_console()) if runtime.is_main else quiet_console()
    if runtime.fsdp:
        _check_fsdp(recipe)  # before anything loads
    if t.threads:
        torch.set_num_threads(t.threads)
    head_seed = t.head_seed if t.head_seed is not None else t.seed
    data_seed = t.data_seed if t.data_seed is not None else t.seed
    run_dir = Path(recipe.output.dir)
    task = task_for(recipe)

    notes: list[str] = []
    adaptation, model_recipe, keep = None, recipe, ()
    if recipe.adapt is not None:  # first stage: continued pre-training; the task then starts from its model
        from .adapt import STAGE_FOLDERS, run_adaptation
        validate(recipe)  # the whole recipe, the task's data and the teacher are checked before any stage runs
        adapted, adaptation = run_adaptation(recipe, resume=resume, overwrite=overwrite, console=console)
        model_recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": str(adapted)})})
        keep = STAGE_FOLDERS  # when the run starts over below, the stage just run stays
    splits, space, origin, weak_data = _load_data(recipe, notes)
    loaded = load_for_recipe(model_recipe, task, space, head_seed, runtime)
    model, tokenizer = loaded.model, loaded.tokenizer  # tokenizer: an ImageProcessing for image models
    distill_info, teacher = None, None
    if recipe.distill is not None:
        from .distill.setup import prepare_distillation
        task, teacher, distill_info = prepare_distillation(recipe, task, loaded, space, str(runtime.device))
    groups = find_layer_groups(model)
    model, plan = _apply_method(model, recipe.method, groups, head_seed, recipe.task_kind)
    if not runtime.fsdp and not recipe.model.quantization:  # (a quantized base is placed as it loads)
        model.to(runtime.device)  # before the optimizer and the reference copy are made
    if teacher is not None and not getattr(getattr(teacher.model, "config", None), "quantization_config", None):
        teacher.model.to(runtime.device)  # (a quantized teacher was placed as it loaded)
    reference_mode = _prepare_objective(recipe, task, model, tokenizer)  # before a checkpoint loads: the start
    if t.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    if runtime.fsdp:  # sharded in place, onto the device, before the optimizer sees its parameters
        from .engine.sharding import shard_model
        if getattr(task, "reference", None) is not None and hasattr(task.reference, "model"):
            task.reference.model.to(runtime.device)
        shard_model(model, runtime)
    # Dropout's RNG, apart from head and adapter initialization and data order; each rank draws its own masks.
    torch.manual_seed(t.seed + runtime.rank)
    warnings = check_run(recipe, task, space, splits, loaded.model.config, tokenizer, plan, runtime.world_size)
    # Only now, with recipe, data and model all checked, may an old run be replaced (by rank 0 alone; its decision
    # and any error it raises reach every rank).
    def prepare():
        found = _prepare_run_dir(run_dir, recipe, resume, overwrite, console, keep)
        _write_text_atomic(run_dir / "recipe.yaml", recipe.to_yaml())
        return found
    resume_from = runtime.on_main(prepare)
    if runtime.distributed:
        check_shared_storage(run_dir, runtime, resume_from, recipe)
    for w in notes + warnings:
        console.print(f"[yellow]warning:[/] {w}")
    adapter = recipe.method.is_adapter
    param_groups = _param_groups(recipe, model, groups, recipe.lr)
    # Adapters: only the adapter's weights and the head are trained, optimized and checkpointed.
    saved_names = trainable_names(model) if adapter else None
    optimizer = make_optimizer(param_groups)

    encoded = {k: recipe.task_kind.encode(recipe, tokenizer, v, space) for k, v in splits.items()}
    emptied = [f"{k}: all {len(splits[k])} example(s) were left with nothing to train on by truncation at "
               f"model.max_length {recipe.model.max_length} (first: {v.dropped[0]}); raise model.max_length"
               for k, v in encoded.items() if len(v) == 0 and getattr(v, "dropped", None)]
    if emptied:
        raise DataError(emptied)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    reference_note = None
    if reference_mode == "precomputed":
        reference_note = _precompute_reference(model, encoded, t.eval_batch_size, pad_id, recipe.method.is_adapter,
                                               runtime)
    if weak_data is not None and recipe.weak.soft:
        encoded["train"].labels = weak_data.targets  # cross-entropy against the label model's probabilities
    teacher_note, transfer = None, []
    if distill_info is not None:
        from .distill.setup import add_transfer_rows, attach_cached_outputs
        transfer, transfer_notes = add_transfer_rows(recipe, splits, encoded["train"], tokenizer, space)
        for w in transfer_notes:
            console.print(f"[yellow]warning:[/] {w}")
        distill_info["transfer_rows"] = len(transfer)
        if distill_info["cache"]:
            teacher_note = attach_cached_outputs(recipe, teacher, splits["train"] + transfer, encoded["train"], space)
    train, validation = encoded["train"], encoded.get("validation")
    metric = t.metric or task.default_metric

    def set_train_mode():
        model.train()
        if plan is not None:
            set_frozen_modules_eval(model, plan, loop.state.stage)
        freeze_batchnorm_statistics(model)

    best_path = run_dir / "checkpoints" / "best" / "model.safetensors"
    # Decisions (best step, early stopping, unfreezing) are taken on every rank from the same reduced metrics;
    # files, logs and progress are rank 0's.
    cbs: list = [KeepBest(metric, higher_is_better(metric),
                          t.early_stopping.min_delta if t.early_stopping else 0.0, best_path, saved_names,
                          write=runtime.is_main)]
    if t.early_stopping:
        cbs.append(EarlyStopping(t.early_stopping.patience))
    if plan is not None and plan.gradual:
        cbs.append(GradualUnfreezing(plan, recipe.method.unfreeze_every, lambda stage: apply_plan(model, plan, stage)))
    prompt_format = _prompt_format(recipe, tokenizer, splits)
    if runtime.is_main:
        if recipe.task.sample_prompts:  # (a key of the tasks that generate)
            from .generation import SampleGenerations
            cbs.append(SampleGenerations(tokenizer, recipe.task.sample_prompts, run_dir / "samples.jsonl",
                                         recipe.task.max_new_tokens, prompt_format == "chat-template"))
        cbs.append(JsonlLogger(run_dir / "metrics.jsonl", t.log_every))
        if tensorboard_available():
            cbs.append(TensorBoardLogger(run_dir / "tensorboard"))
        if t.progress:
            cbs.append(ProgressBar(console))
    cbs.extend(callbacks or [])  # on every rank, like the loop itself: a callback that writes asks loop.runtime

    loop = Loop(model=model, optimizer=optimizer, scheduler=None, task=task, train=train, validation=validation,
                cfg=t, num_labels=len(space.names), threshold=recipe.task.threshold, pad_id=pad_id,
                data_seed=data_seed, run_dir=run_dir, callbacks=cbs, set_train_mode=set_train_mode,
                saved_names=saved_names, runtime=runtime)
    loop.scheduler = make_scheduler(optimizer, t.schedule, warmup_steps(loop.total_steps, t.warmup_ratio, t.warmup_steps),
                                    loop.total_steps)
    names_now = [g["name"] for g in param_groups]
    if resume_from is not None:
        check_world_size(resume_from, runtime.world_size)
        saved = load_checkpoint(resume_from, model, optimizer, loop.scheduler, saved_names, runtime, loop.scaler)
        if saved.get("param_groups") not in (None, names_now):
            raise RunDirError(f"{resume_from}: its optimizer groups {saved['param_groups']} differ from this recipe's")
        saved.pop("param_groups", None)
        loop.state = LoopState(**saved)
        if runtime.is_main:
            truncate_jsonl(run_dir / "metrics.jsonl", loop.state.global_step)
        console.print(f"resuming from {resume_from} (step {loop.state.global_step})")
    elif runtime.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    _report_start(console, recipe, loaded, groups, model, splits, origin, encoded, run_dir, plan, reference_mode)
    if reference_note:
        console.print(reference_note)
    if weak_data is not None:
        console.print("  " + _weak_line(recipe, weak_data))
    if loaded.kept_layers is not None:
        console.print(f"  student cut from {recipe.model.name}: blocks {loaded.kept_layers} of its {loaded.blocks_before} kept")
    if distill_info is not None:
        from .distill.setup import describe
        console.print(describe(distill_info))
        if teacher_note:
            console.print(teacher_note)
    if adaptation is not None:
        console.print(f"  starting from the adapted model {model_recipe.model.name}")
    started = time.perf_counter()
    loop.run()
    train_seconds = time.perf_counter() - started

    # Rank 0's disk decides (another machine's rank need not see it); its weights reach every rank.
    if t.restore_best and validation is not None and runtime.gather(best_path.exists())[0]:
        restore_weights(model, best_path, saved_names, runtime)
    weak_report, steps, best_step = None, loop.state.global_step, loop.state.best_step
    if weak_data is not None:
        weak_report = _weak_stages(recipe, weak_data, model, tokenizer, groups, encoded, task, space, pad_id, run_dir,
                                   data_seed, saved_names, set_train_mode, console, loop.state, train_seconds,
                                   callbacks or [], runtime)
        train_seconds = weak_report.pop("train_seconds")
        st = weak_report.get("self_training")
        if st:  # steps counted across both stages: self-training's step k is step `steps + k` of the run
            best_step = steps + st["best_step"] if st["best_step"] is not None else best_step
            steps += st["steps"]
    final_stage_trainable, total = count_parameters(model)
    metrics = {}
    if weak_report is not None and weak_report.pop("model_is_stage_one"):
        metrics = dict(weak_report["stage_one"]["metrics"])  # measured already, on the same weights
    for name in ("validation", "test"):
        if name in encoded and name not in metrics:
            metrics[name] = run_evaluation(model, encoded[name], task, len(space.names), recipe.task.threshold,
                                           t.eval_batch_size, pad_id, runtime)
    kept = None
    if runtime.fsdp:  # the whole model (or adapter and head) gathered onto rank 0, which saves it
        from .engine.sharding import gather_state
        kept = gather_state(model, saved_names)
    if not runtime.is_main:  # rank 0 writes the model and the summary; every rank returns the same metrics
        runtime.barrier()
        return RunResult(run_dir=run_dir, model_dir=run_dir / ("adapter" if adapter else "model"), metrics=metrics,
                         trainable_parameters=final_stage_trainable, total_parameters=total,
                         train_seconds=round(train_seconds, 2), best_step=best_step, steps=steps,
                         method=recipe.method.name, task=recipe.task.type, lr=recipe.lr)

    if adapter:
        model_dir = run_dir / "adapter"
        stored = save_adapter(model, tokenizer, model_dir, kept)
    else:
        model_dir = run_dir / "model"
        carried = recipe.task_kind.saved_extras(model, loaded)
        stored = save_model(model, tokenizer, model_dir, carried, kept)
    result = RunResult(run_dir=run_dir, model_dir=model_dir, metrics=metrics, trainable_parameters=final_stage_trainable,
                       total_parameters=total, train_seconds=round(train_seconds, 2), best_step=best_step,
                       steps=steps, method=recipe.method.name, task=recipe.task.type, lr=recipe.lr, stored_bytes=stored,
                       files={"adapter" if adapter else "model": model_dir, "recipe": run_dir / "recipe.yaml",
                              "metrics": run_dir / "metrics.jsonl", "summary": run_dir / "summary.json"})
    summary = {**result.to_json(), "labels": space.names, "data": origin,
               "rows": {k: len(v) for k, v in splits.items()},
               "truncated": {k: v.truncated for k, v in encoded.items()},
               "dropped": {k: len(getattr(v, "dropped", None) or []) for k, v in encoded.items()},
               "prompt_format": prompt_format, "reference": reference_mode,
               "new_head_parameters": loaded.new_parameters, "history": loop.state.history}
    if weak_report is not None:
        summary["weak"] = weak_report
    if loaded.kept_layers is not None:
        summary["kept_layers"] = {"kept": loaded.kept_layers, "of": loaded.blocks_before}
    if adaptation is not None:
        summary["adaptation"] = adaptation
    if distill_info is not None:
        if recipe.distill.report:
            from .distill.setup import distillation_report
            distill_info["report"] = distillation_report(recipe, teacher, model, splits, encoded, metrics, task, space,
                                                         pad_id, run_dir, console, stored, runtime.alone())
        summary["distillation"] = distill_info
    summary["runtime"] = {"device": str(runtime.device), "precision": runtime.precision,
                          "world_size": runtime.world_size}
    _write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    print_summary(console, result)
    runtime.barrier()
    return result


def _load_data(recipe, notes: list):
    """(splits, label space, where each split came from, weak data or None)."""
    if recipe.weak is None:
        return (*load_examples(recipe.data, recipe.task_kind, notes), None)
    from .weak.data import load_weak_data
    weak_data, evaluation, origin = load_weak_data(recipe)
    if not weak_data.labelled:
        raise DataError([f"{recipe.data.train}: no training row got a weak label (every source abstained on every "
                         "row); check the rules, or weak.column and weak.abstain"])
    if "validation" not in evaluation:
        notes.append("no data.validation: weak labels are not gold, so none is carved from the training file; without "
                     "gold validation rows the best step cannot be picked and self-training runs blind")
    return {"train": weak_data.labelled, **evaluation}, weak_data.space, origin, weak_data


def _weak_line(recipe, weak_data) -> str:
    w, summary = recipe.weak, weak_data.summary()
    source = f"column {w.column!r}" if w.column else f"{len(weak_data.function_names)} labeling functions and " \
        f"{w.label_model}"
    line = (f"weak labels ({source}, {'soft' if w.soft else 'hard'}): {summary['labelled']} of {summary['rows']} rows "
            f"labelled, {summary['unlabelled']} without a label")
    quality = summary.get("label_model")
    if quality and quality.get("accuracy") is not None:
        line += f"; {quality['accuracy']:.1%} right against the {quality['scored_rows']} gold labels of weak.gold_column"
    return line


def _param_groups(recipe, model, groups, lr: float):
    t = recipe.training
    if recipe.method.is_adapter:
        return adapter_param_groups(model, lr, t.head_lr, t.weight_decay)
    rates = group_learning_rates(groups, lr, t.head_lr, recipe.method.layer_lr_decay, recipe.method.group_lr)
    return build_param_groups(model, groups, rates, t.weight_decay)


def _weak_stages(recipe, weak_data, model, tokenizer, groups, encoded, task, space, pad_id, run_dir, data_seed,
                 saved_names, set_train_mode, console, stage_one, train_seconds, extra_callbacks, runtime) -> dict:
    """After fine-tuning on the weak labels: write the rules' analysis and the labels, measure the first stage, then
    run COSINE self-training when the recipe asks for it (the model ends as its best validation step)."""
    from .data.collate import encode_texts
    from .data.dataset import TextExample
    from .weak.analysis import print_analysis, write_analysis
    from .weak.data import write_weak_labels
    from .weak.self_training import run_self_training

    t = recipe.training
    folder = run_dir / "weak"
    if runtime.is_main:
        if weak_data.analysis is not None:
            write_analysis(weak_data.analysis, folder, {"label_quality": weak_data.quality})
            print_analysis(console, weak_data.analysis)
        write_weak_labels(weak_data, folder / "labels.jsonl")
    evaluate = lambda: {k: run_evaluation(model, encoded[k], task, len(space.names), 0.5, t.eval_batch_size, pad_id,  # noqa: E731
                                          runtime) for k in ("validation", "test") if k in encoded}
    report = {**weak_data.summary(), "stage_one": {"best_step": stage_one.best_step, "steps": stage_one.global_step,
                                                   "seconds": round(train_seconds, 2), "metrics": evaluate()}}
    st = recipe.weak.self_training
    if st is None:
        return {**report, "train_seconds": train_seconds, "model_is_stage_one": True}
    rows = [TextExample(text=ex.text, source=ex.source) for ex in weak_data.labelled + weak_data.unlabelled]
    split = encode_texts(tokenizer, rows, recipe.model.max_length)  # targets: pseudo-labels
    optimizer = make_optimizer(_param_groups(recipe, model, groups, st.lr or recipe.lr))
    schedule = lambda total: make_scheduler(optimizer, t.schedule, warmup_steps(total, t.warmup_ratio, t.warmup_steps),  # noqa: E731
                                            total)
    pooling = "cls" if getattr(tokenizer, "cls_token_id", None) is not None else "last"
    console.print(f"[bold]self-training[/] (COSINE): {len(rows)} rows ({len(weak_data.unlabelled)} without a weak "
                  f"label), {st.steps} steps, pseudo-labels refreshed every {st.update_every}; threshold "
                  f"{st.threshold:g}, contrastive weight {st.contrastive_weight:g}, confidence weight "
                  f"{st.confidence_weight:g}")
    folder = run_dir / "self-training"
    writes = runtime.is_main
    callbacks = [*([TensorBoardLogger(folder / "tensorboard")] if writes and tensorboard_available() else []),
                 *([ProgressBar(console)] if writes and t.progress else []), *extra_callbacks]
    stage_one_best = run_dir / "checkpoints" / "best" / "model.safetensors"
    # Self-training must beat the first stage's best validation score for its weights to be kept.
    keep_from = stage_one.best_metric if t.restore_best and runtime.gather(stage_one_best.exists())[0] else None
    started = time.perf_counter()
    state, refreshes, best = run_self_training(
        recipe=recipe, model=model, rows=split, validation=encoded.get("validation"), pooling=pooling,
        optimizer=optimizer, make_scheduler=schedule, set_train_mode=set_train_mode, saved_names=saved_names,
        run_dir=folder, num_labels=len(space.names), pad_id=pad_id, data_seed=data_seed,
        callbacks=callbacks, gold=weak_data.self_training_gold, best_so_far=keep_from, runtime=runtime)
    seconds = time.perf_counter() - started
    improved = best is not None and state.best_step is not None
    if t.restore_best and encoded.get("validation") is not None:
        restore_weights(model, best if improved else stage_one_best, saved_names, runtime)
    report["self_training"] = {"best_step": state.best_step if improved else None, "improved": improved,
                               "steps": state.global_step, "seconds": round(seconds, 2), "history": state.history,
                               "pseudo_labels": refreshes, "metrics_at_end": None}
    if not improved:
        console.print("  self-training never beat the first stage's best validation score: the first stage's model "
                      "is kept")
    return {**report, "train_seconds": train_seconds + seconds,
            "model_is_stage_one": not improved and t.restore_best and encoded.get("validation") is not None}


def _apply_method(model, spec, groups, init_seed: int, task):
    """Freeze per the method's plan, or attach an adapter (of the task's PEFT task type). Returns (model to train,
    plan or None for adapters)."""
    if spec.is_adapter:
        return attach_adapter(model, spec, groups, init_seed, task.peft_task_type), None
    plan = build_plan(spec, groups)
    apply_plan(model, plan, 0)
    return model, plan


def _prepare_objective(recipe, task, model, tokenizer) -> Optional[str]:
    """Preference, reward-model and GRPO runs: dropout off, the reference policy (the starting network: called
    before any checkpoint is loaded), GRPO's reward and stop tokens. Returns the reference mode in effect."""
    if "task.disable_dropout" in task.keys and recipe.task.disable_dropout:
        disable_dropout(model)
    if not task.has_reference:
        return None
    task.reference, mode = make_reference(recipe.task.reference, task.reference_needed(recipe), model,
                                          recipe.method.is_adapter)
    if task.uses_reward:
        from .rewards import load_reward
        task.bind(model, tokenizer, load_reward(recipe.task.reward))
    if task.reference is None and recipe.training.metric == "kl":
        raise RecipeError([f"training.metric: kl needs a reference network at evaluation, and task.reference "
                           f"{recipe.task.reference!r} keeps none here ({mode}); use reference: copy, or another metric"])
    return mode


def _precompute_reference(model, encoded: dict, batch_size: int, pad_id: int, adapter: bool, runtime) -> str:
    """Reference log-probs of every pair, from the network before training (adapters: with the adapter disabled),
    stored in the splits: training then runs one forward per batch instead of two. Computed at the training
    precision, so policy and reference agree exactly at the start."""
    from .tasks.preference import AdapterReference, eval_mode, reference_logps

    started = time.perf_counter()

    def logits_of(inputs):
        with torch.no_grad(), runtime.autocast():
            if adapter:
                return AdapterReference().logits(model, inputs)
            with eval_mode(model):
                return model(**inputs).logits
    for split in encoded.values():
        split.reference = reference_logps(split, logits_of, batch_size, pad_id, runtime)
    pairs = sum(len(v) for v in encoded.values())
    return f"  reference log-probs of {pairs} pairs computed in {time.perf_counter() - started:.1f} s"


def _enable_gradient_checkpointing(model) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise RecipeError([f"training.gradient_checkpointing: {type(base).__name__} does not support it; set it to false"])
    # Non-reentrant checkpointing works with frozen inputs (adapters, frozen embeddings) without extra hooks.
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _check_fsdp(recipe) -> None:
    """What a sharded model cannot do yet: sampling runs a different number of forwards on each rank, and every
    forward of a sharded model is a collective of all ranks."""
    problems = []
    if recipe.task_kind.samples:
        problems.append(f"training.distributed: fsdp does not run task {recipe.task.type} (each rank samples completions of its own "
                        "length); use ddp")
    if recipe.task.sample_prompts:
        problems.append("task.sample_prompts: sample generations run on rank 0 alone, which a sharded model cannot; "
                        "remove them or use training.distributed: ddp")
    if recipe.model.quantization:
        problems.append(f"model.quantization {recipe.model.quantization!r} with training.distributed: fsdp: "
                        "bitsandbytes weights are not sharded here; use ddp (one quantized copy per process)")
    if recipe.distill is not None:
        problems.append("training.distributed: fsdp does not run distillation yet (its report times the student on rank "
                        "0 alone); use ddp")
    if problems:
        raise RecipeError(problems)


def save_model(model, tokenizer, model_dir: Path, carried: Optional[dict] = None, state: Optional[dict] = None) -> int:
    """Hugging Face format (config with id2label/label2id, model.safetensors, tokenizer), written then renamed.
    `carried`: tensors the model has no place for but a later fine-tune should find (an adapted encoder's pooler).
    `state`: the weights gathered from a sharded model. Returns the weights' size in bytes."""
    for p in model.parameters():  # saved models should load as ordinary trainable models
        p.requires_grad_(True)
    with atomic_folder(model_dir) as tmp:
        if state is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            from .engine.sharding import save_gathered
            save_gathered(model, state, tmp)
        tokenizer.save_pretrained(tmp)
        if carried:
            from safetensors.torch import load_file, save_file
            file = Path(tmp) / "model.safetensors"
            save_file({**load_file(str(file)), **{k: v.contiguous() for k, v in carried.items()}}, str(file),
                      metadata={"format": "pt"})
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def _report_start(console, recipe, loaded, groups, model, splits, origin, encoded, run_dir, plan, reference_mode=None):
    trainable, total = count_parameters(model)
    rows = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    init = "" if recipe.model.pretrained else " · randomly initialized"
    console.print(f"[bold]tuneforge[/] {recipe.task.type} · model {recipe.model.name} ({loaded.path}){init} · "
                  f"method {recipe.method.name} · lr {recipe.lr:g}")
    console.print(f"  data: {rows} rows; " + "; ".join(f"{k} from {v}" for k, v in origin.items()))
    cut = {k: v.truncated for k, v in encoded.items() if v.truncated}
    if cut:
        console.print(f"  truncated to {recipe.model.max_length} tokens: " + ", ".join(f"{k} {n}" for k, n in cut.items()))
    dropped = {k: v.dropped for k, v in encoded.items() if getattr(v, "dropped", None)}
    for k, sources in dropped.items():
        console.print(f"  [yellow]dropped from {k}:[/] {len(sources)} example(s) with nothing left to train on after "
                      f"truncation (no target token, or a pair's two sides made identical; first: {sources[0]}); "
                      "raise model.max_length to keep them")
    packed = {k: (v.examples, len(v)) for k, v in encoded.items() if getattr(v, "position_ids", None) is not None}
    if packed:
        console.print("  packed: " + ", ".join(f"{k} {n} examples into {r} rows" for k, (n, r) in packed.items()))
    new = loaded.new_parameters
    shown = "all (random initialization)" if not recipe.model.pretrained else ", ".join(new) or "none"
    console.print(f"  layer groups: {group_summary(groups.order)}; new head weights: {shown}")
    stage_note = " (at the first unfreezing stage)" if plan is not None and plan.gradual else ""
    if recipe.method.is_adapter:
        stage_note = " (adapter and head; the pre-trained weights are frozen)" if not recipe.task_kind.generative \
            else " (adapter; the pre-trained weights are frozen)"
    console.print(f"  trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%){stage_note}")
    if recipe.task_kind.has_reference:
        shown = {"adapter": "the network with its adapter disabled", "copy": "a frozen copy of the starting network",
                 "precomputed": "log-probs of the starting network, computed once",
                 "none": "none"}[reference_mode]
        console.print(f"  objective: {recipe.task_kind.describe_objective(recipe)}; reference: {shown}")
    if "task.disable_dropout" in recipe.task_kind.keys and recipe.task.disable_dropout:
        console.print("  dropout: off, the adapter's included (task.disable_dropout)")
    console.print(f"  run directory: {run_dir}")


def _prompt_format(recipe, tokenizer, splits) -> Optional[str]:
    """How a causal-lm or preference run's prompts were rendered in training, so generation renders them the same
    way."""
    return recipe.task_kind.prompt_format(recipe, tokenizer, splits["train"][0])


def group_summary(order: list[str]) -> str:
    """'embeddings, layer.0 ... layer.15 (16 blocks), head' rather than eighteen names."""
    blocks = [g for g in order if g.startswith("layer.")]
    if len(blocks) <= 6:
        return ", ".join(order)
    rest = [g for g in order if not g.startswith("layer.")]
    middle = f"{blocks[0]} ... {blocks[-1]} ({len(blocks)} blocks)"
    return ", ".join([*rest[:1], middle, *rest[1:]]) if rest and rest[0] == "embeddings" else ", ".join([middle, *rest])


def check_shared_storage(run_dir: Path, runtime, resume_from, recipe) -> None:
    """Whether every rank sees rank 0's run folder (one machine, or storage the machines share). Needed to resume
    (every rank reads the checkpoint), for sharded checkpoints (every rank writes its part) and for an adaptation
    stage (the task starts from its folder); without it those are refused on every rank alike."""
    import secrets

    token = runtime.on_main(lambda: _write_token(run_dir, secrets.token_hex(8)))
    file = run_dir / RANKS_FILE
    sees = file.exists() and file.read_text() == token
    if all(runtime.gather(sees)):
        return
    needs = [why for why, on in (("--resume", resume_from is not None), ("training.distributed: fsdp", runtime.fsdp),
                                 ("adapt", recipe.adapt is not None)) if on]
    if needs:
        raise RunDirError(f"output.dir {str(run_dir)!r} is not on storage every machine of the run sees (a rank on "
                          f"another machine cannot find rank 0's files), and {', '.join(needs)} needs it; put "
                          "output.dir on a shared file system")


def _write_token(run_dir: Path, token: str) -> str:
    (run_dir / RANKS_FILE).write_text(token)
    return token


def check_run(recipe: Recipe, task, space, splits, config, tokenizer, plan, world_size: int = 1) -> list[str]:
    """Checks that need the data and the model; raise RecipeError for errors, return warnings."""
    problems, warnings = [], []
    t = recipe.training
    metric = t.metric or task.default_metric
    names = ["loss", *task.make_metrics(max(len(space.names), 1), recipe.task.threshold).compute()]
    if metric not in names:
        problems.append(f"training.metric: {metric!r} is not a metric of task {recipe.task.type!r}; "
                        f"choose one of {', '.join(names)}")
    if t.early_stopping and "validation" not in splits:
        problems.append("training.early_stopping needs validation data: give data.validation or a "
                        "data.validation_fraction above 0")
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    if limits and recipe.model.max_length > min(limits):
        problems.append(f"model.max_length: {recipe.model.max_length} is more than {recipe.model.name!r} takes "
                        f"({min(limits)} tokens); use at most {min(limits)}")
    elif limits and task.samples and recipe.model.max_length + recipe.task.max_new_tokens > min(limits):
        problems.append(f"model.max_length {recipe.model.max_length} (the prompt) + task.max_new_tokens "
                        f"{recipe.task.max_new_tokens} (the completion) is more than {recipe.model.name!r} takes "
                        f"({min(limits)} positions); lower one of them")
    elif limits and recipe.method.name in ("prefix", "prompt") and \
            recipe.model.max_length + recipe.method.num_virtual_tokens > min(limits):
        problems.append(f"model.max_length {recipe.model.max_length} + method.num_virtual_tokens "
                        f"{recipe.method.num_virtual_tokens} is more than {recipe.model.name!r} takes "
                        f"({min(limits)} positions); lower one of them")
    if problems:
        raise RecipeError(problems)
    if plan is not None and plan.gradual:
        # The stage the last optimizer step trains at, by the schedule the loop itself uses.
        per_epoch, total = count_steps(len(splits["train"]), t, world_size)
        last = LoopState(epoch=(total - 1) // per_epoch, global_step=total - 1)
        reached = GradualUnfreezing(plan, recipe.method.unfreeze_every, None).stage_for(last) + 1
        if reached < plan.num_stages:
            never = plan.groups.order[: plan.num_stages - reached]
            warnings.append(f"gradual unfreezing reaches {reached} of {plan.num_stages} stages in this run: "
                            f"{', '.join(never)} never train. Unfreeze more often (method.unfreeze_every) or train longer")
    return warnings


def validate(recipe: RecipeLike, overrides: Optional[list[str]] = None) -> dict:
    """Check recipe, data and model without training; raise on the first class of problems, return a report."""
    from .models.loading import tokenizer_and_config
    from .models.truncate import truncate_for_recipe

    recipe = load_recipe(recipe, overrides)
    runtime = runtime_for(recipe.training, distributed=False)  # the device and precision must exist here
    if recipe.model.quantization:
        from .models.quantization import check_quantization
        check_quantization(recipe.model.quantization, runtime.device)
    task = task_for(recipe)
    notes: list[str] = []
    splits, space, origin, weak_data = _load_data(recipe, notes)
    kind = recipe.task_kind
    model = None
    if not kind.images:
        path, tokenizer, config = tokenizer_and_config(recipe.model.name, recipe.model.trust_remote_code)
        model = kind.model_skeleton(recipe, space, tokenizer, config)  # structure only: no memory, no weights read
    if model is None:  # a model with no meta-device path (image models): loaded with weights
        with torch.random.fork_rng(devices=[]):
            loaded = load_for_recipe(recipe, task, space, 0)
        model, tokenizer, config, path = loaded.model, loaded.tokenizer, loaded.model.config, loaded.path
    kept, blocks_before = truncate_for_recipe(model, recipe.model) if not kind.images else (None, None)
    teacher = None
    if recipe.distill is not None:  # the teacher must load and agree with the student before a run starts
        from .distill.setup import check_distillation
        from .distill.teacher import load_teacher
        loaded_teacher = load_teacher(recipe, space.names, tokenizer)
        check_distillation(recipe, loaded_teacher, model, kept, blocks_before)
        agrees = "its tokenizer matches the student's" if kind.generative else \
            "its labels match the data's"
        teacher = f"{loaded_teacher.source} (loaded; {agrees})"
    adaptation = None
    if recipe.adapt is not None:
        from .adapt import adaptation_objective, adaptation_texts
        texts, counts = adaptation_texts(recipe)
        adaptation = (f"adaptation first ({adaptation_objective(recipe)}) on {len(texts)} unlabeled rows: "
                      + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if kind.uses_reward:  # the reward must import and be callable before a run starts
        from .rewards import load_reward
        load_reward(recipe.task.reward)
    groups = find_layer_groups(model)
    with torch.random.fork_rng(devices=[]):  # adapter initialization must not move the caller's RNG
        model, plan = _apply_method(model, recipe.method, groups, 0, kind)
    warnings = check_run(recipe, task, space, splits, config, tokenizer, plan)
    trainable, total = count_parameters(model)
    truncated = {k: kind.encode(recipe, tokenizer, v, space).truncated
                 for k, v in splits.items()}
    weak = {**weak_data.summary(), "line": _weak_line(recipe, weak_data)} if weak_data is not None else None
    return {"rows": {k: len(v) for k, v in splits.items()}, "data": origin, "labels": space.names, "weak": weak,
            "truncated": truncated, "layer_groups": groups.order, "trainable_parameters": trainable,
            "total_parameters": total, "model_path": str(path), "teacher": teacher, "adaptation": adaptation,
            "warnings": notes + warnings}
