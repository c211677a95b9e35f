"""A weak-supervision run's data: training rows labelled by rules and a label model (or by a weak-label column),
rows nobody labelled kept aside for self-training, and validation / test files with gold labels.

Validation is never carved from the training file here: its labels are weak, and a validation set must be gold.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..data.dataset import LabelSpace, TextExample, label_text, parse_class_label, read_examples_from_file, row_examples
from ..data.readers import read_table
from ..errors import DataError, RecipeError
from .analysis import Analysis, analyze, label_accuracy
from .label_model import WeakLabels, fit_label_model, majority_vote
from .labeling import ABSTAIN_ID, label_matrix, load_labeling_functions, rules_from_specs, vote_names


@dataclass
class WeakData:
    texts: list[str]                     # every training row, in file order
    sources: list[str]
    labels: WeakLabels                   # per row: class probabilities, and whether any source labelled it
    space: LabelSpace
    gold: Optional[np.ndarray] = None    # gold class ids of training rows (-1 unknown), for measurement only
    matrix: Optional[np.ndarray] = None  # the rules' votes, when rules labelled the rows
    function_names: list[str] = field(default_factory=list)
    analysis: Optional[Analysis] = None
    quality: dict = field(default_factory=dict)   # label model and majority vote against gold
    unlabeled_file: list[TextExample] = field(default_factory=list)

    @property
    def labelled(self) -> list[TextExample]:
        hard = self.labels.hard
        return [TextExample(text=t, label=self.space.names[hard[i]], source=s)
                for i, (t, s) in enumerate(zip(self.texts, self.sources)) if self.labels.covered[i]]

    @property
    def targets(self) -> torch.Tensor:
        """Soft targets of the labelled rows, in the order of `labelled`."""
        return torch.tensor(self.labels.probs[self.labels.covered], dtype=torch.float32)

    @property
    def self_training_gold(self) -> Optional[np.ndarray]:
        """Gold class ids (-1 unknown) in self-training's row order: labelled rows, then `unlabelled`."""
        if self.gold is None:
            return None
        covered = self.labels.covered
        return np.concatenate([self.gold[covered], self.gold[~covered], np.full(len(self.unlabeled_file), -1)])

    @property
    def unlabelled(self) -> list[TextExample]:
        """Rows no source labelled, then the rows of weak.unlabeled: self-training's extra data."""
        rest = [TextExample(text=t, source=s) for i, (t, s) in enumerate(zip(self.texts, self.sources))
                if not self.labels.covered[i]]
        return rest + self.unlabeled_file

    def summary(self) -> dict:
        out = {"rows": len(self.texts), "labelled": int(self.labels.covered.sum()),
               "unlabelled": int((~self.labels.covered).sum()), "unlabeled_file_rows": len(self.unlabeled_file),
               **self.quality}
        return out


def _sorted_names(names: set[str]) -> list[str]:
    return sorted(names, key=int) if names and all(n.lstrip("-").isdecimal() for n in names) else sorted(names)


def _probabilities(value: Any) -> Optional[list]:
    """A cell holding class probabilities: a list, or text starting with '[' (meant as a JSON list: one that does
    not parse comes back as itself, for the caller to report, never as a label named '[0.2; 0.8]')."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return [value]
        return parsed if isinstance(parsed, list) else [value]
    return None


def _probability_row(values: list, k: int) -> Optional[np.ndarray]:
    """k finite, non-negative numbers summing to 1, or None."""
    if len(values) != k or not all(isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in values):
        return None
    row = np.asarray(values, dtype=float)
    if not np.isfinite(row).all() or (row < 0).any() or abs(row.sum() - 1) > 1e-3:
        return None
    return row


def _column_labels(values: list, sources: list[str], column: str, abstain: set[str],
                   declared: Optional[list[str]], gold_names: set[str]) -> tuple[WeakLabels, LabelSpace]:
    """Weak labels from a column: a label name, a list of class probabilities, or an abstain value."""
    problems: list[str] = []
    kinds: list[tuple[str, Any]] = []
    for value, src in zip(values, sources):
        probs = _probabilities(value)
        if probs is not None:
            kinds.append(("probs", probs))
            continue
        missing = value is None or (isinstance(value, float) and math.isnan(value)) or \
            (isinstance(value, str) and not value.strip())
        name = None if missing else label_text(value)
        if missing or name in abstain:
            kinds.append(("abstain", None))
        elif name is None:
            problems.append(f"{src}, column {column!r}: expected a label, a list of class probabilities or an abstain "
                            f"value ({', '.join(sorted(abstain))}), got {type(value).__name__} {value!r}")
            kinds.append(("abstain", None))
        else:
            kinds.append(("label", name))
    names = declared or _sorted_names({v for k, v in kinds if k == "label"} | gold_names)
    space = LabelSpace(list(names))
    ids, k = space.label2id, len(names)
    probs_out = np.full((len(values), k), np.nan)
    covered = np.zeros(len(values), dtype=bool)
    for i, ((kind, v), src) in enumerate(zip(kinds, sources)):
        if kind == "label":
            if v not in ids:
                problems.append(f"{src}, column {column!r}: unknown label {v!r}; known labels: {', '.join(names)}. "
                                "List every label in data.labels")
                continue
            probs_out[i] = np.eye(k)[ids[v]]
            covered[i] = True
        elif kind == "probs":
            row = _probability_row(v, k)
            if row is None:
                problems.append(f"{src}, column {column!r}: class probabilities must be {k} non-negative numbers "
                                f"summing to 1 (labels in order: {', '.join(names)}), got {v!r}")
                continue
            probs_out[i] = row
            covered[i] = True
        if len(problems) >= 20:
            problems.append("... stopped after 20 problems")
            break
    if problems:
        raise DataError(problems)
    return WeakLabels(probs_out, covered), space


def load_weak_data(recipe, progress=None) -> tuple[WeakData, dict[str, list[TextExample]], dict[str, str]]:
    """(the weak training data, gold validation / test splits, where each came from). Every problem in every
    file is reported at once, by file, row and column."""
    d, w = recipe.data, recipe.weak
    problems: list[str] = []
    df = read_table(d.train, d.format)
    if d.limit_train:
        df = df.head(d.limit_train)
    train_rows = row_examples(df, str(d.train), None, d.text_column, None, None, problems)
    for col, key in ((w.column, "weak.column"), (w.gold_column, "weak.gold_column")):
        if col and col not in df.columns:
            problems.append(f"{d.train}: no column {col!r} (columns are: {', '.join(map(str, df.columns))}); set {key}")
    evaluation: dict[str, list[TextExample]] = {}
    for name in ("validation", "test"):
        path = getattr(d, name)
        if path:
            try:
                evaluation[name] = read_examples_from_file(path, parse_class_label, d.text_column, None, d.label_column,
                                                           d.format)
            except DataError as e:
                problems.extend(e.problems)
    unlabeled: list[TextExample] = []
    if w.unlabeled:
        extra = read_table(w.unlabeled, d.format)
        unlabeled = row_examples(extra, str(w.unlabeled), None, d.text_column, None, None, problems)
    if problems:
        raise DataError(problems)
    texts, sources = [ex.text for ex in train_rows], [ex.source for ex in train_rows]
    gold_names = {ex.label for split in evaluation.values() for ex in split}
    gold_train = None
    if w.gold_column:
        gold_train = [None if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())
                      else label_text(v) for v in df[w.gold_column].tolist()]
        gold_names |= {g for g in gold_train if g is not None}

    matrix, function_names, ds = None, [], None
    if w.column:
        labels, space = _column_labels(df[w.column].tolist(), sources, w.column, set(w.abstain), d.labels, gold_names)
    else:
        lfs = (load_labeling_functions(w.labeling_functions) if w.labeling_functions else []) + rules_from_specs(w.rules)
        votes = vote_names(lfs, texts, sources, progress)
        function_names = [lf.name for lf in lfs]
        voted = {v for column in votes for v in column if v is not None}
        space = LabelSpace(list(d.labels) if d.labels else _sorted_names(voted | gold_names))
        _two_classes(space, d.train)
        if w.label_model != "majority" and w.prior_accuracy <= 1 / len(space.names):
            raise RecipeError([f"weak.prior_accuracy: {w.prior_accuracy} is no better than chance among "
                               f"{len(space.names)} classes; give a value above {1 / len(space.names):.3g}"])
        matrix = label_matrix(votes, function_names, space.names, sources)
        fitted = (matrix != ABSTAIN_ID).any()
        ds = fit_label_model(matrix, len(space.names), w.label_model, w.prior_accuracy) if fitted else None
        labels = ds.predict(matrix) if ds is not None else majority_vote(matrix, len(space.names))
        if fitted and ds is None:  # majority vote: the accuracy column still shows the one-coin estimate
            ds = fit_label_model(matrix, len(space.names), "one-coin", w.prior_accuracy)
    _two_classes(space, d.train)
    ids = space.label2id
    problems = [f"{ex.source}: unknown label {ex.label!r}; known labels: {', '.join(space.names)}. List every label in "
                "data.labels" for split in evaluation.values() for ex in split if ex.label not in ids]
    if gold_train is not None:
        problems += [f"{src}, column {w.gold_column!r}: unknown gold label {g!r}; known labels: "
                     f"{', '.join(space.names)}" for g, src in zip(gold_train, sources) if g is not None and g not in ids]
    if problems:
        raise DataError(problems)
    gold = None
    if gold_train is not None:
        gold = np.array([ids.get(g, ABSTAIN_ID) if g is not None else ABSTAIN_ID for g in gold_train])
    data = WeakData(texts=texts, sources=sources, labels=labels, space=space, gold=gold, matrix=matrix,
                    function_names=function_names, unlabeled_file=unlabeled)
    if matrix is not None:
        estimated = ds.accuracies(matrix) if ds is not None else None
        data.analysis = analyze(matrix, function_names, space.names, gold, estimated)
    if gold is not None:
        data.quality["label_model"] = {"name": w.label_model if matrix is not None else f"column {w.column!r}",
                                       **label_accuracy(labels.probs, labels.covered, gold)}
        if matrix is not None:
            for name in ("majority", "one-coin", "dawid-skene"):  # every label model, for comparison
                if name == w.label_model:
                    continue
                # The one-coin model behind the estimated accuracies is fitted already when majority vote labels.
                other = ds if name == "one-coin" and w.label_model == "majority" else \
                    fit_label_model(matrix, len(space.names), name, w.prior_accuracy)
                result = other.predict(matrix) if other is not None else majority_vote(matrix, len(space.names))
                data.quality[name] = label_accuracy(result.probs, result.covered, gold)
    origin = {"train": f"{d.train} (weak labels: " + (f"column {w.column!r})" if w.column else
                                                      f"{len(function_names)} labeling functions, {w.label_model})")}
    origin.update({k: str(getattr(d, k)) for k in evaluation})
    if w.unlabeled:
        origin["unlabeled"] = str(w.unlabeled)
    return data, evaluation, origin


def _two_classes(space: LabelSpace, where) -> None:
    if len(space.names) < 2:
        raise DataError([f"{where}: the weak labels and gold labels name {len(space.names)} class(es) "
                         f"({space.names}); classification needs at least two: list them in data.labels, or give "
                         "gold validation data"])


def write_weak_labels(data: WeakData, path: Path) -> Path:
    """The training rows with their weak labels as JSONL: text, label (null when unlabelled), probabilities."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hard = data.labels.hard
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for i, text in enumerate(data.texts):
            covered = bool(data.labels.covered[i])
            row = {"text": text, "label": data.space.names[hard[i]] if covered else None,
                   "probs": [round(float(p), 6) for p in data.labels.probs[i]] if covered else None}
            if data.matrix is not None:
                row["votes"] = {n: data.space.names[v] for n, v in zip(data.function_names, data.matrix[i]) if v >= 0}
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path
