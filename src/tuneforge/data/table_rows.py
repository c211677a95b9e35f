"""Rows of a CSV/TSV file that are not data, found before they become a pandas error or, worse, classes made of header
words: notes or comments before the header (skipped with data.skip_rows), a row of column types or of flags right
under the header (as Orange, some database and spreadsheet exports write them), the header repeated inside the file
(files joined with their headers). Each is one problem naming the file, the line or row, what it holds and the fix."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

import pandas as pd

from .rawfile import COMPRESSED

# A cell that names a column type rather than holding a value (pandas, numpy, SQL, Arrow and Orange spellings).
TYPE_WORD = re.compile(r"(u?int(8|16|32|64)?|integer|bigint|smallint|tinyint|long|short|float(16|32|64)?|double|real"
                       r"|decimal(\(\d+(,\s*\d+)?\))?|number|numeric|bool(ean)?|str(ing)?|text|varchar(\(\d+\))?"
                       r"|char(\(\d+\))?|object|category|categorical|discrete|continuous|date|datetime|timestamp"
                       r"|large_string|utf8)", re.IGNORECASE)
# Orange's third header row: which role each column plays.
FLAG_WORD = re.compile(r"(class|meta|ignore|weight|target|feature|[cmiw])?", re.IGNORECASE)
HEAD_LINES = 60  # lines looked at for notes before the header: the top of the file, never all of it


def _width(line: str, sep: str, quoting: int) -> int:
    try:
        return len(next(csv.reader([line], delimiter=sep, quoting=quoting), []))
    except csv.Error:  # a cell beyond the csv module's field limit: its separators tell enough here
        return line.count(sep) + 1


def _widths(lines: list[str], sep: str, quoting: int) -> list[int]:
    return [_width(line, sep, quoting) for line in lines]


def _head(path: Path, skip: int) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        lines = []
        for i, line in enumerate(f):
            if i >= skip + HEAD_LINES:
                break
            lines.append(line.rstrip("\r\n"))
    return lines[skip:]


def _usual_width(widths: list[int]) -> Optional[int]:
    counted = [w for w in widths if w > 0]
    return max(set(counted), key=counted.count) if counted else None


def _comment(line: str, width: int, usual: int) -> bool:
    # '#id,text,label' is a header whose first column is '#'; '# exported by ...' is a comment.
    return width != usual or re.match(r"#(\s|#|!|$)", line) is not None


def preamble_problem(path: Path, sep: str, quoting: int, skip: int, narrow: bool = False) -> Optional[str]:
    """Lines before the header (after the `skip` lines data.skip_rows skips): comment lines starting with '#', and,
    with `narrow` (pandas found a row wider than the header), notes with fewer fields than the rows under them."""
    if any(s.lower() in COMPRESSED for s in path.suffixes):
        return None  # read as pandas decompresses it; its first lines are not text here
    lines = _head(path, skip)
    if not lines:
        return None
    widths = _widths(lines, sep, quoting)
    usual = _usual_width(widths[1:] or widths)
    if usual is None:
        return None
    count = 0
    for line, width in zip(lines, widths):
        if line.startswith("#") and _comment(line, width, usual):
            count += 1
        elif narrow and (not line.strip() or width < usual):
            count += 1
        elif not line.strip() and count:
            count += 1  # a blank line between the notes and the header
        else:
            break
    if count == 0 or count >= len(lines):
        return None
    header_line = lines[count]
    first = skip + 1
    real = sum(1 for line in lines[:count] if line.strip())  # blank lines are skipped, but are no notes
    span = f"line {first}" if count == 1 else f"lines {first}-{skip + count}"
    kind = "comment" if lines[0].startswith("#") else "note"
    noun = f"a {kind}" if real == 1 else f"{real} {kind}s"
    return (f"{path}: {span} above the header hold{'s' if count == 1 else ''} {noun} ({lines[0][:60]!r}"
            f"{', ...' if real > 1 else ''}), not column names; the header is line {skip + count + 1} "
            f"({header_line[:60]!r}). Set data.skip_rows: {skip + count} to skip the lines above it")


def _all_cells(row: list, pattern: re.Pattern) -> bool:
    cells = [str(c).strip() for c in row]
    return any(cells) and all(pattern.fullmatch(c) for c in cells if c)


def not_data_rows(path: Path, df: pd.DataFrame, skip: int) -> list[str]:
    """Problems of rows that are no data: a row of column types (and a row of flags under it) right under the header,
    and the header repeated further down. Row numbers are those of every message (1 is the line under the header)."""
    if len(df) == 0 or len(df.columns) == 0:
        return []
    problems = []
    header_line = skip + 1
    first = df.iloc[0].tolist()
    # One column of texts may well hold the word 'text'; types rows come from multi-column exports.
    if len(df.columns) > 1 and _all_cells(first, TYPE_WORD):
        flagged = len(df) > 1 and _all_cells(df.iloc[1].tolist(), FLAG_WORD)
        rows = "rows 1-2" if flagged else "row 1"
        lines = f"{header_line + 1},{header_line + 2}" if flagged else f"{header_line + 1}"
        problems.append(f"{path} {rows}: {tuple(map(str, first))} {'and the flags under it are' if flagged else 'is'} "
                        "a row of column types, not data (some tools write one under the header); delete "
                        f"{'them' if flagged else 'it'}, e.g. sed -i '{lines}d' {path}")
    header = [str(c).strip() for c in df.columns]
    if any(h and not h.startswith("Unnamed:") for h in header):
        repeats = [i for i, row in enumerate(df.itertuples(index=False), start=1)
                   if [str(c).strip() for c in row] == header]
        if repeats:
            shown = ", ".join(map(str, repeats[:8])) + (", ..." if len(repeats) > 8 else "")
            rows = f"row {shown} repeats" if len(repeats) == 1 else f"{len(repeats)} rows ({shown}) repeat"
            problems.append(f"{path}: {rows} the header ({', '.join(header)}): files joined with their headers? "
                            "Delete those rows")
    return problems
