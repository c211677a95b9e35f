"""Domain adaptation before the task (DAPT / TAPT, Gururangan et al., 2020): continue the model's own
pre-training objective on unlabeled in-domain text, then fine-tune the adapted model on the task.

A recipe's `adapt:` section runs the first stage as an ordinary tuneforge run in RUN_DIR/adapt (masked-LM for
encoders, causal-LM for decoders) on the text of `adapt.data` ('task': the task's own training text, before
data.limit_train, so a few hundred labels can sit on thousands of unlabeled rows), written once to
RUN_DIR/adapt-data/text.jsonl. A finished first stage is reused when the run continues."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError, RecipeError, RunDirError
from .tasks import TASKS

TASK_ONLY_TRAINING = {"head_lr", "head_seed", "data_seed", "metric", "early_stopping", "restore_best", "eval_every",
                      "warmup_steps", "keep_checkpoints"}


def adaptation_objective(recipe) -> str:
    if recipe.adapt.objective != "auto":
        return recipe.adapt.objective
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from .models.loading import tokenizer_and_config
    _, _, config = tokenizer_and_config(recipe.model.name, recipe.model.trust_remote_code)
    return "masked-lm" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal-lm"


def adaptation_texts(recipe) -> tuple[list[str], dict[str, int]]:
    """Every text of adapt.data, in order, and how many came from each source."""
    from .data.splits import load_examples
    from .data.masked import read_text_rows

    a = recipe.adapt
    texts, counts = [], {}
    for source in a.data:
        if source == "task":
            # The task's training rows, after validation/test are carved off, before limit_train: unlabeled use.
            spec = recipe.data.model_copy(update={"limit_train": None})
            splits, _, _ = load_examples(spec, recipe.task_kind)
            rows = [getattr(ex, "text", None) for ex in splits["train"]]
            if any(not isinstance(r, str) for r in rows):
                raise RecipeError(["adapt.data: 'task' reads the task's text column; this task's rows have none "
                                   "(chat or prompt/completion rows): give text files instead"])
            texts.extend(rows)
            counts["task (training text)"] = len(rows)
        else:
            rows = read_text_rows(source, "auto", a.text_column or recipe.data.text_column)
            texts.extend(r.text for r in rows)
            counts[source] = len(rows)
    if not texts:
        raise DataError(["adapt.data: no text"])
    return texts, counts


def adaptation_recipe(recipe, text_file: Path, objective: str):
    from .recipe import parse_recipe

    a, t = recipe.adapt, recipe.training
    task = {"type": objective}
    if "task.mlm_probability" in TASKS[objective].keys:
        task["mlm_probability"] = a.mlm_probability
    # The task's training settings carry over, except those about the task's own head, metric or step count.
    training = {**t.model_dump(exclude=TASK_ONLY_TRAINING), "epochs": a.epochs, "max_steps": a.max_steps,
                "lr": a.lr, "batch_size": a.batch_size or t.batch_size}
    child = {"model": {"name": recipe.model.name, "max_length": recipe.model.max_length,
                       "trust_remote_code": recipe.model.trust_remote_code},
             "task": task,
             "data": {"train": str(text_file.resolve()), "format": "jsonl", "text_column": "text",
                      "validation_fraction": a.validation_fraction, "test_fraction": 0.0,
                      "split_seed": recipe.data.split_seed},
             "method": {"name": "full"}, "training": training,
             "output": {"dir": str(Path(recipe.output.dir) / "adapt")}}
    return parse_recipe(child, "adapt (continued pre-training stage)")


# Callbacks for the adaptation stage's loop. The callbacks given to `fine_tune` (a study's pruning or discard
# hooks, for instance) watch the task's loop only; this list is for those that should watch this stage.
stage_callbacks: list = []


def run_adaptation(recipe, *, resume: bool, overwrite: bool, console, train) -> tuple[Path, dict]:
    """Run (or reuse) the adaptation stage with `train` (fine_tune); returns the adapted model's folder and the
    stage's report. Called once the whole recipe has been validated: only then may `overwrite` remove an old run."""
    from .engine.runtime import runtime_for
    from .rundir import (check_run_dir, check_shared_storage, mark_run_dir, recipe_differences, remove_run,
                         saved_recipe, writing)
    from . import runlock

    run_dir = Path(recipe.output.dir)
    runtime = runtime_for(recipe.training)
    objective = adaptation_objective(recipe)
    texts, counts = adaptation_texts(recipe)
    text_file = run_dir / "adapt-data" / "text.jsonl"
    child = adaptation_recipe(recipe, text_file, objective)
    stage_dir = Path(child.output.dir)

    def prepare() -> bool:  # the run folder is rank 0's; its answer (or error) reaches every rank
        runlock.acquire(run_dir)  # held until the whole run (this stage and the task's) ends
        check_run_dir(run_dir, overwrite)
        if overwrite and run_dir.exists():
            remove_run(run_dir, ())  # both stages are redone
        mark_run_dir(run_dir)
        text_file.parent.mkdir(exist_ok=True)
        body = "".join(json.dumps({"text": x}) + "\n" for x in texts)
        text_changed = text_file.exists() and text_file.read_text() != body
        started = (stage_dir / "summary.json").exists() or (stage_dir / "checkpoints").is_dir()
        # (The stage's text file lives in the run folder: its path moves with a moved folder; its content counts.)
        differ = [d for d in recipe_differences(saved_recipe(stage_dir), child) if not d.startswith("data.train:")]
        if started and (text_changed or differ):
            # Never reuse (or continue) an adaptation made from other settings or other text under this recipe's name.
            raise RunDirError(f"{stage_dir} holds an adaptation stage made with other adapt settings, model or text "
                              "than this recipe's; pass --overwrite to redo both stages, or set output.dir to a new folder")
        if not text_file.exists() or text_changed:
            tmp = text_file.with_name("text.jsonl.tmp")
            tmp.write_text(body)
            tmp.replace(text_file)
        return (stage_dir / "summary.json").exists()
    def prepare_or_say_why() -> bool:
        with writing(run_dir):
            return prepare()
    finished = runtime.on_main(prepare_or_say_why)
    if runtime.distributed:  # the task stage starts from the adapted folder on every rank
        check_shared_storage(run_dir, runtime, None, recipe)
    console.print(f"[bold]adaptation[/] ({objective}) on {len(texts)} unlabeled rows ("
                  + ", ".join(f"{k}: {v}" for k, v in counts.items()) + f") into {stage_dir}")
    if finished:
        console.print(f"  the adaptation stage finished earlier with these settings: reusing {stage_dir / 'model'}")
    else:
        train(child, resume=resume, console=console, callbacks=list(stage_callbacks))
    summary = json.loads((stage_dir / "summary.json").read_text())
    report = {"objective": objective, "rows": counts, "steps": summary["steps"],
              "seconds": summary["train_seconds"], "metrics": summary["metrics"], "dir": str(stage_dir),
              "new_head_parameters": summary.get("new_head_parameters", [])}
    return stage_dir / "model", report
