import json

import pytest

from tuneforge import DataError
from tuneforge.data.dataset import label_set_parser, parse_class_label, read_examples_from_file
from tuneforge.data.splits import load_examples, stratified_split
from tuneforge.tasks import get_task
from tuneforge.recipe import DataSpec

from conftest import sentiment_rows, write_rows


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_examples(tmp_path, suffix):
    rows = sentiment_rows(10)
    path = write_rows(tmp_path / f"d{suffix}", rows)
    examples = read_examples_from_file(path, parse_class_label, "text", None, "label")
    assert [(e.text, e.label) for e in examples] == [(r["text"], r["label"]) for r in rows]


def _spec(text="text", pair=None, label="label"):
    return DataSpec(train="unused", text_column=text, text_pair_column=pair, label_column=label)


def _problems(path, task="classification", **kw):
    with pytest.raises(DataError) as e:
        get_task(task).read_file(_spec(kw.get("text", "text"), kw.get("pair"), kw.get("label", "label")), path)
    return e.value.problems


def test_missing_text_names_file_row_column_and_value(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine film,pos\n,neg\nok,pos\n   ,neg\n")
    problems = _problems(path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path} row 2, column 'text': missing text")
    assert f"{path} row 4" in problems[1]


def test_missing_label_and_wrong_type(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": 5, "label": "pos"}) + "\n" + json.dumps({"text": "ok", "label": None}) + "\n")
    problems = _problems(path)
    assert "row 1, column 'text': expected text, got int 5" in problems[0]
    assert "row 2, column 'label': missing label (got an empty cell)" in problems[1]


def test_regression_label_must_be_a_number(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,label\na,0.5\nb,high\n")
    problems = _problems(path, task="regression")
    assert problems == [f"{path} row 2, column 'label': expected a number, got str 'high'"]


def test_missing_column_lists_the_columns(tmp_path):
    path = write_rows(tmp_path / "t.csv", [{"sentence": "a", "label": "x"}])
    problems = _problems(path)
    assert "no column 'text' (columns are: sentence, label); set data.text_column" in problems[0]


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert _problems(empty) == [f"{empty}: the file is empty"]
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    assert "no data rows" in _problems(header)[0]


def test_unknown_label_in_test_file(tmp_path):
    train = write_rows(tmp_path / "train.csv", sentiment_rows(10))
    test = write_rows(tmp_path / "test.csv", [{"text": "good", "label": "pos"}, {"text": "meh", "label": "mixed"}])
    with pytest.raises(DataError) as e:
        load_examples(DataSpec(train=str(train), test=str(test), validation_fraction=0), get_task("classification"))
    assert e.value.problems == [f"{test} row 2: unknown label 'mixed'; known labels: neg, pos. "
                                "Fix the row or list every label in data.labels"]


def test_class_too_small_to_split(tmp_path):
    rows = sentiment_rows(10) + [{"text": "odd one", "label": "rare"}]
    train = write_rows(tmp_path / "train.csv", rows)
    with pytest.raises(DataError) as e:
        load_examples(DataSpec(train=str(train), validation_fraction=0.2), get_task("classification"))
    assert "class 'rare' has only 1 row(s)" in e.value.problems[0] and str(train) in e.value.problems[0]


def test_stratified_split_is_fixed_by_seed_and_keeps_class_ratio(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i < 60 else "b"} for i in range(100)]
    train = write_rows(tmp_path / "train.csv", rows)
    spec = DataSpec(train=str(train), validation_fraction=0.2, test_fraction=0.1, split_seed=3)
    s1, space, origin = load_examples(spec, get_task("classification"))
    s2, _, _ = load_examples(spec, get_task("classification"))
    assert [e.text for e in s1["validation"]] == [e.text for e in s2["validation"]]
    assert sum(e.label == "a" for e in s1["validation"]) == 12 and len(s1["validation"]) == 20
    assert len(s1["test"]) == 10 and len(s1["train"]) == 70
    texts = [e.text for split in s1.values() for e in split]
    assert len(texts) == len(set(texts)) == 100  # disjoint and complete
    other, _, _ = load_examples(spec.model_copy(update={"split_seed": 4}), get_task("classification"))
    assert [e.text for e in other["validation"]] != [e.text for e in s1["validation"]]


def test_multilabel_labels_from_lists_and_strings(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"text": "a", "label": ["x", "y"]}) + "\n" + json.dumps({"text": "b", "label": "y,z"}) + "\n"
                    + json.dumps({"text": "c", "label": []}) + "\n")
    ex = read_examples_from_file(path, label_set_parser(","), "text", None, "label")
    assert [e.label for e in ex] == [["x", "y"], ["y", "z"], []]


def test_tsv_quotes_are_plain_characters(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('text\tlabel\n"Quoted start of a review\tpos\nsecond\tneg\nthird "x"\tpos\n')
    ex = read_examples_from_file(path, parse_class_label, "text", None, "label")
    assert [e.text for e in ex] == ['"Quoted start of a review', "second", 'third "x"']


def test_integer_labels_become_names(tmp_path):
    path = write_rows(tmp_path / "i.json", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    assert [e.label for e in read_examples_from_file(path, parse_class_label, "text", None, "label")] == ["1", "0"]


def test_stratified_split_unit():
    from tuneforge.data.dataset import TextExample
    ex = [TextExample(text=str(i), label="a" if i % 3 else "b") for i in range(30)]
    parts = stratified_split(ex, {"validation": 0.2}, seed=0, stratify=True, where="x")
    assert len(parts["validation"]) == 6 and sum(e.label == "b" for e in parts["validation"]) == 2


def test_truncation_is_counted_only_for_rows_actually_cut(tiny_bert):
    from transformers import AutoTokenizer

    from tuneforge.data.collate import encode_texts
    from tuneforge.data.dataset import LabelSpace, TextExample

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    # [CLS] + words + [SEP]: 5 words fill max_length 7 exactly (not cut), 6 and 9 words are cut, 2 words are short.
    texts = ["good " * 5, "bad " * 6, "fine " * 2, "the " * 9]
    examples = [TextExample(text=t.strip(), label="pos") for t in texts]
    space = LabelSpace(["neg", "pos"])
    split = encode_texts(tok, examples, 7, get_task("classification").label_tensor(examples, space))
    assert split.truncated == 2
    assert [len(ids) for ids in split.input_ids] == [7, 7, 4, 7]


def test_label_space_comes_from_all_training_rows_before_limit_train(tmp_path):
    from tuneforge.recipe import load_recipe

    rows = [{"text": f"row {i}", "label": "a"} for i in range(6)] + [{"text": "last", "label": "b"}]
    write_rows(tmp_path / "train.csv", rows)
    recipe = load_recipe({"data": {"train": str(tmp_path / "train.csv"), "validation_fraction": 0.0, "limit_train": 3}})
    splits, space, _ = load_examples(recipe.data, get_task("classification"))
    assert len(splits["train"]) == 3 and space.names == ["a", "b"]  # 'b' is known though no kept row has it
