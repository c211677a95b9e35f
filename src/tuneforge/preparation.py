"""Getting a run ready: its data (or a stage's), the method applied to the model, the objective's reference and
reward, the optimizer's parameter groups, the report printed at the start."""
from __future__ import annotations

import time
from typing import Optional

import torch

from .adapters import adapter_param_groups, attach_adapter
from .data.splits import load_examples
from .errors import RecipeError
from .methods import apply_plan, build_param_groups, build_plan, count_parameters
from .methods.param_groups import group_learning_rates
from .tasks.preference import disable_dropout, make_reference


def load_data(recipe, notes: list, stages=()):
    """(splits, label space, where each split came from): a stage's (weak labels), or the task's data read."""
    for stage in stages:
        loaded = stage.load_data(recipe, notes)
        if loaded is not None:
            return loaded
    return load_examples(recipe.data, recipe.task_kind, notes)


def param_groups(recipe, model, groups, lr: float):
    t = recipe.training
    if recipe.method.is_adapter:
        return adapter_param_groups(model, lr, t.head_lr, t.weight_decay)
    rates = group_learning_rates(groups, lr, t.head_lr, recipe.method.layer_lr_decay, recipe.method.group_lr)
    return build_param_groups(model, groups, rates, t.weight_decay)


def apply_method(model, spec, groups, init_seed: int, task):
    """Freeze per the method's plan, or attach an adapter (of the task's PEFT task type). Returns (model to train,
    plan or None for adapters)."""
    if spec.is_adapter:
        return _fp32_where_trained(attach_adapter(model, spec, groups, init_seed, task.peft_task_type)), None
    plan = build_plan(spec, groups)
    apply_plan(model, plan, 0)
    return _fp32_where_trained(model), plan


def _fp32_where_trained(model):
    """Trained weights loaded in fp16 (model.dtype float16) are kept in fp32: the gradient scaler unscales only fp32
    gradients, and AdamW's epsilon vanishes in fp16. The frozen rest stays fp16. (bf16 weights train as they are.)"""
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.float16:
            param.data = param.data.float()
    return model


def prepare_objective(recipe, task, model, tokenizer) -> Optional[str]:
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


def precompute_reference(model, encoded: dict, batch_size: int, pad_id: int, adapter: bool, runtime) -> str:
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


def enable_gradient_checkpointing(model) -> None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise RecipeError([f"training.gradient_checkpointing: {type(base).__name__} does not support it; set it to false"])
    # Non-reentrant checkpointing works with frozen inputs (adapters, frozen embeddings) without extra hooks.
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def report_start(console, recipe, loaded, groups, model, splits, origin, encoded, run_dir, plan, reference_mode=None):
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
    windowed = {k: (v.split_rows, len(v)) for k, v in encoded.items() if getattr(v, "split_rows", 0)}
    if windowed:
        console.print(f"  longer than {recipe.model.max_length} tokens, split into overlapping windows (not cut): "
                      + ", ".join(f"{k} {n} examples ({w} windows in all)" for k, (n, w) in windowed.items()))
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


def group_summary(order: list[str]) -> str:
    """'embeddings, layer.0 ... layer.15 (16 blocks), head' rather than eighteen names."""
    blocks = [g for g in order if g.startswith("layer.")]
    if len(blocks) <= 6:
        return ", ".join(order)
    rest = [g for g in order if not g.startswith("layer.")]
    middle = f"{blocks[0]} ... {blocks[-1]} ({len(blocks)} blocks)"
    return ", ".join([*rest[:1], middle, *rest[1:]]) if rest and rest[0] == "embeddings" else ", ".join([middle, *rest])
