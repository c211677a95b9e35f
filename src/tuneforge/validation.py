"""Checks before a run: `validate` (recipe, data and model, without training) and the checks that need the loaded
data and model (`check_run`), plus what a sharded (FSDP) run cannot do yet."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from .engine.callbacks import GradualUnfreezing
from .engine.loop import LoopState, count_steps
from .engine.runtime import runtime_for
from .errors import DataError, RecipeError
from .methods import count_parameters
from .models import find_layer_groups, load_for_recipe
from .preparation import apply_method, load_data
from .recipe import Recipe, load_recipe
from .stages import stages_for
from .tasks import task_for

RecipeLike = Union[str, Path, dict, Recipe]


def check_run(recipe: Recipe, task, space, splits, config, tokenizer, plan, world_size: int = 1) -> list[str]:
    """Checks that need the data and the model; raise RecipeError for errors, return warnings."""
    problems, warnings = [], []
    t = recipe.training
    metric = t.metric or task.default_metric
    names = ["loss", *task.metric_names(space, recipe.task.threshold)]
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
    if recipe.task_kind.images:  # every image file decodes, not just its header: before a run folder is made
        from .data.image_check import undecodable_images
        broken = undecodable_images(splits)
        if broken:
            raise DataError(broken)
    if splits.get("train"):
        warnings.extend(task.tokenizer_warnings(recipe, tokenizer, splits["train"][0]))
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
    from .models.weights_check import check_model_weights

    recipe = load_recipe(recipe, overrides)
    from .tracking import check_installed
    check_installed(recipe.training.report_to)  # a tracker asked for must be installed
    runtime = runtime_for(recipe.training, distributed=False)  # the device and precision must exist here
    if recipe.model.quantization:
        from .models.quantization import check_quantization
        check_quantization(recipe.model.quantization, runtime.device)
    task = task_for(recipe)
    notes: list[str] = []
    stages = stages_for(recipe)
    splits, space, origin = load_data(recipe, notes, stages)
    kind = recipe.task_kind
    model = None
    if not kind.images:
        path, tokenizer, config = tokenizer_and_config(recipe.model.name, recipe.model.trust_remote_code,
                                                       recipe.task.type)
        model = kind.model_skeleton(recipe, space, tokenizer, config)  # structure only: no memory, no weights read
        if model is not None and recipe.model.pretrained:  # the weights' headers, against that structure
            check_model_weights(model, path, recipe.model.name)
    if model is None:  # a model with no meta-device path (image models): loaded with weights
        with torch.random.fork_rng(devices=[]):
            loaded = load_for_recipe(recipe, task, space, 0)
        model, tokenizer, config, path = loaded.model, loaded.tokenizer, loaded.model.config, loaded.path
    kept, blocks_before = truncate_for_recipe(model, recipe.model) if not kind.images else (None, None)
    report = {"weak": None, "teacher": None, "adaptation": None}
    for stage in stages:
        report.update(stage.validate(recipe, space, tokenizer, model, kept, blocks_before))
    if kind.uses_reward:  # the reward must import and be callable before a run starts
        from .rewards import load_reward
        load_reward(recipe.task.reward)
    groups = find_layer_groups(model)
    with torch.random.fork_rng(devices=[]):  # adapter initialization must not move the caller's RNG
        model, plan = apply_method(model, recipe.method, groups, 0, kind)
    warnings = check_run(recipe, task, space, splits, config, tokenizer, plan)
    trainable, total = count_parameters(model)
    truncated = {k: kind.encode(recipe, tokenizer, v, space).truncated for k, v in splits.items()}
    return {"rows": {k: len(v) for k, v in splits.items()}, "data": origin, "labels": space.names,
            "weak": report["weak"], "truncated": truncated, "layer_groups": groups.order,
            "trainable_parameters": trainable, "total_parameters": total, "model_path": str(path),
            "teacher": report["teacher"], "adaptation": report["adaptation"], "warnings": notes + warnings}


def check_fsdp(recipe) -> None:
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
