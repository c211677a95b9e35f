"""Readers: one function per file format, each returning a DataFrame with the file's own types.

A file that does not read is one DataError naming it and saying why in the user's terms: another format under this
name, bytes that are not UTF-8 (line and byte offset), a row wider than the header, duplicate column names (which
pandas would silently rename `text.1`), JSON that is not a list of objects, a damaged Parquet file."""
from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .formats import EXTENSIONS
from .rawfile import encoding_problem, sniff, wide_row_problem
from .reading import skip_rows
from .sources import dataset_table, read_arrow
from .table_rows import not_data_rows, preamble_problem


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    for s in reversed(suffixes):
        if s in EXTENSIONS:
            return EXTENSIONS[s]
    raise DataError([f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                     f"use one of {', '.join(sorted(EXTENSIONS))} or set data.format"])


def _duplicates(names) -> list[str]:
    seen, dups = set(), []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    return dups


def _duplicate_columns(path: Path, names) -> DataError:
    dups = _duplicates([str(n) for n in names])
    return DataError([f"{path}: column name(s) {', '.join(map(repr, dups))} appear more than once "
                      f"(columns: {', '.join(map(str, names))}); give every column its own name (pandas would have "
                      "renamed the second one silently)"])


C_ERROR = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    # Everything as text: a label column "1"/"0" stays a label, and empty cells stay visible as "".
    # TSV has no quoting: a text that starts with '"' must not swallow the rows after it.
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    skip = skip_rows()
    options = dict(sep=sep, dtype=str, keep_default_na=False, na_filter=False, quoting=quoting, skiprows=skip)
    comments = preamble_problem(path, sep, quoting, skip)
    if comments:
        raise DataError([comments])
    try:
        # index_col=False: a first row wider than the header is an error, never silently an index column
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False, **options)
    except pd.errors.EmptyDataError:
        raise DataError([f"{path}: no header line (the file holds only blank lines); the first line must name the "
                         f"columns, e.g. text{sep}label"]) from None
    except (pd.errors.ParserWarning, pd.errors.ParserError) as e:
        notes = preamble_problem(path, sep, quoting, skip, narrow=True)
        if notes:
            raise DataError([notes]) from None
        wide = wide_row_problem(path, sep, quoting) if not skip else None
        if wide:
            raise DataError([wide]) from None
        m = C_ERROR.search(str(e))
        if m:
            raise DataError([f"{path}: line {m[2]} has {m[3]} fields but the header has {m[1]}; quote cells that "
                             f"hold a {'tab' if sep == chr(9) else repr(sep)}"]) from None
        if "EOF inside string" in str(e):
            raise DataError([f"{path}: a quote (\") opens a cell that never closes ({str(e).split('error: ')[-1]}); "
                             "close the quote, or double quotes that are part of a text (\"\")"]) from None
        raise
    header = pd.read_csv(path, header=None, nrows=1, **options).iloc[0].tolist()
    # Empty header cells (an Excel export's trailing commas) are unnamed columns, not a name given twice.
    named = [h for h in header if isinstance(h, str) and h.strip()]
    if len(set(named)) != len(named):
        raise _duplicate_columns(path, header)
    not_data = not_data_rows(path, df, skip)
    if not_data:
        raise DataError(not_data)
    return df


def _pairs_hook(where: str, dups: list):
    """json object_pairs_hook: a dict, noting keys that an object repeats (json keeps only the last one)."""
    def hook(pairs):
        row = dict(pairs)
        if len(row) != len(pairs) and not dups:
            dups.append((where, _duplicates([k for k, _ in pairs])))
        return row
    return hook


def _refuse_duplicate_keys(path: Path, dups: list, at: str = "") -> None:
    if dups:
        keys = ", ".join(map(repr, dups[0][1]))
        raise DataError([f"{path}{at}: an object names key(s) {keys} more than once (JSON keeps only the last "
                         "value); give every key its own name"])


def _read_json(path: Path) -> pd.DataFrame:
    dups: list = []
    with open(path, encoding="utf-8-sig") as f:
        try:
            payload = json.load(f, object_pairs_hook=_pairs_hook(str(path), dups))
        except json.JSONDecodeError as e:
            hint = "; this looks like JSON Lines (one object per line): name the file .jsonl" \
                if e.msg == "Extra data" and e.colno == 1 else ""
            raise DataError([f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}{hint}"]) from None
    _refuse_duplicate_keys(path, dups)
    if isinstance(payload, dict):
        # Either {"data": [...]} / {"rows": [...]} or a mapping of row id -> row (as in many weak-supervision sets).
        for key in ("data", "rows", "examples"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
        else:
            if payload and all(isinstance(v, dict) for v in payload.values()):
                payload = list(payload.values())
    expected = 'expected a JSON list of objects, one per row (e.g. [{"text": "...", "label": "..."}])'
    if not isinstance(payload, list):
        shown = "an object without a list of rows (keys: " + ", ".join(list(map(str, payload))[:10]) + ")" \
            if isinstance(payload, dict) else f"a JSON {_json_type(payload)}"
        raise DataError([f"{path}: {expected}; got {shown}"])
    bad = [i for i, r in enumerate(payload, start=1) if not isinstance(r, dict)]
    if bad:
        raise DataError([f"{path}: {expected}; item {bad[0]} is a JSON {_json_type(payload[bad[0] - 1])} "
                         f"({len(bad)} of {len(payload)} items are not objects)"])
    return pd.DataFrame.from_records(payload)


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            dups: list = []
            try:
                row = json.loads(line, object_pairs_hook=_pairs_hook(str(path), dups))
            except json.JSONDecodeError as e:
                raise DataError([f"{path}: line {lineno} is not valid JSON ({e.msg}): {line.strip()[:80]!r}"]) from None
            _refuse_duplicate_keys(path, dups, f" line {lineno}")
            if not isinstance(row, dict):
                raise DataError([f"{path}: line {lineno} is a JSON {_json_type(row)}, expected an object "
                                 '(one per line, e.g. {"text": "...", "label": "..."})'])
            rows.append(row)
    return pd.DataFrame.from_records(rows)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise DataError([f"{path}: a damaged or cut-short Parquet file ({str(e).splitlines()[0]}); write it "
                         "again"]) from None
    if len(set(names)) != len(names):
        raise _duplicate_columns(path, names)
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001
        raise DataError([f"{path}: the Parquet file does not read ({str(e).splitlines()[0]}); it may be damaged or "
                         "cut short: write it again"]) from None


READERS = {
    "csv": lambda p: _read_delimited(p, ","),
    "tsv": lambda p: _read_delimited(p, "\t"),
    "json": _read_json,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "arrow": read_arrow,
}


def read_table(path: str | Path, fmt: str = "auto") -> pd.DataFrame:
    """One table's rows: a data file by its format, or a datasets source (a save_to_disk folder, a Hub split)."""
    table = dataset_table(path)  # data.format names file formats: a datasets source has its own
    if table is not None:
        return table
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: no such file"])
    if path.is_dir():
        raise DataError([f"{path}: a folder, not a file; give the path of one data file, or a folder written by "
                         "datasets' save_to_disk (which holds state.json or dataset_dict.json; this one holds "
                         "neither)"])
    if path.stat().st_size == 0:
        raise DataError([f"{path}: the file is empty"])
    kind = detect_format(path, fmt)
    if kind not in READERS:
        raise DataError([f"{path}: unknown format {kind!r}; data.format is one of auto, {', '.join(READERS)}"])
    try:
        problem = sniff(path, kind)
        if problem:
            raise DataError([problem])
        df = READERS[kind](path)
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError([encoding_problem(path, kind)]) from None
    except Exception as e:  # noqa: BLE001 - parser errors from pandas/pyarrow: name the file
        raise DataError([f"{path}: could not read as {kind}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"]) from None
    if len(df) == 0:
        raise DataError([f"{path}: no data rows (only a header or nothing)"])
    if df.columns.duplicated().any():  # a reader that let them through
        raise _duplicate_columns(path, list(df.columns))
    return df
