"""Labeling functions: rules that label a text or abstain.

Written in Python with a decorator:

    from tuneforge.weak import ABSTAIN, labeling_function

    @labeling_function()
    def asks_for_a_number(text):
        return "NUM" if text.lower().startswith(("how many", "how much")) else ABSTAIN

or declared as data (in the recipe's `weak.rules`, or a YAML file): a keyword rule fires when any of its words
occurs as a whole word, a regular-expression rule when its pattern matches anywhere (`re.search`).
Applying a list of them to n texts gives the label matrix: n x m label ids, -1 where a function abstained.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import DataError, RecipeError

ABSTAIN = None   # what a labeling function returns to say "no opinion"
ABSTAIN_ID = -1  # its id in a label matrix


@dataclass(frozen=True)
class LabelingFunction:
    name: str
    fn: Callable[[str], Any]
    description: str = ""

    def __call__(self, text: str):
        return self.fn(text)


def labeling_function(name: Optional[str] = None):
    """Decorator: `@labeling_function()` turns `def rule(text) -> label or ABSTAIN` into a LabelingFunction."""
    def wrap(fn):
        return LabelingFunction(name or fn.__name__, fn, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
    return wrap


def keyword_rule(name: str, label: str, keywords: Sequence[str], case_sensitive: bool = False) -> LabelingFunction:
    """Votes `label` when any keyword (or phrase) occurs as whole words."""
    if not keywords:
        raise RecipeError([f"rule {name!r}: keywords is empty; list at least one word"])
    # Whole words: no word character on either side (\b would never match around "c++" or "$").
    pattern = r"(?<!\w)(?:" + "|".join(re.escape(k) for k in keywords) + r")(?!\w)"
    compiled = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
    return LabelingFunction(name, lambda text: label if compiled.search(text) else ABSTAIN,
                            f"keywords {', '.join(keywords)} -> {label}")


def regex_rule(name: str, label: str, pattern: str, case_sensitive: bool = False) -> LabelingFunction:
    """Votes `label` when the regular expression matches anywhere in the text."""
    try:
        compiled = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
    except re.error as e:
        raise RecipeError([f"rule {name!r}: regex {pattern!r} is not a valid regular expression: {e}"]) from None
    return LabelingFunction(name, lambda text: label if compiled.search(text) else ABSTAIN, f"/{pattern}/ -> {label}")


def rules_from_specs(specs: Sequence) -> list[LabelingFunction]:
    """Declared rules (recipe `weak.rules` entries: name, label, keywords or regex) as labeling functions."""
    return [keyword_rule(s.name, s.label, s.keywords, s.case_sensitive) if s.keywords else
            regex_rule(s.name, s.label, s.regex, s.case_sensitive) for s in specs]


def load_labeling_functions(path: str | Path) -> list[LabelingFunction]:
    """Every LabelingFunction defined at the top level of a Python file, in the order written. The file is the
    user's own code, named by them, and is run as such."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError([f"weak.labeling_functions: no Python file at {str(path)!r}"])
    module_name = f"tuneforge_user_lfs_{abs(hash(str(path.resolve())))}"
    print(f"running Python code from {path.resolve()} (weak.labeling_functions)", file=sys.stderr, flush=True)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: say where it failed
        raise RecipeError([f"weak.labeling_functions: importing {path} failed: {type(e).__name__}: {e}"]) from e
    found = [v for v in vars(module).values() if isinstance(v, LabelingFunction)]
    if not found:
        raise RecipeError([f"weak.labeling_functions: {path} defines no labeling function; decorate each rule with "
                           "@tuneforge.weak.labeling_function()"])
    return found


def check_names(lfs: Sequence[LabelingFunction]) -> None:
    seen: dict[str, int] = {}
    for lf in lfs:
        seen[lf.name] = seen.get(lf.name, 0) + 1
    twice = [n for n, c in seen.items() if c > 1]
    if twice:
        raise RecipeError([f"labeling functions need distinct names; {', '.join(map(repr, twice))} appear(s) more "
                           "than once"])


def _as_label(value: Any) -> Optional[str]:
    """A vote as a label name: 3 -> '3', 3.0 -> '3', ' NUM ' -> 'NUM'; None or -1 abstains."""
    if value is None or (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                         and value == ABSTAIN_ID):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise TypeError(f"a label name, an integer or ABSTAIN (None), got {type(value).__name__} {value!r}")


def vote_names(lfs: Sequence[LabelingFunction], texts: Sequence[str], sources: Optional[Sequence[str]] = None,
               progress=None) -> list[list[Optional[str]]]:
    """Each function's votes as label names (None: abstained), one list per function. A function raising, or
    returning something that is not a label, is an error naming the function, the row and the value."""
    check_names(lfs)
    problems: list[str] = []
    where = sources or [f"row {i + 1}" for i in range(len(texts))]
    out = []
    for j, lf in enumerate(lfs):
        column: list[Optional[str]] = []
        bad = 0
        for i, text in enumerate(texts):
            try:
                column.append(_as_label(lf(text)))
            except Exception as e:  # noqa: BLE001 - name the function and row, whatever it raised
                column.append(None)
                problems.append(f"labeling function {lf.name!r} on {where[i]} ({text[:60]!r}): {type(e).__name__}: {e}")
                bad += 1
                if bad >= 3:  # one broken function should not bury the others' messages
                    problems.append(f"labeling function {lf.name!r}: stopped after 3 problems")
                    break
        out.append(column)
        if progress is not None:
            progress(j + 1, len(lfs))
    if problems:
        raise DataError(problems)
    return out


def label_matrix(votes: list[list[Optional[str]]], names: Sequence[str], label_names: Sequence[str],
                 sources: Optional[Sequence[str]] = None) -> np.ndarray:
    """Votes as an (n rows, m functions) matrix of label ids, ABSTAIN_ID (-1) where a function abstained."""
    ids = {n: i for i, n in enumerate(label_names)}
    rows = len(votes[0]) if votes else 0
    matrix = np.full((rows, len(votes)), ABSTAIN_ID, dtype=np.int64)
    problems: list[str] = []
    for j, column in enumerate(votes):
        for i, name in enumerate(column):
            if name is None:
                continue
            if name not in ids:
                where = sources[i] if sources else f"row {i + 1}"
                problems.append(f"labeling function {names[j]!r} voted {name!r} on {where}, which is not a label "
                                f"({', '.join(label_names)}); return one of them or ABSTAIN, or list it in data.labels")
                break
            matrix[i, j] = ids[name]
    if problems:
        raise DataError(problems)
    return matrix


def apply_labeling_functions(lfs: Sequence[LabelingFunction], texts: Sequence[str], label_names: Sequence[str],
                             sources: Optional[Sequence[str]] = None) -> np.ndarray:
    """The label matrix of `lfs` on `texts`: (len(texts), len(lfs)) label ids, -1 where a function abstained."""
    return label_matrix(vote_names(lfs, texts, sources), [lf.name for lf in lfs], label_names, sources)
