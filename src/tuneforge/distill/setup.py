"""What a distillation run adds to `fine_tune`: the teacher and the objective before training, its cached outputs
once the rows are encoded, and the student-against-teacher report at the end."""
from __future__ import annotations

from pathlib import Path

from ..errors import RecipeError
from .loss import layer_map
from .report import parameters
from .task import DistillationTask
from .teacher import Teacher, ReorderedTeacher, load_teacher, teacher_outputs


def check_distillation(recipe, teacher: Teacher, student, kept, blocks_before) -> tuple[list[int] | None, int]:
    """What needs teacher and student both: readable batches, widths and depths for hidden-state matching.
    Returns (teacher hidden-state index per student block, or None; the student's blocks)."""
    from ..models.layers import find_blocks

    d = recipe.distill
    if not d.uses_cache(recipe.task_kind.generative) and not teacher.same_tokenizer:
        raise RecipeError([f"distill.teacher {d.teacher}: its tokenizer differs from the student's, so it cannot read "
                           "the student's batches; set distill.cache: true (its outputs are then computed from its "
                           "own tokens) and distill.hidden_weight: 0"])
    student_blocks = len(find_blocks(student)[1])
    if not d.hidden_weight:
        return None, student_blocks
    width = getattr(student.config, "hidden_size", None)
    if width is None or width != teacher.hidden_size:
        raise RecipeError([f"distill.hidden_weight: hidden states are matched only between equal widths; the "
                           f"student's are {width}, the teacher's {teacher.hidden_size}. Set hidden_weight: 0"])
    if teacher.method in ("prefix", "prompt"):
        raise RecipeError([f"distill.hidden_weight: the teacher run's method {teacher.method!r} adds virtual tokens "
                           "to its hidden states, so they do not line up with the student's; set hidden_weight: 0"])
    return layer_map(student_blocks, teacher.blocks, kept if blocks_before == teacher.blocks else None), student_blocks


def prepare_distillation(recipe, task, loaded, space, device: str = "cpu") -> tuple[DistillationTask, Teacher, dict]:
    """The teacher, checked against the student, and the objective wrapping the recipe's task."""
    d, generative = recipe.distill, recipe.task_kind.generative
    teacher = load_teacher(recipe, space.names, loaded.tokenizer, device)
    layers, student_blocks = check_distillation(recipe, teacher, loaded.model, loaded.kept_layers, loaded.blocks_before)
    objective = DistillationTask(task, teacher, d.alpha, d.temperature, d.hidden_weight, layers,
                                 causal=generative)
    info = {"teacher": teacher.source, "teacher_parameters": parameters(teacher.model),
            "alpha": d.alpha, "temperature": d.temperature, "hidden_weight": d.hidden_weight,
            "matched_layers": layers, "cache": d.uses_cache(generative), "student_blocks": student_blocks,
            "teacher_blocks": teacher.blocks, "kept_layers": loaded.kept_layers,
            "labels_reordered": teacher.order is not None}
    return objective, teacher, info


def describe(info: dict) -> str:
    kd = f"{info['alpha']:g} x T^2 KL(teacher || student) at T {info['temperature']:g} + {1 - info['alpha']:g} x task loss"
    if info["hidden_weight"]:
        kd += f" + {info['hidden_weight']:g} x hidden-state cosine (student block j <- teacher output {info['matched_layers']})"
    transfer = f"; transfer set: {info['transfer_rows']:,} unlabeled rows (the teacher's targets only)" \
        if info.get("transfer_rows") else ""
    return (f"  distillation: teacher {info['teacher']} ({info['teacher_parameters']:,} parameters, "
            f"{info['teacher_blocks']} blocks; student {info['student_blocks']}); loss {kd}; teacher outputs "
            + ("computed once before training" if info["cache"] else "computed beside the student at every step")
            + transfer)


def add_transfer_rows(recipe, splits, encoded_train, tokenizer, space) -> tuple[list, list[str]]:
    """Rows of distill.unlabeled appended to the training split with no label (-100: the task loss skips them, the
    teacher's targets do not). Returns (the rows, notes)."""
    import torch

    from ..assets import UNLABELED_DATASETS
    from ..data.collate import encode_texts
    from ..data.masked import read_text_rows

    rows = []
    for source in recipe.distill.unlabeled:
        path = UNLABELED_DATASETS[source]() if source in UNLABELED_DATASETS else source
        rows.extend(read_text_rows(path, "auto", recipe.data.text_column))
    if not rows:
        return [], []
    extra = encode_texts(tokenizer, rows, recipe.model.max_length)
    train = encoded_train
    train.input_ids = train.input_ids + extra.input_ids
    if train.token_type_ids is not None:
        train.token_type_ids = train.token_type_ids + extra.token_type_ids
    train.labels = torch.cat([train.labels, torch.full((len(rows),), -100, dtype=train.labels.dtype)])
    train.truncated += extra.truncated
    notes = []
    held_out = {ex.text for name in ("validation", "test") for ex in splits.get(name, [])}
    shared = sum(r.text in held_out for r in rows)
    if shared:
        notes.append(f"distill.unlabeled: {shared} of its {len(rows)} rows are also validation or test texts; the "
                     "student then learns the teacher's view of rows it is measured on")
    return rows, notes


def attach_cached_outputs(recipe, teacher: Teacher, train_examples, encoded_train, space) -> str:
    logits, note = teacher_outputs(teacher, train_examples, recipe.model.max_length, recipe.training.eval_batch_size,
                                   space)
    encoded_train.teacher_logits = logits
    return "  " + note


def _weights_bytes(source: Path) -> int:
    """The teacher's stored weights: a run's model (or base folder's adapter) or a model folder's files."""
    for folder in (source / "model", source / "adapter", source):
        files = list(folder.glob("*.safetensors")) if folder.is_dir() else []
        if files:
            return sum(f.stat().st_size for f in files)
    return 0


def distillation_report(recipe, teacher: Teacher, model, splits, encoded, metrics, task, space, pad_id: int,
                        run_dir: Path, console, stored_bytes: int = 0, runtime=None) -> dict | None:
    """Student and teacher on the test split (else validation): metric, parameters, examples/s at inference."""
    from ..engine.evaluate import run_evaluation
    from .report import measure_speed, print_report, write_report

    name = "test" if "test" in encoded else "validation" if "validation" in encoded else None
    if name is None:
        return None
    t = recipe.training
    metric = t.metric or task.default_metric
    base_task = task.base if isinstance(task, DistillationTask) else task
    if recipe.task_kind.generative:
        teacher_model, teacher_split, teacher_pad = teacher.model, encoded[name], pad_id
    else:
        teacher_model = ReorderedTeacher(teacher)
        teacher_split = recipe.task_kind.encode(recipe, teacher.tokenizer, splits[name], space)
        teacher_pad = getattr(teacher.tokenizer, "pad_token_id", None) or 0
    teacher_metrics = run_evaluation(teacher_model, teacher_split, base_task, len(space.names), recipe.task.threshold,
                                     t.eval_batch_size, teacher_pad, runtime)
    passes = 3
    speed = measure_speed({"teacher": (teacher_model, teacher_split, t.eval_batch_size, teacher_pad),
                           "student": (model, encoded[name], t.eval_batch_size, pad_id)}, passes)
    rows = [{"model": "teacher", "source": teacher.source, "parameters": parameters(teacher.model),
             "stored_bytes": _weights_bytes(Path(teacher.source)),
             "metric": teacher_metrics[metric], "examples_per_second": speed["teacher"]},
            {"model": "student", "source": recipe.model.name + (f" (blocks {recipe.model.keep_layers or 'every ' + str(recipe.model.keep_every)})"
                                                               if recipe.model.keep_layers or recipe.model.keep_every else ""),
             "parameters": parameters(model), "stored_bytes": stored_bytes, "metric": metrics[name][metric],
             "examples_per_second": speed["student"]}]
    report = {"split": name, "metric": metric, "rows": rows, "passes": passes, "rows_measured": len(encoded[name]),
              "batch_size": t.eval_batch_size, "size_ratio": rows[1]["parameters"] / rows[0]["parameters"],
              "speedup": rows[1]["examples_per_second"] / rows[0]["examples_per_second"],
              "metric_gap": rows[1]["metric"] - rows[0]["metric"], "teacher_metrics": teacher_metrics}
    write_report(report, run_dir / "distill")
    print_report(console, report)
    return report
