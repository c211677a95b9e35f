"""Text rows to validated examples (every row checked before training starts; errors name file, row, column and
value), label parsers and the label space."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError
from .readers import read_table

LabelValue = Any  # str (classification), list[str] (multi-label), float (regression)
LabelParser = Callable[[Any], "tuple[Any, Optional[str]]"]  # a label cell -> (label, problem or None)


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


# Cells that spell "no value": what pandas, numpy (np.array(["cat", np.nan]) holds 'nan'), R, Excel and SQL exports
# write for a missing value. As a class label each would become a class of its own; they are refused as missing.
# ("None" and "none" are not among them: they are real classes in many data sets.)
# Spellings of a missing value that no class is named: a float NaN written as text, pandas' NA and NaT. (NA, N/A
# and null are left as classes: NA is North America or Namibia in real data sets, and N/A a deliberate class.)
MISSING_MARKERS = {"nan", "NaN", "NAN", "-nan", "-NaN", "<NA>", "NaT"}
FLOAT32_MAX = 3.4028234663852886e38


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def is_missing_marker(value: Any) -> bool:
    """A text cell that spells a missing value ('NaN', 'NA', 'null', ...), as exported by pandas, numpy, R or SQL."""
    return isinstance(value, (str, np.str_)) and value.strip() in MISSING_MARKERS


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value == "":
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


def row_examples(df: pd.DataFrame, where: str, parse_label: Optional[LabelParser], text_col: str,
                 pair_col: Optional[str], label_col: Optional[str], problems: list[str]) -> list[TextExample]:
    """The rows of a table as text examples; `parse_label(cell) -> (label, problem)` reads the label column."""
    missing = [c for c in (text_col, pair_col, label_col) if c and c not in df.columns]
    if missing:
        for c in missing:
            problems.append(f"{where}: no column {c!r} (columns are: {', '.join(map(str, df.columns))}); "
                            f"set data.{'text_column' if c == text_col else 'text_pair_column' if c == pair_col else 'label_column'}")
        return []
    examples = []
    label_problems: dict[str, list[int]] = {}  # a label problem -> the rows that have it
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
            parsed, err = parse_label(label)
            if err:
                label_problems.setdefault(err, []).append(i)
                ok = False
        if ok:
            examples.append(TextExample(text=text, text_pair=pair, label=parsed, source=src))
    problems.extend(grouped_problems(where, label_col, label_problems))
    return examples


def grouped_problems(where: str, column: Optional[str], rows_by_problem: dict[str, list[int]],
                     noun: str = "row", shown: int = 8) -> list[str]:
    """One message per distinct problem of a column: the row itself when one row has it, else how many rows and the
    first few (a column of 10,000 empty labels is one line, not 10,000)."""
    out = []
    col = f", column {column!r}" if column else ""
    for err, rows in sorted(rows_by_problem.items(), key=lambda kv: kv[1][0]):
        if len(rows) == 1:
            out.append(f"{where} {noun} {rows[0]}{col}: {err}")
        else:
            first = ", ".join(map(str, rows[:shown])) + (", ..." if len(rows) > shown else "")
            out.append(f"{where}{col}: {len(rows)} {noun}s ({noun}s {first}): {err}")
    return out


FILL = "fill in the label or drop the row"


def parse_number(value: Any) -> tuple[Any, Optional[str]]:
    """A regression target: a finite number that float32 (the training tensors' type) holds."""
    if is_missing(value) or is_missing_marker(value):
        return None, f"missing label (got {_shown(value)}); {FILL}"
    if isinstance(value, (bool, np.bool_)):
        return None, f"expected a number, got {value!r}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, f"expected a number, got {type(value).__name__} {value!r}"
    if not math.isfinite(number):
        return None, f"expected a finite number, got {value!r}; {FILL}"
    if abs(number) > FLOAT32_MAX:
        return None, (f"{value!r} is beyond float32's range (+-3.4e38), in which training computes; rescale the "
                      "targets (e.g. divide by a constant or take a log) or drop the row")
    return number, None


def label_set_parser(separator: str) -> LabelParser:
    """Multi-label targets: a list, or one string split on `separator`; empty means no label."""
    def parse(value: Any) -> tuple[Any, Optional[str]]:
        if isinstance(value, (list, tuple, np.ndarray)):
            items = list(value)
        elif is_missing_marker(value) or (is_missing(value) and not isinstance(value, str)):
            return None, (f"missing labels (got {_shown(value)}); use an empty list or empty string for 'no label', "
                          "or drop the row")
        elif isinstance(value, str):
            items = [p for p in value.split(separator)] if value.strip() else []
        else:
            items = [value]
        if any(is_missing_marker(v) or is_missing(v) for v in items):
            return None, f"labels {value!r} hold a missing value; {FILL}"
        names = [label_text(v) for v in items]
        if any(n is None or n == "" for n in names):
            return None, f"labels must be names or integers, got {value!r}"
        return sorted(set(names)), None
    return parse


def parse_class_label(value: Any) -> tuple[Any, Optional[str]]:
    """One class label: a name or an integer."""
    if is_missing(value) or is_missing_marker(value):
        return None, f"missing label (got {_shown(value)}); {FILL}"
    name = label_text(value)
    if name is None:
        return None, f"expected one label (a name or an integer), got {type(value).__name__} {value!r}"
    return name, None


def read_examples_from_file(path: str | Path, parse_label: Optional[LabelParser], text_col: str,
                            pair_col: Optional[str], label_col: Optional[str], fmt: str = "auto") -> list[TextExample]:
    """Read and validate one file of texts (and labels, when `label_col` is given); raises DataError listing every
    bad row."""
    problems: list[str] = []
    df = read_table(path, fmt)
    examples = row_examples(df, str(path), parse_label if label_col else None, text_col, pair_col, label_col,
                            problems)
    if problems:
        raise DataError(problems)
    return examples


def build_label_space(train: Sequence, declared: Optional[list[str]], values: Callable[[Any], list[str]],
                      at_least: int = 2) -> LabelSpace:
    """Label names in id order: as declared (data.labels), else those of `train` (each example's label names by
    `values`), integers numerically and names alphabetically. Fewer than `at_least` names is an error."""
    if declared:
        if len(set(declared)) != len(declared):
            raise DataError([f"data.labels has duplicates: {declared}"])
        return LabelSpace([str(x) for x in declared])
    seen: set[str] = set()
    for ex in train:
        seen.update(values(ex))
    # Integer labels in numeric order (2 before 10); names alphabetically.
    names = sorted(seen, key=int) if all(n.isdecimal() for n in seen) else sorted(seen)
    if len(names) < at_least:
        raise DataError([f"{train[0].source.rsplit(' row', 1)[0] if train else 'train'}: only one label ({names}) "
                         "in the training data; classification needs at least two"])
    return LabelSpace(names)


def check_labels(examples: Sequence, space: LabelSpace, values: Callable[[Any], list[str]], problems: list[str]) -> None:
    """A problem for every label (by `values`) outside `space`."""
    known = space.label2id
    for ex in examples:
        for v in values(ex):
            if v not in known:
                shown = ", ".join(space.names[:20]) + (" ..." if len(space.names) > 20 else "")
                problems.append(f"{ex.source}: unknown label {v!r}; known labels: {shown}. "
                                "Fix the row or list every label in data.labels")
