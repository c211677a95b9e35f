"""Rows to validated examples: every row is checked before training starts, errors name file/row/column/value."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .readers import read_table

LabelValue = Any  # str (classification), list[str] (multi-label), float (regression)
UNLABELLED_TASKS = ("causal-lm", "masked-lm", "preference", "reward-model", "grpo")  # rows without a label column


@dataclass
class TextExample:
    text: str
    label: LabelValue = None
    text_pair: Optional[str] = None
    source: str = ""  # "file.csv row 12", for messages


@dataclass
class LabelSpace:
    """Label names in id order, mapped both ways; empty for regression."""
    names: list[str] = field(default_factory=list)

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "an empty cell"
    return repr(value)


def label_text(value: Any) -> Optional[str]:
    """A single class label as its name: 1 -> '1', 1.0 -> '1', True -> 'True', ' pos ' -> 'pos'."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value.strip()
    return None


def row_examples(df: pd.DataFrame, where: str, task: str, text_col: str, pair_col: Optional[str],
                  label_col: Optional[str], separator: str, problems: list[str]) -> list[TextExample]:
    missing = [c for c in (text_col, pair_col, label_col) if c and c not in df.columns]
    if missing:
        for c in missing:
            problems.append(f"{where}: no column {c!r} (columns are: {', '.join(map(str, df.columns))}); "
                            f"set data.{'text_column' if c == text_col else 'text_pair_column' if c == pair_col else 'label_column'}")
        return []
    examples = []
    texts = df[text_col].tolist()
    pairs = df[pair_col].tolist() if pair_col else [None] * len(df)
    labels = df[label_col].tolist() if label_col else [None] * len(df)
    for i, (text, pair, label) in enumerate(zip(texts, pairs, labels), start=1):
        src = f"{where} row {i}"
        ok = True
        for col, value in ((text_col, text), (pair_col, pair)):
            if col is None:
                continue
            if is_missing(value):
                problems.append(f"{src}, column {col!r}: missing text (got {_shown(value)}); fill it or drop the row")
                ok = False
            elif not isinstance(value, str):
                problems.append(f"{src}, column {col!r}: expected text, got {type(value).__name__} {value!r}")
                ok = False
        parsed = None
        if label_col is not None:
            parsed, err = _parse_label(label, task, separator)
            if err:
                problems.append(f"{src}, column {label_col!r}: {err}")
                ok = False
        if ok:
            examples.append(TextExample(text=text, text_pair=pair, label=parsed, source=src))
    return examples


def _parse_label(value: Any, task: str, separator: str) -> tuple[Any, Optional[str]]:
    if task == "regression":
        if is_missing(value):
            return None, f"missing label (got {_shown(value)})"
        if isinstance(value, bool):
            return None, f"expected a number, got {value!r}"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"expected a number, got {type(value).__name__} {value!r}"
        if not math.isfinite(number):
            return None, f"expected a finite number, got {value!r}"
        return number, None
    if task == "multi-label":
        if isinstance(value, (list, tuple, np.ndarray)):
            items = list(value)
        elif isinstance(value, str):
            items = [p for p in value.split(separator)] if value.strip() else []
        elif is_missing(value):
            return None, f"missing labels (got {_shown(value)}); use an empty list or empty string for 'no label'"
        else:
            items = [value]
        names = [label_text(v) for v in items]
        if any(n is None or n == "" for n in names):
            return None, f"labels must be names or integers, got {value!r}"
        return sorted(set(names)), None
    if is_missing(value):
        return None, f"missing label (got {_shown(value)})"
    name = label_text(value)
    if name is None:
        return None, f"expected one label (a name or an integer), got {type(value).__name__} {value!r}"
    return name, None


def read_examples_from_file(path: str | Path, task: str, text_col: str, pair_col: Optional[str],
                            label_col: Optional[str], separator: str = ",", fmt: str = "auto") -> list[TextExample]:
    """Read and validate one file; raises DataError listing every bad row."""
    problems: list[str] = []
    df = read_table(path, fmt)
    examples = row_examples(df, str(path), task, text_col, pair_col, label_col, separator, problems)
    if problems:
        raise DataError(problems)
    return examples


def build_label_space(task: str, train: Sequence[TextExample], declared: Optional[list[str]]) -> LabelSpace:
    if task == "regression":
        return LabelSpace([])
    if declared:
        if len(set(declared)) != len(declared):
            raise DataError([f"data.labels has duplicates: {declared}"])
        return LabelSpace([str(x) for x in declared])
    seen: set[str] = set()
    for ex in train:
        seen.update(ex.label if task == "multi-label" else [ex.label])
    # Integer labels in numeric order (2 before 10); names alphabetically.
    names = sorted(seen, key=int) if all(n.isdecimal() for n in seen) else sorted(seen)
    if task != "multi-label" and len(names) < 2:
        raise DataError([f"{train[0].source.rsplit(' row', 1)[0] if train else 'train'}: only one label ({names}) "
                         "in the training data; classification needs at least two"])
    return LabelSpace(names)


def check_labels(task: str, examples: Sequence[TextExample], space: LabelSpace, problems: list[str]) -> None:
    if task == "regression":
        return
    known = space.label2id
    for ex in examples:
        values = ex.label if task == "multi-label" else [ex.label]
        for v in values:
            if v not in known:
                shown = ", ".join(space.names[:20]) + (" ..." if len(space.names) > 20 else "")
                problems.append(f"{ex.source}: unknown label {v!r}; known labels: {shown}. "
                                "Fix the row or list every label in data.labels")


def stratified_split(examples: list[TextExample], fractions: dict[str, float], seed: int, stratify: bool,
                     where: str) -> dict[str, list[TextExample]]:
    """Carve named fractions out of `examples`; the rest is 'train'. Per-class when `stratify`."""
    rng = np.random.default_rng(seed)
    wanted = {k: f for k, f in fractions.items() if f > 0}
    out: dict[str, list[int]] = {"train": [], **{k: [] for k in wanted}}
    if stratify:
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(ex.label, []).append(i)
    else:
        groups = {"": list(range(len(examples)))}
    problems = []
    for label, idx in sorted(groups.items()):
        idx = [idx[j] for j in rng.permutation(len(idx))]
        counts = {k: max(1, int(round(len(idx) * f))) for k, f in wanted.items()}
        if sum(counts.values()) >= len(idx):
            what = f"class {label!r} has" if stratify else "there are"
            problems.append(f"{where}: {what} only {len(idx)} row(s); a split into train + {', '.join(wanted)} needs "
                            f"at least {sum(counts.values()) + 1}. Add rows, remove the class, or give "
                            f"{'/'.join('data.' + k for k in wanted)} file(s)")
            continue
        start = 0
        for k, n in counts.items():
            out[k].extend(idx[start:start + n])
            start += n
        out["train"].extend(idx[start:])
    if problems:
        raise DataError(problems)
    return {k: [examples[i] for i in sorted(v)] for k, v in out.items()}


def _reader(spec, task: str, text_col: str, pair_col, label_col, notes: Optional[list] = None):
    """The function reading one file of `task`'s rows (validated, problems raised as DataError)."""
    if task == "grpo":
        from .prompts import read_prompt_examples
        return lambda path: read_prompt_examples(path, spec.format, spec.prompt_column)
    if task in ("preference", "reward-model"):
        from .preference import read_preference_examples
        report = notes.append if notes is not None else None
        return lambda path: read_preference_examples(path, spec.format, spec.prompt_column, spec.chosen_column,
                                                     spec.rejected_column, spec.drop_invalid_pairs, report)
    if task == "masked-lm":
        from .masked import read_text_rows
        return lambda path: read_text_rows(path, spec.format, text_col)
    if task == "causal-lm":
        from .causal import read_causal_examples
        return lambda path: read_causal_examples(path, spec.format, spec.text_column, spec.prompt_column,
                                                 spec.completion_column, spec.messages_column, spec.train_on)
    if task == "image-classification":
        from .images import read_image_examples
        fmt = "auto" if spec.dataset else spec.format
        return lambda path: read_image_examples(path, fmt, spec.image_column, label_col)
    return lambda path: read_examples_from_file(path, task, text_col, pair_col, label_col, spec.label_separator,
                                                spec.format)


def load_examples(data_spec, task: str, notes: Optional[list] = None) -> tuple[dict[str, list], LabelSpace, dict[str, str]]:
    """Every split validated, labels mapped; returns (splits, label space, where each split came from).
    Causal-LM and preference rows have no labels: their label space is empty and their splits are carved at
    random. Rows skipped on purpose (data.drop_invalid_pairs) are reported by appending to `notes`."""
    from ..assets import DATASET_LABELS, DATASETS

    spec = data_spec
    if spec.dataset:
        files = {k: str(v) for k, v in DATASETS[spec.dataset]().items()}
        text_col, pair_col, label_col = "text", None, "label"
    else:
        files = {k: getattr(spec, k) for k in ("train", "validation", "test") if getattr(spec, k)}
        text_col, pair_col, label_col = spec.text_column, spec.text_pair_column, spec.label_column
    read = _reader(spec, task, text_col, pair_col, label_col, notes)
    if task == "image-classification":
        task = "classification"  # labels, splits and checks are those of single-label classification

    problems: list[str] = []
    splits: dict[str, list] = {}
    for name, path in files.items():
        try:
            splits[name] = read(path)
        except DataError as e:
            problems.extend(e.problems)
    if problems:
        raise DataError(problems)

    origin = {k: str(v) for k, v in files.items()}
    carve = {k: getattr(spec, f"{k}_fraction") for k in ("validation", "test") if k not in splits}
    carve = {k: f for k, f in carve.items() if f > 0}
    if carve:
        parts = stratified_split(splits["train"], carve, spec.split_seed,
                                 stratify=task in ("classification", "pair-classification"), where=files["train"])
        splits.update(parts)
        for k, f in carve.items():
            origin[k] = f"{f:.0%} of {files['train']} (seed {spec.split_seed})"
    if task in UNLABELLED_TASKS:
        space = LabelSpace([])
    else:
        declared = spec.labels or (DATASET_LABELS.get(spec.dataset) if spec.dataset else None)
        space = build_label_space(task, splits["train"], declared)  # from all rows, before limit_train
    if spec.limit_train:
        splits["train"] = splits["train"][: spec.limit_train]
    if task not in UNLABELLED_TASKS:
        for name, examples in splits.items():
            check_labels(task, examples, space, problems)
    if problems:
        raise DataError(problems)
    return splits, space, origin
