"""Extractive question answering rows: a question, a context and the answer as a span of that context.

Two layouts are read:

- SQuAD JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
  [{"text", "answer_start"}], "is_impossible"?}]}]}]}`), recognised by that shape in a .json file;
- flat rows (JSONL, CSV/TSV, Parquet, a JSON list): one question per row, with question, context, answer
  text and answer start columns, or the Hugging Face `datasets` layout where one `answers` column holds
  `{"text": [...], "answer_start": [...]}` (a dict, or that dict written as JSON / a Python literal).

Every answer is checked against its context (`context[start:start + len(text)] == text`): a shifted start
trains the model on the wrong tokens without any error, so it is refused here, with what the context holds
at that place. An answer without a start is located when its text occurs exactly once in the context.
"""
from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import DataError
from .readers import detect_format, read_table

MAX_PROBLEMS = 500  # problems kept in full; past that only counted (a broken file can have one per row)


@dataclass
class QAExample:
    question: str
    context: str
    answers: list[tuple[str, int]] | None  # (text, character start); [] = no answer (SQuAD 2.0); None = unknown
    id: str
    source: str                            # where it came from, for messages


class _Problems:
    """The problem list, capped at MAX_PROBLEMS messages, a last line counting the ones left out."""

    def __init__(self):
        self.items: list[str] = []
        self.dropped = 0

    def add(self, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(message)
        else:
            self.dropped += 1

    def raise_if_any(self) -> None:
        if self.items:
            extra = [f"... and {self.dropped} more problem(s) not listed"] if self.dropped else []
            raise DataError(self.items + extra)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _occurrences(context: str, text: str, limit: int = 10) -> list[int]:
    found, at = [], context.find(text)
    while at != -1 and len(found) < limit:
        found.append(at)
        at = context.find(text, at + 1)
    return found


def _as_start(value: Any) -> Optional[int] | str:
    """A character start as an int; None when absent; a message (str) when it is no start at all. CSV cells
    arrive as text and JSON/Parquet numbers may be floats (12.0), so both are accepted when integral."""
    if _missing(value) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return f"answer start {value!r} is not a character offset"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"answer start {value!r} is not a number"
    if not number.is_integer() or number < 0:
        return f"answer start {value!r} is not a character offset (a whole number >= 0)"
    return int(number)


def check_answer(context: str, text: Any, start: Any, where: str, problems: _Problems) -> Optional[tuple[str, int]]:
    """One gold answer validated against its context: (text, start), or None with the problem noted."""
    if _missing(text) or not isinstance(text, str) or not text:
        problems.add(f"{where}: answer text must be non-empty text, got {text!r}")
        return None
    parsed = _as_start(start)
    if isinstance(parsed, str):
        problems.add(f"{where}: {parsed}; give the 0-based character offset of {_short(text)} in the context")
        return None
    found = _occurrences(context, text)
    if parsed is None:
        # No start: unambiguous only when the text occurs once; with several occurrences the model would be
        # taught one of them at random, which may not be the one the question is about.
        if len(found) == 1:
            return text, found[0]
        if not found:
            problems.add(f"{where}: answer {_short(text)} does not occur in the context; an extractive answer "
                         "must be a span of the context, copied exactly")
        else:
            problems.add(f"{where}: answer {_short(text)} has no start and occurs {len(found)}"
                         f"{'+' if len(found) == 10 else ''} times in the context (at characters "
                         f"{', '.join(map(str, found))}); give its answer_start")
        return None
    held = context[parsed:parsed + len(text)]
    if held != text:
        where_else = (f"; the text occurs at character(s) {', '.join(map(str, found))}" if found
                      else "; the text does not occur anywhere in the context")
        problems.add(f"{where}: answer {_short(text)} at answer_start {parsed} does not match the context, which "
                     f"holds {_short(held)} there (context length {len(context)}){where_else}. Fix answer_start "
                     "(0-based character offset) or the answer text")
        return None
    return text, parsed


def _check_text(value: Any, what: str, where: str, problems: _Problems) -> Optional[str]:
    if _missing(value) or not isinstance(value, str) or not value.strip():
        shown = "an empty cell" if _missing(value) else repr(value)[:60]
        problems.add(f"{where}: missing {what} (got {shown}); fill it or drop the row")
        return None
    return value


UNANSWERABLE_FIX = ("set allow_unanswerable (SQuAD 2.0 style: the model learns to point at the CLS token) to "
                    "keep unanswerable questions, or drop them")


def _finish(question: Any, context: Any, answers: Optional[list], impossible: bool, qid: str, where: str,
            allow_unanswerable: bool, problems: _Problems) -> Optional[QAExample]:
    """Question, context and raw (text, start) pairs (None: not read) checked and made an example."""
    q = _check_text(question, "question", where, problems)
    c = _check_text(context, "context", where, problems)
    if q is None or c is None:
        return None
    checked: Optional[list] = None
    if answers is not None:
        if impossible:
            answers = []  # SQuAD 2.0 keeps "plausible" answers elsewhere; an impossible question has none
        # Every answer checked (not just up to the first bad one), so one run lists all there is to fix.
        checked = [check_answer(c, text, start, f"{where}, answer {k}" if len(answers) > 1 else where, problems)
                   for k, (text, start) in enumerate(answers, start=1)]
        if any(a is None for a in checked):
            return None
        if not checked and not allow_unanswerable:
            problems.add(f"{where}: no answer ({'is_impossible' if impossible else 'empty answers'}); "
                         f"{UNANSWERABLE_FIX}")
            return None
    return QAExample(question=q, context=c, answers=checked, id=qid, source=where)


# ---------------------------------------------------------------- SQuAD JSON

def _is_squad(payload: Any) -> bool:
    data = payload.get("data") if isinstance(payload, dict) else None
    return (isinstance(data, list) and bool(data) and isinstance(data[0], dict)
            and isinstance(data[0].get("paragraphs"), list))


def _squad_examples(payload: dict, path: str, allow_unanswerable: bool, with_answers: bool,
                    problems: _Problems) -> list[QAExample]:
    examples = []
    for a, article in enumerate(payload["data"], start=1):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            problems.add(f"{path} article {a}: expected an object with a 'paragraphs' list (SQuAD format)")
            continue
        for p, paragraph in enumerate(article["paragraphs"], start=1):
            at = f"{path} article {a}, paragraph {p}"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                problems.add(f"{at}: expected an object with 'context' and a 'qas' list (SQuAD format)")
                continue
            for q, qa in enumerate(paragraph["qas"], start=1):
                if not isinstance(qa, dict):
                    problems.add(f"{at}, question {q}: expected an object with 'id', 'question', 'answers'")
                    continue
                # Hand-made files often leave ids out; they are only needed to tell predictions apart.
                qid = str(qa["id"]) if not _missing(qa.get("id")) else f"{a}-{p}-{q}"
                where = f"{at}, question {qid!r}"
                answers = None
                impossible = bool(qa.get("is_impossible", False))
                if with_answers:
                    raw = qa.get("answers")
                    if raw is None and not impossible:
                        problems.add(f"{where}: no 'answers' list; give the gold answers, or read the file "
                                     "without answers (with_answers=False) to predict")
                        continue
                    raw = raw or []
                    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
                        problems.add(f"{where}: 'answers' must be a list of {{'text', 'answer_start'}} objects, "
                                     f"got {str(raw)[:80]}")
                        continue
                    answers = [(x.get("text"), x.get("answer_start")) for x in raw]
                ex = _finish(qa.get("question"), paragraph.get("context"), answers, impossible, qid, where,
                             allow_unanswerable, problems)
                if ex is not None:
                    examples.append(ex)
    return examples


# ---------------------------------------------------------------- flat rows

def _listed(value: Any) -> list:
    if hasattr(value, "tolist"):  # Parquet / numpy arrays
        value = value.tolist()
    if _missing(value):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _parsed_cell(cell: Any, item: type = str) -> Any:
    """A cell holding a dict or list written as text (JSON, or the Python literal pandas' to_csv writes) as
    that dict or list; anything else unchanged, so an answer that merely starts with '[' stays text."""
    if isinstance(cell, str) and cell.lstrip()[:1] in ("{", "["):
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(cell)
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
                continue
            if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, item) for v in value)):
                return value
    return cell


def _row_answers(cell: Any, start_cell: Any, where: str, column: str, start_column: Optional[str],
                 problems: _Problems) -> Optional[list]:
    """The raw (text, start) pairs of one row: from an HF answers dict, or from answer text(s) with the start
    column's value(s). An empty or missing answer means no answer. None when unreadable (problem noted)."""
    cell = _parsed_cell(cell)
    if isinstance(cell, dict):
        if "text" not in cell:
            problems.add(f"{where}, column {column!r}: an answers dict needs 'text' and 'answer_start' lists, "
                         f"got keys {sorted(map(str, cell))}")
            return None
        texts, starts = _listed(cell.get("text")), _listed(cell.get("answer_start"))
        if starts and len(starts) != len(texts):
            problems.add(f"{where}, column {column!r}: {len(texts)} answer text(s) but {len(starts)} "
                         f"answer_start(s): {str(cell)[:80]}")
            return None
        return list(zip(texts, starts or [None] * len(texts)))
    texts = [t for t in _listed(cell) if not (isinstance(t, str) and t == "")]
    if not texts:
        return []  # whatever the start column says (often -1): there is no answer
    starts = _listed(_parsed_cell(start_cell, object)) if start_column else []
    starts = [s for s in starts if not (isinstance(s, str) and not s.strip())]
    if starts and len(starts) != len(texts):
        problems.add(f"{where}: {len(texts)} answer(s) in column {column!r} but {len(starts)} start(s) in column "
                     f"{start_column!r}")
        return None
    return list(zip(texts, starts or [None] * len(texts)))


def _flat_examples(path: str, fmt: str, columns: dict[str, str], allow_unanswerable: bool, with_answers: bool,
                   problems: _Problems) -> list[QAExample]:
    df = read_table(path, fmt)
    have = [str(c) for c in df.columns]
    answer_col, start_col = columns["answer"], columns["answer_start"]
    if answer_col not in have and answer_col == "answer" and "answers" in have:
        answer_col = "answers"  # the Hugging Face datasets layout, under its own column name
    wanted = {"question": columns["question"], "context": columns["context"]}
    if with_answers:
        wanted["answer"] = answer_col
    absent = [f"{col!r} (set data.{key}_column)" for key, col in wanted.items() if col not in have]
    if absent:
        problems.add(f"{path}: no column {', '.join(absent)}; the columns are: {', '.join(have)}"
                     + ("; to predict without gold answers read with with_answers=False" if "answer" in wanted
                        and answer_col not in have else ""))
        return []
    if start_col not in have:
        start_col = None  # texts are then located in their context (when they occur once)
    id_col = columns["id"] if columns["id"] in have else None  # without ids: row numbers
    n = len(df)
    cells = {k: df[c].tolist() if c else [None] * n for k, c in (("question", columns["question"]),
             ("context", columns["context"]), ("answer", answer_col if with_answers else None),
             ("start", start_col if with_answers else None), ("id", id_col))}
    examples = []
    for i in range(n):
        where = f"{path} row {i + 1}"
        raw_id = cells["id"][i]
        qid = str(i + 1) if id_col is None or _missing(raw_id) else str(raw_id)
        answers = None
        if with_answers:
            answers = _row_answers(cells["answer"][i], cells["start"][i], where, answer_col, start_col, problems)
            if answers is None:
                continue
        ex = _finish(cells["question"][i], cells["context"][i], answers, False, qid, where, allow_unanswerable,
                     problems)
        if ex is not None:
            examples.append(ex)
    return examples


def read_qa_examples(path: str | Path, fmt: str = "auto", question_column: str = "question",
                     context_column: str = "context", answer_column: str = "answer",
                     answer_start_column: str = "answer_start", id_column: str = "id",
                     allow_unanswerable: bool = False, with_answers: bool = True) -> list[QAExample]:
    """Every question of one file, validated; raises DataError listing every problem (file, row or
    article/paragraph/question, column, value, fix). `with_answers=False` reads questions to predict:
    their `answers` are None and answer columns are not needed."""
    from .sources import is_dataset_source

    source = is_dataset_source(path)  # a save_to_disk folder or Hub split: rows of questions, read as a table
    path = Path(path)
    problems = _Problems()
    payload = None
    if not source and path.exists() and path.stat().st_size and detect_format(path, fmt) == "json":
        with open(path, encoding="utf-8") as f:
            try:
                payload = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError([f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from None
    if payload is not None and _is_squad(payload):
        examples = _squad_examples(payload, str(path), allow_unanswerable, with_answers, problems)
    else:
        columns = {"question": question_column, "context": context_column, "answer": answer_column,
                   "answer_start": answer_start_column, "id": id_column}
        examples = _flat_examples(str(path), fmt, columns, allow_unanswerable, with_answers, problems)
    seen: dict[str, str] = {}
    for ex in examples:
        if ex.id in seen:
            problems.add(f"{ex.source}: duplicate id {ex.id!r} (first at {seen[ex.id]}); ids must be unique, "
                         "predictions are reported by id")
        else:
            seen[ex.id] = ex.source
    problems.raise_if_any()
    if not examples:
        raise DataError([f"{path}: no questions"])
    return examples
