"""Readers: one function per file format, each returning a DataFrame with the file's own types."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from ..errors import DataError

EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    for s in reversed(suffixes):
        if s in EXTENSIONS:
            return EXTENSIONS[s]
    raise DataError([f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                     f"use one of {', '.join(sorted(EXTENSIONS))} or set data.format"])


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    # Everything as text: a label column "1"/"0" stays a label, and empty cells stay visible as "".
    # TSV has no quoting: a text that starts with '"' must not swallow the rows after it.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, quoting=quoting)


def _read_json(path: Path) -> pd.DataFrame:
    with open(path, encoding="utf-8") as f:
        try:
            payload = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError([f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}"]) from None
    if isinstance(payload, dict):
        # Either {"data": [...]} / {"rows": [...]} or a mapping of row id -> row (as in many weak-supervision sets).
        for key in ("data", "rows", "examples"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
        else:
            if payload and all(isinstance(v, dict) for v in payload.values()):
                payload = list(payload.values())
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise DataError([f"{path}: expected a JSON list of objects (one per row)"])
    return pd.DataFrame.from_records(payload)


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError([f"{path}: line {lineno} is not valid JSON ({e.msg}): {line.strip()[:80]!r}"]) from None
            if not isinstance(row, dict):
                raise DataError([f"{path}: line {lineno} is a JSON {type(row).__name__}, expected an object"])
            rows.append(row)
    return pd.DataFrame.from_records(rows)


READERS = {
    "csv": lambda p: _read_delimited(p, ","),
    "tsv": lambda p: _read_delimited(p, "\t"),
    "json": _read_json,
    "jsonl": _read_jsonl,
    "parquet": pd.read_parquet,
}


def read_table(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: no such file"])
    if path.stat().st_size == 0:
        raise DataError([f"{path}: the file is empty"])
    kind = detect_format(path, fmt)
    try:
        df = READERS[kind](path)
    except DataError:
        raise
    except Exception as e:  # parser errors from pandas/pyarrow: name the file
        raise DataError([f"{path}: could not read as {kind}: {e}"]) from None
    if len(df) == 0:
        raise DataError([f"{path}: no data rows (only a header or nothing)"])
    return df
