"""What a data file is, byte by byte, when it does not read as the text its name promises: a binary file or another
format under a text name, UTF-16/32 text, bytes that are not UTF-8 (named by line and byte offset), a CSV row with
more fields than its header. Used on the error path (and a 4 KiB sniff before reading): a good file costs nothing."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

COMPRESSED = {".gz", ".bz2", ".xz", ".zst", ".zip", ".tar"}
# (leading bytes, what the file is, what to do)
MAGIC = [
    (b"PAR1", "a Parquet file", "name it .parquet or set data.format: parquet"),
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook is one)",
     "unzip it, or export the sheet as CSV (UTF-8)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Office document", "export the sheet as CSV (UTF-8)"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it (gunzip), or name it with .gz at the end (e.g. train.csv.gz)"),
    (b"BZh", "bzip2-compressed", "decompress it (bunzip2), or name it with .bz2 at the end"),
    (b"\xfd7zXZ", "xz-compressed", "decompress it (unxz), or name it with .xz at the end"),
    (b"\x93NUMPY", "a NumPy .npy array", "tabular data must be CSV, TSV, JSON(L) or Parquet"),
    (b"SQLite format 3", "an SQLite database", "export the table as CSV or Parquet"),
    (b"%PDF", "a PDF document", "export the data as CSV"),
    (b"\x89PNG", "a PNG image", "images go in a folder of class sub-folders or a table of image paths"),
    (b"\xff\xd8\xff", "a JPEG image", "images go in a folder of class sub-folders or a table of image paths"),
]
BOMS = [(b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"), (b"\xff\xfe", "UTF-16LE"),
        (b"\xfe\xff", "UTF-16BE")]
TEXT_KINDS = {"csv", "tsv", "json", "jsonl"}


def utf8_copy_name(path: Path) -> str:
    return str(path.with_name(f"{path.stem}.utf8{path.suffix}"))


def sniff(path: Path, kind: str) -> Optional[str]:
    """The problem when the first bytes show that `path` is not `kind` (csv, tsv, json, jsonl, parquet) at all."""
    if any(s.lower() in COMPRESSED for s in path.suffixes):
        return None  # pandas decompresses by suffix; what is inside is checked as it is read
    with open(path, "rb") as f:
        head = f.read(4096)
    if kind == "parquet":
        if head.startswith(b"PAR1"):
            return None
        what = next((w for magic, w, _ in MAGIC if head.startswith(magic)), None)
        if what is None and b"\x00" not in head:
            what = "text (perhaps CSV or JSON under a .parquet name)"
        return (f"{path}: not a Parquet file (a Parquet file starts with the bytes 'PAR1'; this one starts with "
                f"{head[:8]!r}{', and looks like ' + what if what else ''}); give a real Parquet file, or name the "
                "file by its real format")
    if kind not in TEXT_KINDS:
        return None
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return (f"{path}: the file is {encoding} text (it starts with a {encoding} byte-order mark), but tuneforge "
                    f"reads UTF-8; re-encode it, e.g. iconv -f {encoding[:6]} -t utf-8 {path} > {utf8_copy_name(path)}")
    for magic, what, fix in MAGIC:
        if head.startswith(magic):
            return f"{path}: this is {what}, not {kind.upper()} text; {fix}"
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        return (f"{path}: line {line} holds a NUL byte (0x00, byte offset {nul}): this is a binary file, not "
                f"{kind.upper()} text; give the data as {kind.upper()} saved as UTF-8 text")
    return None


def _open_decompressed(path: Path):
    """The file's bytes as pandas reads them: a .gz, .bz2 or .xz file decompressed (line numbers and offsets are
    then those of the text inside)."""
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(Path(path).suffix.lower(), open)
    return opener(path, "rb")


def encoding_problem(path: Path, kind: str) -> str:
    """The first line that is not UTF-8, by line number (and data row, where that is certain) and byte offset, with
    how many lines are bad and how to re-encode the file."""
    first = None
    bad = 0
    offset = 0
    rows = 0           # data rows before the current line, where they can be counted exactly
    exact = True       # a quoted CSV cell may span lines: then a line number is not a row number
    with _open_decompressed(path) as f:
        for lineno, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad += 1
                if first is None:
                    first = (lineno, offset + e.start, e.start, line, e.start, e.end, rows + 1 if exact else None)
            if kind == "csv" and b'"' in line:
                exact = False
            if line.strip():  # blank lines are no rows (pandas and the JSONL reader skip them)
                rows += 1
            offset += len(line)
    if first is None:  # a decoder error that the line scan does not see (e.g. in a compressed file)
        return (f"{path}: not UTF-8 text; re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > "
                f"{utf8_copy_name(path)}")
    lineno, at, col, line, start, end, row = first
    if row is not None and kind in ("csv", "tsv"):
        row -= 1  # the header line is no row
    where = f"line {lineno}" + (f" (row {row})" if row and kind in ("csv", "tsv", "jsonl") else "")
    byte = line[start]
    context = line[max(0, start - 24):end + 24].decode("utf-8", errors="backslashreplace").strip()
    # 0x80-0x9f are control characters in Latin-1 but letters and quotes in Windows-1252.
    encoding = "cp1252" if 0x80 <= byte <= 0x9f else "latin1"
    more = f"; {bad - 1} more line(s) have such bytes" if bad > 1 else ""
    return (f"{path}: {where} is not UTF-8: byte 0x{byte:02x} at byte offset {at} of the file (byte {col} of the "
            f"line), in '{context}'{more}. The file is probably {'Windows-1252' if encoding == 'cp1252' else 'Latin-1'}: "
            f"re-encode it as UTF-8, e.g. iconv -f {encoding} -t utf-8 {path} > {utf8_copy_name(path)}")


def wide_row_problem(path: Path, sep: str, quoting: int) -> Optional[str]:
    """The first record with more fields than the header, or None."""
    name = "tab" if sep == "\t" else repr(sep)
    with open(path, encoding="utf-8-sig", newline="", errors="replace") as f:
        reader = csv.reader(f, delimiter=sep, quoting=quoting)
        header = next(reader, None)
        if header is None:
            return None
        for record in reader:
            if len(record) > len(header):
                return (f"{path}: line {reader.line_num} has {len(record)} fields but the header has {len(header)} "
                        f"({', '.join(header)}): a {name} inside a text that is not quoted? Quote such cells "
                        f"(\"a{sep} b\"), remove the extra {name}s, or name the extra column in the header")
    return None
