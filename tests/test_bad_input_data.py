"""Bad data files through the real CLI: `tuneforge validate` and `tuneforge train` refuse each with exit code 2, one
message naming the file, the row / line / column / key, the value seen and the fix, no traceback, and nothing written
(train refuses before output.dir exists). Plus: a huge text cell costs what max_length tokens cost to validate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from badinput import Case, assert_refused
from conftest import sentiment_rows, tiny_recipe, write_rows

ROWS = sentiment_rows(20)


def _csv(rows, header="text,label") -> str:
    return header + "\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)


def _latin1_line(path: Path, text: str, at: int) -> Path:
    """The rows of `text` as UTF-8, with a Latin-1 'é' (byte 0xe9) starting line `at`."""
    lines = text.encode().split(b"\n")
    lines[at - 1] = b"caf\xe9 " + lines[at - 1]
    path.write_bytes(b"\n".join(lines))
    return path


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _stripes(n=8, size=20) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if i % 2:
            x[i, :, ::3] = 200
        else:
            x[i, ::3, :] = 200
    return x, np.array(["horizontal", "vertical"] * (n // 2))


# ---------------------------------------------------------------- the corpus: (id, task, file maker, words)
# A file maker takes the data folder and returns the train file (or folder). Words are matched case-insensitively.

def _table(name, text, encoding="utf-8"):
    def make(d: Path) -> Path:
        (d / name).write_text(text, encoding=encoding)
        return d / name
    return make


def _bytes(name, data):
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return make


def _cut_npz(d: Path) -> Path:
    (d / "cut.npz").write_bytes(_npz(d / "full.npz", x=X, y=Y).read_bytes()[:300])
    return d / "cut.npz"


def _parquet_named_csv(d: Path) -> Path:
    pd.DataFrame(ROWS).to_parquet(d / "t.csv")
    return d / "t.csv"


def _folder(d: Path) -> Path:
    (d / "folder.csv").mkdir()
    return d / "folder.csv"


def _rows(name, rows):
    return lambda d: write_rows(d / name, rows)


def _with(rows, i, **cells):
    rows = [dict(r) for r in rows]
    rows[i].update(cells)
    return rows


def _dup_parquet(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table([pa.array(["a b"] * 4), pa.array(["c"] * 4), pa.array(["pos", "neg"] * 2)],
                            names=["text", "text", "label"]), d / "dup.parquet")
    return d / "dup.parquet"


def _nan_parquet(d: Path) -> Path:
    df = pd.DataFrame(ROWS)
    df.loc[[4, 9, 11], "label"] = np.nan
    df.to_parquet(d / "nan.parquet")
    return d / "nan.parquet"


def _na_rep_csv(d: Path) -> Path:
    df = pd.DataFrame(ROWS)
    df.loc[list(range(0, 20, 2)), "label"] = np.nan
    df.to_csv(d / "nan.csv", index=False, na_rep="NaN")  # how pandas, R ("NA") and others write a missing value
    return d / "nan.csv"


def _regression(d: Path) -> Path:
    rows = [{"text": r["text"], "label": str(i / 10)} for i, r in enumerate(ROWS)]
    rows[1]["label"], rows[5]["label"], rows[6]["label"] = "1e39", "inf", ""
    return write_rows(d / "scores.csv", rows)


TEXT = [
    # 1. a label that is missing (empty, null, NaN, 'NaN') is never a class of its own
    ("nan-label-empty-csv-cells", "classification",
     _table("nan.csv", "text,label\n" + "".join(f"{r['text']},{'' if i in (3, 7) else r['label']}\n"
                                                for i, r in enumerate(ROWS))),
     ["nan.csv", "column 'label'", "2 rows", "rows 4, 8", "missing label", "fill in the label or drop the row"]),
    ("nan-label-json-null", "classification", _rows("nan.json", _with(ROWS, 2, label=None)),
     ["nan.json row 3", "column 'label'", "missing label", "empty cell", "drop the row"]),
    ("nan-label-jsonl-NaN-literal", "classification",
     _table("nan.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS).replace('"label": "neg"}', '"label": NaN}', 1)),
     ["nan.jsonl row 2", "column 'label'", "missing label"]),
    ("nan-label-NaN-text-from-na_rep", "classification", _na_rep_csv,
     ["nan.csv", "column 'label'", "10 rows", "rows 1, 3, 5", "got 'NaN'", "drop the row"]),
    ("nan-label-parquet-none", "classification", _nan_parquet,
     ["nan.parquet", "3 rows", "rows 5, 10, 12", "missing label"]),
    ("nan-label-multi-label", "multi-label", _na_rep_csv, ["nan.csv", "10 rows", "missing labels", "'NaN'"]),
    ("regression-inf-overflow-empty", "regression", _regression,
     ["scores.csv row 2", "'1e39'", "float32", "rescale", "row 6", "'inf'", "row 7", "missing label"]),
    # 2. duplicate column names
    ("duplicate-csv-columns", "classification",
     _table("dup.csv", "text,text,label\n" + "".join(f"{r['text']},{r['text']},{r['label']}\n" for r in ROWS)),
     ["dup.csv", "'text'", "more than once", "own name"]),
    ("duplicate-tsv-columns", "classification",
     _table("dup.tsv", "label\ttext\tlabel\n" + "".join(f"{r['label']}\t{r['text']}\tx\n" for r in ROWS)),
     ["dup.tsv", "'label'", "more than once"]),
    ("duplicate-jsonl-keys", "classification",
     _table("dup.jsonl", json.dumps(ROWS[0]) + "\n" + '{"text": "a", "text": "b", "label": "pos"}\n'),
     ["dup.jsonl line 2", "'text'", "more than once"]),
    ("duplicate-parquet-columns", "classification", _dup_parquet, ["dup.parquet", "'text'", "more than once"]),
    # 4. bytes that are not UTF-8: line, row, byte offset and how to re-encode
    ("latin1-csv", "classification", lambda d: _latin1_line(d / "latin.csv", _csv(ROWS), 6),
     ["latin.csv", "line 6 (row 5)", "byte offset", "0xe9", "iconv -f latin1 -t utf-8"]),
    ("latin1-jsonl", "classification",
     lambda d: _latin1_line(d / "latin.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS), 4),
     ["latin.jsonl", "line 4 (row 4)", "byte offset", "utf-8"]),
    ("latin1-json", "classification", lambda d: _latin1_line(d / "latin.json", json.dumps(ROWS, indent=1), 3),
     ["latin.json", "line 3", "byte offset", "iconv"]),
    ("windows-1252-csv", "classification",
     _bytes("cp1252.csv", _csv(ROWS[:6]).encode() + "“smart quotes” good,pos\n".encode("cp1252")),
     ["cp1252.csv", "line 8 (row 7)", "0x93", "Windows-1252", "iconv -f cp1252"]),
    ("utf16-csv", "classification", _table("u16.csv", _csv(ROWS), encoding="utf-16"),
     ["u16.csv", "UTF-16", "byte-order mark", "iconv"]),
    ("latin1-conll", "token-classification",
     _bytes("ner.conll", b"John\tB-PER\nlives\tO\n\nin\tO\nM\xfcnchen\tB-LOC\n"),
     ["ner.conll", "line 5", "byte offset", "0xfc", "iconv"]),
    # 7. files that are not what their name says, or hold no rows
    ("empty-file", "classification", _table("empty.csv", ""), ["empty.csv", "empty"]),
    ("header-only", "classification", _table("header.csv", "text,label\n"), ["header.csv", "no data rows"]),
    ("blank-lines-only", "classification", _table("blank.csv", "\n\n\n"), ["blank.csv", "no header line"]),
    ("binary-garbage-as-csv", "classification", _bytes("garbage.csv", bytes(range(256)) * 8),
     ["garbage.csv", "NUL byte", "binary file"]),
    ("random-bytes-as-csv", "classification",
     _bytes("noise.csv", np.random.default_rng(0).integers(1, 256, 3000, dtype=np.uint8).tobytes()),
     ["noise.csv", "not UTF-8", "byte offset"]),
    ("xlsx-named-csv", "classification", _bytes("sheet.csv", b"PK\x03\x04" + b"\x14\x00" * 200),
     ["sheet.csv", "zip archive", "export the sheet as CSV"]),
    ("parquet-named-csv", "classification", _parquet_named_csv,
     ["t.csv", "parquet file", "data.format"]),
    ("json-string", "classification", _table("s.json", '"hello"'), ["s.json", "list of objects", "a json string"]),
    ("json-list-of-numbers", "classification", _table("n.json", "[1, 2, 3]"),
     ["n.json", "list of objects", "item 1 is a json number"]),
    ("json-object-without-rows", "classification", _table("o.json", '{"name": "x", "version": 2}'),
     ["o.json", "list of objects", "keys: name, version"]),
    ("jsonl-in-a-json-file", "classification", _table("lines.json", "".join(json.dumps(r) + "\n" for r in ROWS)),
     ["lines.json", "line 2", "json lines", ".jsonl"]),
    ("jsonl-line-is-a-list", "classification", _table("l.jsonl", json.dumps(ROWS[0]) + '\n["a", "pos"]\n'),
     ["l.jsonl", "line 2", "json list", "expected an object"]),
    ("corrupt-parquet", "classification", _bytes("c.parquet", b"PAR1" + b"\x00" * 100),
     ["c.parquet", "damaged or cut-short", "write it again"]),
    ("text-named-parquet", "classification", _table("t.parquet", _csv(ROWS)),
     ["t.parquet", "not a parquet file", "'PAR1'"]),
    ("row-wider-than-header", "classification", _table("wide.csv", "text,label\ngood film,pos,extra\nbad,neg\n"),
     ["wide.csv", "line 2", "3 fields", "header has 2", "quote"]),
    ("later-row-wider-than-header", "classification",
     _table("wide2.csv", _csv(ROWS[:5]) + "a, b and c,pos\n"), ["wide2.csv", "line 7", "3 fields"]),
    ("unterminated-quote", "classification", _table("q.csv", 'text,label\n"good film,pos\nbad,neg\n'),
     ["q.csv", "never closes"]),
    ("a-folder-as-data-file", "classification", _folder,
     ["folder.csv", "a folder, not a file"]),
]


def _image_model(folder: Path) -> Path:
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                             layer_type="basic")).save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 16}, crop_pct=0.875).save_pretrained(folder)
    return folder


X, Y = _stripes()
IMAGES = [
    # 3. object arrays are never unpickled
    ("npz-object-images", lambda d: _npz(d / "obj.npz", x=np.array([np.zeros((8, 8)), np.zeros((9, 9))], dtype=object),
                                         y=np.array(["a", "b"])),
     ["obj.npz", "array 'x'", "dtype=object", "np.stack", "folder"]),
    ("npz-object-labels", lambda d: _npz(d / "objy.npz", x=X, y=np.array(list(Y[:-1]) + [None], dtype=object)),
     ["objy.npz", "array 'y'", "dtype=object", "dtype=str"]),
    ("npz-cut-short", _cut_npz, ["cut.npz", "could not read as .npz", "np.savez"]),
    # 5. pixels: the conversion that fits their range; flat or channel-first arrays: the reshape
    ("float-pixels-already-0-255", lambda d: _npz(d / "f255.npz", x=X.astype(np.float32) * 0.9 + 0.25, y=Y),
     ["f255.npz", "float32", "already the 0-255 scale", "np.clip(x, 0, 255).round()", "do not multiply by 255"]),
    ("float-pixels-0-1", lambda d: _npz(d / "f01.npz", x=X.astype(np.float32) / 255, y=Y),
     ["f01.npz", "float32", "0-1 floats", "(x * 255).round().astype('uint8')"]),
    ("float-pixels-normalized", lambda d: _npz(d / "norm.npz", x=(X.astype(np.float32) - 100) / 50, y=Y),
     ["norm.npz", "outside 0-255", "normalized"]),
    ("flat-pixel-rows", lambda d: _npz(d / "flat.npz", x=X.reshape(len(X), -1), y=Y),
     ["flat.npz", "(8, 400)", "flat 20 x 20 images", "x.reshape(-1, 20, 20)"]),
    ("flat-rgb-rows", lambda d: _npz(d / "flat3.npz", x=np.zeros((8, 3 * 16 * 16), np.uint8), y=Y),
     ["flat3.npz", "(8, 768)", "16 x 16 RGB", "transpose(0, 2, 3, 1)"]),
    ("channels-first", lambda d: _npz(d / "chw.npz", x=np.zeros((8, 3, 16, 16), np.uint8), y=Y),
     ["chw.npz", "channels come first", "x.transpose(0, 2, 3, 1)"]),
    ("nan-image-labels", lambda d: _npz(d / "nany.npz", x=X, y=np.array([0, 1, np.nan, 1, 0, np.nan, 0, 1])),
     ["nany.npz", "2 images", "images 2, 5", "missing label", "drop the image"]),
    ("nan-string-image-labels", lambda d: _npz(d / "nans.npz", x=X, y=np.array(list(Y[:-1]) + [np.nan])),
     ["nans.npz", "image 7", "missing label", "'nan'"]),
]


def _write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> Path:
    return _image_model(tmp_path_factory.mktemp("tiny-resnet"))


def _case(case_id, command, task, make, words, tmp_path, model) -> Case:
    data = tmp_path / "data"
    data.mkdir()
    train = make(data)
    recipe = tiny_recipe(model, {"train": train}, tmp_path / "runs" / "run", task={"type": task})
    if task == "image-classification":
        recipe["model"] = {"name": str(model)}
    (tmp_path / "runs").mkdir()
    path = _write(recipe, tmp_path / "recipe.yaml")
    return Case(f"{command}:{case_id}", [command, path], words, watch=[tmp_path / "runs", data])


# train reads the data as validate does; these rows show that it refuses before output.dir exists
TRAIN_TOO = {"nan-label-empty-csv-cells", "nan-label-NaN-text-from-na_rep", "regression-inf-overflow-empty",
             "duplicate-csv-columns", "latin1-csv", "binary-garbage-as-csv", "npz-object-images",
             "float-pixels-already-0-255", "flat-pixel-rows"}


def _rows_for(cases):
    return [pytest.param(command, *case, id=f"{command}:{case[0]}") for case in cases
            for command in ("validate", "train") if command == "validate" or case[0] in TRAIN_TOO]


@pytest.mark.parametrize("command, case_id, task, make, words", _rows_for(TEXT))
def test_bad_text_data_is_refused(command, case_id, task, make, words, tmp_path, tiny_bert, capsys):
    assert_refused(_case(case_id, command, task, make, words, tmp_path, tiny_bert), capsys)


@pytest.mark.parametrize("command, case_id, make, words", _rows_for(IMAGES))
def test_bad_image_arrays_are_refused(command, case_id, make, words, tmp_path, image_model, capsys):
    message = assert_refused(_case(case_id, command, "image-classification", make, words, tmp_path, image_model),
                             capsys)
    assert "Traceback" not in message and "allow_pickle" not in message


def test_whole_number_pixels_of_any_numeric_type_are_read_as_uint8(tmp_path):
    from tuneforge.data.images import read_image_examples

    for name, x in (("i64.npz", X.astype(np.int64)), ("f64.npz", X.astype(np.float64))):
        examples = read_image_examples(_npz(tmp_path / name, x=x, y=Y), "auto", "image", "label")
        assert examples[1].image.dtype == np.uint8 and np.array_equal(examples[1].image, X[1])


def test_a_missing_marker_is_refused_but_real_class_names_are_classes(tmp_path):
    from tuneforge.data.dataset import parse_class_label

    # NA (North America, Namibia), N/A, null and None are names real data sets give classes.
    for name in ("None", "NA", "N/A", "null"):
        assert parse_class_label(name) == (name, None)
    for marker in ("NaN", "nan", "<NA>"):
        label, problem = parse_class_label(marker)
        assert label is None and "missing label" in problem


def test_an_excel_export_with_empty_header_cells_reads(tmp_path):
    from tuneforge.data.readers import read_table

    f = tmp_path / "excel.csv"
    f.write_text("text,label,,\ngood film,pos,,\nbad plot,neg,,\n")
    assert list(read_table(f)["label"]) == ["pos", "neg"]


def test_a_left_truncating_tokenizer_keeps_the_end_of_a_huge_text(tiny_bert):
    from transformers import AutoTokenizer

    from tuneforge.data.clip import clip_texts

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    tok.truncation_side = "left"
    text = " ".join(["good"] * 5000 + ["bad"])
    out, cut = clip_texts(tok, [text], 8)
    assert out == [text] and not cut  # not cut from the front: the tokenizer keeps the end


# ---------------------------------------------------------------- 6. a huge cell is cheap to validate

class CountingTokenizer:
    """A tokenizer wrapper recording the longest text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, pairs=None, **kw):
        for t in list(texts) + list(pairs or []):
            self.longest = max(self.longest, len(t or ""))
        return self.tokenizer(texts, pairs, **kw)


def test_a_huge_cell_is_cut_before_tokenizing_and_counted_as_truncated(tiny_bert):
    from transformers import AutoTokenizer

    from tuneforge.data.collate import encode_texts
    from tuneforge.data.dataset import TextExample

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = sentiment_rows(30)
    huge = " ".join(r["text"] for r in sentiment_rows(2000)) * 20  # ~1.5 MB
    texts = [r["text"] for r in rows] + [huge, "x" * 5000, " " * 3000 + "good film " * 400, "good " * 40]
    counting = CountingTokenizer(tok)
    split = encode_texts(counting, [TextExample(text=t) for t in texts], 32)
    assert counting.longest < 50_000  # the 1.5 MB cell was never tokenized whole
    reference = tok(texts, truncation=True, max_length=32)["input_ids"]
    assert split.input_ids == reference
    assert split.truncated == sum(len(ids) > 32 for ids in tok(texts)["input_ids"]) == 3


def test_validate_of_a_file_with_a_huge_cell_reports_it_truncated(tmp_path, tiny_bert, capsys):
    from badinput import run_cli

    rows = sentiment_rows(40)
    rows[5]["text"] = " ".join(r["text"] for r in sentiment_rows(3000)) * 20  # ~2.4 MB in one cell
    files = {"train": write_rows(tmp_path / "big.csv", rows)}
    path = _write(tiny_recipe(tiny_bert, files, tmp_path / "run"), tmp_path / "recipe.yaml")
    code, out, err = run_cli(["validate", str(path)], capsys)
    assert code == 0, err
    assert "truncated rows: {'train': 1" in out
