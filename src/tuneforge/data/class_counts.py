"""Classes too rare to learn: in a training set of at least RARE_MIN_ROWS rows, a class of at most RARE_AT_MOST rows is
more often a typo, a stray header word or a mislabelled row than a class, and nothing can learn (or measure) it from
one or two rows. Each is a warning naming the class and its rows, with the common class it is closest to."""
from __future__ import annotations

import difflib
from typing import Sequence

RARE_MIN_ROWS = 200   # below this, a class of one or two rows may be the data set's honest shape
RARE_AT_MOST = 2
LISTED = 5            # rare classes named one by one; more are summed up in one warning


def rows_named(examples: Sequence, shown: int = 8) -> str:
    """The examples' rows, grouped by file: 'train.csv rows 3, 17'."""
    by_file: dict[str, list[str]] = {}
    for ex in examples:
        where, sep, row = str(getattr(ex, "source", "")).rpartition(" row ")
        if sep and row.isdigit():
            by_file.setdefault(where, []).append(row)
        else:
            by_file.setdefault(str(getattr(ex, "source", "")), [])
    parts = []
    for where, rows in by_file.items():
        if not rows:
            parts.append(where)
            continue
        listed = ", ".join(rows[:shown]) + (", ..." if len(rows) > shown else "")
        parts.append(f"{where} row{'s' if len(rows) > 1 else ''} {listed}")
    return "; ".join(parts)


def _labels(task, example) -> list[str]:
    values = getattr(task, "label_values", None)
    if values is not None:
        return [v for v in (values(example) or []) if v is not None]
    if task.stratify:
        label = task.stratum(example)
        return [] if label is None else [label]
    return []


def rare_class_notes(train: Sequence, task) -> list[str]:
    if len(train) < RARE_MIN_ROWS:
        return []
    members: dict[str, list] = {}
    for ex in train:
        for label in _labels(task, ex):
            members.setdefault(str(label), []).append(ex)
    rare = sorted((name for name, rows in members.items() if len(rows) <= RARE_AT_MOST), key=lambda n: len(members[n]))
    common = [name for name, rows in members.items() if len(rows) > RARE_AT_MOST]
    if not rare or not common:
        return []
    notes = []
    for name in rare[:LISTED]:
        close = difflib.get_close_matches(name, common, n=1, cutoff=0.75)
        hint = f"a misspelling of {close[0]!r}? " if close else ""
        n = len(members[name])
        notes.append(f"class {name!r} has only {n} of {len(train):,} training rows ({rows_named(members[name])}): too "
                     f"few to learn or to measure; {hint}fix the label{'s' if n > 1 else ''}, add rows of the class, "
                     "or drop the class's rows")
    if len(rare) > LISTED:
        more = ", ".join(repr(n) for n in rare[LISTED:LISTED + 10]) + (", ..." if len(rare) > LISTED + 10 else "")
        notes.append(f"{len(rare) - LISTED} more classes have at most {RARE_AT_MOST} training rows each: {more}")
    return notes
