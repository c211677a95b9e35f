"""Use a finished run: evaluate it on a labelled file, or predict labels for a file or texts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from .data.collate import encode
from .data.dataset import LabelSpace, TextExample, check_labels, read_examples_from_file
from .engine.evaluate import run_evaluation, run_prediction
from .errors import DataError, RunDirError
from .models import load_run_model
from .recipe import Recipe, load_recipe
from .tasks import get_task


def _open_run(run_dir: str | Path):
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise RunDirError(f"{run_dir}: not a tuneforge run directory (no recipe.yaml)")
    recipe = load_recipe(run_dir / "recipe.yaml")
    model, tokenizer = load_run_model(run_dir / "model")
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))] if recipe.task.type != "regression" else []
    return run_dir, recipe, model, tokenizer, LabelSpace(names)


def _columns(recipe: Recipe):
    d = recipe.data
    if d.dataset:
        return "text", None, "label"
    return d.text_column, d.text_pair_column, d.label_column


def evaluate(run_dir: str | Path, data: str | Path, batch_size: Optional[int] = None) -> dict[str, float]:
    """Metrics of a finished run on a labelled file with the run's columns."""
    run_dir, recipe, model, tokenizer, space = _open_run(run_dir)
    text_col, pair_col, label_col = _columns(recipe)
    examples = read_examples_from_file(data, recipe.task.type, text_col, pair_col, label_col,
                                       recipe.data.label_separator)
    problems: list[str] = []
    check_labels(recipe.task.type, examples, space, problems)
    if problems:
        raise DataError(problems)
    split = encode(tokenizer, examples, recipe.model.max_length, recipe.task.type, space)
    task = get_task(recipe.task.type)
    return run_evaluation(model, split, task, len(space.names), recipe.task.threshold,
                          batch_size or recipe.training.eval_batch_size, tokenizer.pad_token_id or 0)


def predict(run_dir: str | Path, data: str | Path | None = None, texts: Sequence[str] | None = None,
            text_pairs: Sequence[str] | None = None, batch_size: Optional[int] = None) -> list[dict]:
    """Predictions for a file (labels not needed) or for texts: label, score (and all scores)."""
    run_dir, recipe, model, tokenizer, space = _open_run(run_dir)
    text_col, pair_col, _ = _columns(recipe)
    if (data is None) == (texts is None):
        raise ValueError("give either data (a file) or texts")
    if data is not None:
        examples = read_examples_from_file(data, recipe.task.type, text_col, pair_col, None, recipe.data.label_separator)
    else:
        if pair_col and text_pairs is None:
            raise DataError([f"this model reads text pairs; give the second text too (column {pair_col!r})"])
        if not pair_col and text_pairs is not None:
            raise DataError(["this model reads single texts, not pairs; drop the second texts (--text-pair)"])
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise DataError([f"{len(texts)} text(s) but {len(text_pairs)} second text(s); give one --text-pair per --text"])
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        examples = [TextExample(text=t, text_pair=p, source=f"text {i + 1}") for i, (t, p) in enumerate(zip(texts, pairs))]
    split = encode(tokenizer, examples, recipe.model.max_length, recipe.task.type, space)
    logits = run_prediction(model, split, batch_size or recipe.training.eval_batch_size, tokenizer.pad_token_id or 0)
    out = []
    kind = recipe.task.type
    for ex, row in zip(examples, logits):
        record = {"text": ex.text} if ex.text_pair is None else {"text": ex.text, "text_pair": ex.text_pair}
        if kind == "regression":
            record["score"] = float(row[0])
        elif kind == "multi-label":
            probs = torch.sigmoid(row)
            record["labels"] = [space.names[i] for i in range(len(probs)) if probs[i] > recipe.task.threshold]
            record["scores"] = {space.names[i]: round(float(p), 6) for i, p in enumerate(probs)}
        else:
            probs = torch.softmax(row, -1)
            best = int(probs.argmax())
            record["label"], record["score"] = space.names[best], round(float(probs[best]), 6)
            record["scores"] = {space.names[i]: round(float(p), 6) for i, p in enumerate(probs)}
        out.append(record)
    return out


def write_predictions(records: list[dict], path: str | Path) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
