"""Data where users already have it: folders written by datasets' save_to_disk, Hub datasets from the local Hugging Face
cache (offline, laid out as huggingface_hub lays it out), .arrow files; ShareGPT and Alpaca layouts; tables with rows
that are no data (notes before the header, type rows, repeated headers); classes too rare to learn."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tuneforge
from tuneforge.data.splits import load_examples
from tuneforge.errors import DataError, RecipeError

from badinput import run_cli
from conftest import sentiment_rows, tiny_recipe, write_rows

datasets = pytest.importorskip("datasets")

NAMES = ["pos", "neg"]  # ClassLabel ids in this order: not the alphabetical order tuneforge defaults to


def _labelled(rows: list[dict]):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"text": [r["text"] for r in rows],
                                       "label": [NAMES.index(r["label"]) for r in rows]}, features=features)


def _save_dict(folder: Path, **splits: list[dict]) -> Path:
    datasets.DatasetDict({k: _labelled(v) for k, v in splits.items()}).save_to_disk(str(folder))
    return folder


def _recipe(model, out: Path, **data) -> dict:
    return tiny_recipe(model, {}, out, data=data)


def _read(recipe: dict, notes: list | None = None):
    r = tuneforge.load_recipe(recipe)
    return load_examples(r.data, r.task_kind, notes)


def _pairs(examples) -> list[tuple]:
    return [(ex.text, ex.label) for ex in examples]


def _written(rows: list[dict]) -> list[tuple]:
    return [(r["text"], r["label"]) for r in rows]


def _write_yaml(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


# ---------------------------------------------------------------- save_to_disk folders and .arrow files


def test_a_saved_datasetdict_gives_its_splits_with_the_rows_written(tiny_bert, tmp_path):
    rows = {"train": sentiment_rows(40, seed=1), "validation": sentiment_rows(12, seed=2),
            "test": sentiment_rows(10, seed=3)}
    folder = _save_dict(tmp_path / "saved", **rows)
    splits, space, origin = _read(_recipe(tiny_bert, tmp_path / "run", dataset=str(folder)))
    for name, written in rows.items():
        assert _pairs(splits[name]) == _written(written)
        assert origin[name] == str(folder / name)
    assert space.names == NAMES  # the ClassLabel's own id order, not sorted names
    assert splits["train"][2].source == f"{folder / 'train'} row 3"


def test_validation_comes_from_a_dev_split_or_the_one_named(tiny_bert, tmp_path):
    rows = sentiment_rows(30, seed=1)
    folder = _save_dict(tmp_path / "saved", train=rows, dev=rows[:6], heldout=rows[6:10])
    splits, _, origin = _read(_recipe(tiny_bert, tmp_path / "run", train=str(folder)))
    assert origin["validation"] == str(folder / "dev") and "test" not in splits
    splits, _, origin = _read(_recipe(tiny_bert, tmp_path / "run", train=str(folder), validation_split="heldout",
                                      test_split="dev"))
    assert _pairs(splits["validation"]) == _written(rows[6:10]) and origin["test"] == str(folder / "dev")
    with pytest.raises(DataError) as e:
        _read(_recipe(tiny_bert, tmp_path / "run", train=str(folder), validation_split="valid"))
    assert "has no split 'valid'" in str(e.value) and "train, dev, heldout" in str(e.value)


def test_without_a_validation_split_it_is_carved_from_train(tiny_bert, tmp_path):
    folder = _save_dict(tmp_path / "saved", train=sentiment_rows(40, seed=1))
    splits, _, origin = _read(_recipe(tiny_bert, tmp_path / "run", dataset=str(folder), validation_fraction=0.25))
    assert len(splits["validation"]) == 10 and len(splits["train"]) == 30
    assert origin["validation"] == f"25% of {folder / 'train'} (seed 42)"


def test_a_saved_dataset_and_an_arrow_file_read_as_the_csv_does(tiny_bert, tmp_path):
    rows = sentiment_rows(30, seed=4)
    csv = write_rows(tmp_path / "train.csv", rows)
    _labelled(rows).save_to_disk(str(tmp_path / "one"))
    arrow = next((tmp_path / "one").glob("*.arrow"))
    renamed = tmp_path / "copy.arrow"
    renamed.write_bytes(arrow.read_bytes())
    from_csv, _, _ = _read(_recipe(tiny_bert, tmp_path / "run", train=str(csv), validation_fraction=0.2))
    for source in (tmp_path / "one", renamed):
        got, space, _ = _read(_recipe(tiny_bert, tmp_path / "run", train=str(source), validation_fraction=0.2))
        assert {k: _pairs(v) for k, v in got.items()} == {k: _pairs(v) for k, v in from_csv.items()}
        assert space.names == NAMES


def test_an_arrow_file_written_by_pyarrow_reads_too(tmp_path):
    import pyarrow as pa

    from tuneforge.data.readers import read_table

    table = pa.table({"text": ["a good film", "a dull plot"], "label": ["pos", "neg"]})
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert read_table(tmp_path / "rows.arrow").to_dict("records") == table.to_pylist()
    (tmp_path / "bad.arrow").write_text("text,label\nnot arrow,1\n")
    with pytest.raises(DataError, match="bad.arrow: not an Arrow file"):
        read_table(tmp_path / "bad.arrow")


def test_per_word_class_labels_of_a_saved_dataset_become_tag_names(tiny_bert, tmp_path):
    tags = ["O", "B-PER", "I-PER"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=tags))})
    sentences = [(["Ada", "Lovelace", "wrote"], [1, 2, 0]), (["the", "film"], [0, 0])] * 5
    ds = datasets.Dataset.from_dict({"tokens": [s for s, _ in sentences], "ner_tags": [t for _, t in sentences]},
                                    features=features)
    datasets.DatasetDict(train=ds, validation=ds.select(range(2))).save_to_disk(str(tmp_path / "ner"))
    recipe = _recipe(tiny_bert, tmp_path / "run", train=str(tmp_path / "ner"), tags_column="ner_tags")
    recipe["task"] = {"type": "token-classification"}
    splits, space, _ = _read(recipe)
    assert [(ex.tokens, ex.tags) for ex in splits["train"]] == [(s, [tags[i] for i in t]) for s, t in sentences]
    assert len(splits["validation"]) == 2 and set(space.names) == set(tags)


def test_a_test_split_without_labels_is_left_out_with_a_note(tiny_bert, tmp_path):
    rows = sentiment_rows(30, seed=1)
    unlabelled = datasets.Dataset.from_dict({"text": [r["text"] for r in rows[:5]], "label": [-1] * 5},
                                            features=_labelled(rows).features)
    datasets.DatasetDict(train=_labelled(rows), validation=_labelled(rows[:6]), test=unlabelled).save_to_disk(
        str(tmp_path / "glue"))
    notes: list[str] = []
    splits, _, _ = _read(_recipe(tiny_bert, tmp_path / "run", dataset=str(tmp_path / "glue")), notes)
    assert "test" not in splits
    assert any("every 'label' is -1 (no label), so it is not used as the test split" in n for n in notes), notes
    with pytest.raises(DataError, match="missing label"):  # named on purpose: its rows are checked as any others
        _read(_recipe(tiny_bert, tmp_path / "run", dataset=str(tmp_path / "glue"), test_split="test"))


def test_split_keys_with_files_only_are_refused(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", data={"validation_split": "dev"})
    with pytest.raises(DataError, match="names a split of a datasets source .* the recipe's data are files"):
        _read(recipe)


def test_a_datasetdict_folder_read_as_one_table_names_its_splits(tmp_path):
    from tuneforge.data.readers import read_table

    folder = _save_dict(tmp_path / "saved", train=sentiment_rows(4), test=sentiment_rows(2))
    with pytest.raises(DataError, match=r"a DatasetDict of splits train, test; .* give one split's folder"):
        read_table(folder)
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="holds state.json or dataset_dict.json; this one holds neither"):
        read_table(tmp_path / "plain")


def test_training_end_to_end_from_a_saved_folder_named_relative_to_the_recipe(tiny_bert, tmp_path, capsys):
    rows = {"train": sentiment_rows(48, seed=1), "validation": sentiment_rows(16, seed=2),
            "test": sentiment_rows(16, seed=3)}
    _save_dict(tmp_path / "project" / "saved", **rows)
    recipe = _recipe(tiny_bert, tmp_path / "run", dataset="saved")
    recipe["training"].update({"epochs": 6, "lr": 1e-2})
    path = _write_yaml(recipe, tmp_path / "project" / "recipe.yaml")
    assert tuneforge.load_recipe(path).data.train == str(tmp_path / "project" / "saved")
    code, out, err = run_cli(["train", str(path)], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "pos", "1": "neg"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["labels"] == NAMES
    assert summary["metrics"]["test"]["accuracy"] >= 0.75  # a word decides the label: learnable


# ---------------------------------------------------------------- Hub datasets from the local cache, offline


def _hub_repo(cache: Path, name: str, files: dict[str, str], commit: str = "0123456789abcdef") -> Path:
    """A dataset repository in the cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/, whose
    files link to blobs/."""
    repo = cache / f"datasets--{name.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for i, (rel, text) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(text)
        target = repo / "snapshots" / commit / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob)
    return repo


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """HF_HOME in a tmp folder, offline: the Hub cache under hub/, datasets' own under datasets/."""
    import huggingface_hub.constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return home / "hub"


def test_a_hub_dataset_is_read_offline_from_the_hub_cache(tiny_bert, hub_cache, tmp_path):
    rows = {"train": sentiment_rows(30, seed=1), "test": sentiment_rows(8, seed=2)}
    _hub_repo(hub_cache, "acme/reviews", {f"data/{k}.jsonl": _jsonl(v) for k, v in rows.items()})
    splits, space, origin = _read(_recipe(tiny_bert, tmp_path / "run", dataset="acme/reviews",
                                          validation_fraction=0.2))
    assert _pairs(splits["test"]) == _written(rows["test"])
    assert sorted(_pairs(splits["train"] + splits["validation"])) == sorted(_written(rows["train"]))
    assert origin["train"] == "acme/reviews (train split)" and space.names == ["neg", "pos"]
    assert splits["test"][0].source == "acme/reviews (test split) row 1"


def test_a_hub_dataset_configuration_is_chosen_with_dataset_config(tiny_bert, hub_cache, tmp_path):
    card = ("---\nconfigs:\n- config_name: short\n  data_files:\n  - split: train\n    path: short/train.jsonl\n"
            "- config_name: long\n  data_files:\n  - split: train\n    path: long/train.jsonl\n---\n")
    short, long = sentiment_rows(20, seed=1), sentiment_rows(24, seed=2)
    _hub_repo(hub_cache, "acme/two", {"README.md": card, "short/train.jsonl": _jsonl(short),
                                      "long/train.jsonl": _jsonl(long)})
    splits, _, origin = _read(_recipe(tiny_bert, tmp_path / "run", dataset="acme/two", dataset_config="long",
                                      validation_fraction=0.0))
    assert _pairs(splits["train"]) == _written(long) and origin["train"] == "acme/two (long, train split)"
    with pytest.raises(DataError) as e:
        _read(_recipe(tiny_bert, tmp_path / "run", dataset="acme/two", dataset_config="medium"))
    assert "no configuration 'medium' (data.dataset_config)" in str(e.value) and "short" in str(e.value)


def test_a_hub_dataset_missing_from_the_cache_is_one_line_that_says_how_to_fetch_it(tiny_bert, tmp_path, capsys):
    # A fresh process's view: HF_HOME points at an empty cache and nothing may be downloaded.
    path = _write_yaml(_recipe(tiny_bert, tmp_path / "run", dataset="acme/missing"), tmp_path / "recipe.yaml")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "tuneforge", "validate", str(path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    problem = [line for line in done.stderr.splitlines() if "acme/missing" in line]
    assert len(problem) == 1, done.stderr
    assert "not in the local Hugging Face cache" in problem[0]
    assert "hf download acme/missing --repo-type dataset" in problem[0]


def test_a_hub_name_in_a_recipe_file_stays_a_name(tmp_path):
    (tmp_path / "dev").mkdir()
    write_rows(tmp_path / "dev" / "v.csv", sentiment_rows(4))
    recipe = {"data": {"dataset": "acme/reviews", "validation": "dev/v.csv", "test": "missing/t.csv"}}
    loaded = tuneforge.load_recipe(_write_yaml(recipe, tmp_path / "recipe.yaml"))
    assert loaded.data.train == "acme/reviews" and loaded.data.dataset is None
    assert loaded.data.validation == str(tmp_path / "dev" / "v.csv")
    assert loaded.data.test == str(tmp_path / "missing" / "t.csv")  # a missing file is named where it was looked for


def test_packaged_names_stay_packaged_and_a_near_miss_is_named(tmp_path):
    loaded = tuneforge.load_recipe(_write_yaml({"data": {"dataset": "rotten-tomatoes"}}, tmp_path / "r.yaml"))
    assert loaded.data.dataset == "rotten-tomatoes" and loaded.data.train is None
    with pytest.raises(RecipeError) as e:
        tuneforge.load_recipe({"data": {"dataset": "rotten-tomatos"}})
    assert "did you mean 'rotten-tomatoes'" in str(e.value)
    with pytest.raises(RecipeError, match="not both"):
        tuneforge.load_recipe({"data": {"dataset": "acme/reviews", "train": "t.csv"}})


# ---------------------------------------------------------------- ShareGPT and Alpaca


SHAREGPT = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of France?"},
                               {"from": "gpt", "value": "Paris."}]},
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]
ALPACA = [{"instruction": "Translate to French.", "input": "cat", "output": "chat"},
          {"instruction": "Name a colour.", "input": "", "output": "blue"}]


def _causal(path: Path):
    from tuneforge.data.causal import read_causal_examples

    return read_causal_examples(path, "auto", "text", "prompt", "completion", "messages")


def test_sharegpt_turns_become_chat_messages(tmp_path, capsys):
    path = write_rows(tmp_path / "chat.jsonl", SHAREGPT * 3)
    examples = _causal(path)
    assert examples[0].messages == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Capital of France?"},
                                    {"role": "assistant", "content": "Paris."}]
    assert [ex.messages for ex in examples[1::2]] == [[{"role": "user", "content": "2+2?"},
                                                      {"role": "assistant", "content": "4"}]] * 3
    assert "column 'conversations' (ShareGPT: from/value) -> messages" in capsys.readouterr().err


def test_alpaca_rows_become_prompt_and_completion(tmp_path):
    path = write_rows(tmp_path / "alpaca.json", ALPACA)
    examples = _causal(path)
    assert [(ex.prompt, ex.completion) for ex in examples] == [("Translate to French.\n\ncat", "chat"),
                                                                ("Name a colour.", "blue")]


def test_validate_shows_the_layout_it_mapped(tmp_path, capsys):
    from test_causal_lm import make_tiny_llama

    model = make_tiny_llama(tmp_path / "llama")
    for name, rows, said in (("chat.jsonl", SHAREGPT * 4, "conversations' (ShareGPT: from/value) -> messages; roles "
                              "system -> system, human -> user, gpt -> assistant"),
                             ("alpaca.jsonl", ALPACA * 4, "columns instruction + input -> prompt (instruction, a blank "
                              "line, input), output -> completion (Alpaca)")):
        recipe = {"model": {"name": str(model), "max_length": 32}, "task": {"type": "causal-lm"},
                  "data": {"train": write_rows(tmp_path / name, rows).name, "validation_fraction": 0.25},
                  "output": {"dir": str(tmp_path / "run")}}
        code, out, err = run_cli(["validate", str(_write_yaml(recipe, tmp_path / f"{name}.yaml"))], capsys)
        assert code == 0, err
        assert said in " ".join(out.split()), out


def test_bad_sharegpt_and_alpaca_rows_are_named(tmp_path):
    rows = [SHAREGPT[0], {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]}]
    with pytest.raises(DataError) as e:
        _causal(write_rows(tmp_path / "chat.jsonl", rows))
    assert "chat.jsonl row 2, column 'conversations', turn 2: 'from' is 'bot'" in str(e.value)
    rows = [ALPACA[0], {"instruction": "Say hi.", "output": ""}]
    with pytest.raises(DataError) as e:
        _causal(write_rows(tmp_path / "alpaca.jsonl", rows))
    assert "alpaca.jsonl row 2, column 'output': expected non-empty text, got ''" in str(e.value)


def test_tuneforge_own_columns_win_over_a_layout(tmp_path, capsys):
    rows = [{"prompt": "p", "completion": "c", "instruction": "i", "output": "o"}]
    examples = _causal(write_rows(tmp_path / "own.jsonl", rows))
    assert (examples[0].prompt, examples[0].completion) == ("p", "c")
    assert "Alpaca" not in capsys.readouterr().err


# ---------------------------------------------------------------- rows that are not data


def _read_file(path: Path, skip: int = 0):
    from tuneforge.data.dataset import parse_class_label, read_examples_from_file
    from tuneforge.data.reading import reading

    with reading(skip_rows=skip):
        return read_examples_from_file(path, parse_class_label, "text", None, "label")


def test_comment_lines_before_the_header_are_named_and_skipped_with_skip_rows(tmp_path, tiny_bert):
    rows = sentiment_rows(12)
    body = write_rows(tmp_path / "plain.csv", rows).read_text()
    path = tmp_path / "export.csv"
    path.write_text("# exported by survey-tool 3.1\n# 2024-05-01, 12 rows\n" + body)
    with pytest.raises(DataError) as e:
        _read_file(path)
    assert "export.csv: lines 1-2 above the header hold 2 comments ('# exported by survey-tool 3.1', ...)" in str(e.value)
    assert "the header is line 3 ('text,label')" in str(e.value)
    assert "Set data.skip_rows: 2" in str(e.value)
    assert [(ex.text, ex.label) for ex in _read_file(path, skip=2)] == _written(rows)
    recipe = tiny_recipe(tiny_bert, {"train": path}, tmp_path / "run", data={"skip_rows": 2})
    splits, _, _ = _read(recipe)
    assert len(splits["train"]) + len(splits["validation"]) == 12


def test_a_note_line_above_the_header_is_named_instead_of_a_parser_error(tmp_path):
    path = tmp_path / "report.csv"
    path.write_text("Quarterly export\n\n" + write_rows(tmp_path / "p.csv", sentiment_rows(6)).read_text())
    with pytest.raises(DataError) as e:
        _read_file(path)
    assert "report.csv: lines 1-2 above the header hold a note ('Quarterly export'), not column names" in str(e.value)
    assert "Set data.skip_rows: 2" in str(e.value)


def test_a_hash_column_and_hashtag_texts_are_data(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_text("#,text,label\n1,#blessed good day,pos\n2,#fail bad day,neg\n")
    from tuneforge.data.readers import read_table

    assert read_table(path).to_dict("records") == [{"#": "1", "text": "#blessed good day", "label": "pos"},
                                                   {"#": "2", "text": "#fail bad day", "label": "neg"}]


def test_a_row_of_column_types_under_the_header_is_named(tmp_path):
    path = tmp_path / "typed.csv"
    path.write_text("text,label\nstring,int\na good film,1\na dull plot,0\n")
    with pytest.raises(DataError) as e:
        _read_file(path)
    assert "typed.csv row 1: ('string', 'int') is a row of column types, not data" in str(e.value)
    assert f"sed -i '2d' {path}" in str(e.value)
    orange = tmp_path / "orange.tsv"
    orange.write_text("text\tlabel\nstring\tdiscrete\nmeta\tclass\na good film\tpos\n")
    with pytest.raises(DataError, match=r"rows 1-2: .* and the flags under it are a row of column types"):
        _read_file(orange)


def test_a_header_repeated_inside_the_file_is_named(tmp_path):
    path = tmp_path / "joined.csv"
    path.write_text("text,label\na good film,pos\ntext,label\na dull plot,neg\n")
    with pytest.raises(DataError, match=r"joined.csv: row 2 repeats the header \(text, label\)"):
        _read_file(path)


# ---------------------------------------------------------------- classes too rare to learn


def _with_label(rows: list[dict], at: dict[int, str]) -> list[dict]:
    return [{**r, "label": at.get(i, r["label"])} for i, r in enumerate(rows, start=1)]


def test_a_class_of_one_or_two_rows_in_a_large_training_set_is_a_warning_naming_its_rows(tiny_bert, tmp_path):
    rows = [{**r, "label": {"pos": "positive", "neg": "negative"}[r["label"]]} for r in sentiment_rows(240)]
    files = {"train": write_rows(tmp_path / "train.csv", _with_label(rows, {37: "postive", 90: "mixed", 91: "mixed"})),
             "validation": write_rows(tmp_path / "dev.csv", rows[:10])}
    notes: list[str] = []
    _read(tiny_recipe(tiny_bert, files, tmp_path / "run"), notes)
    typo = [n for n in notes if "'postive'" in n]
    assert typo == [f"class 'postive' has only 1 of 240 training rows ({files['train']} row 37): too few to learn or "
                    "to measure; a misspelling of 'positive'? fix the label, add rows of the class, or drop the "
                    "class's rows"]
    assert any(f"class 'mixed' has only 2 of 240 training rows ({files['train']} rows 90, 91)" in n for n in notes)
    small = {"train": write_rows(tmp_path / "small.csv", _with_label(rows[:100], {5: "postive"})),
             "validation": files["validation"]}
    notes = []
    _read(tiny_recipe(tiny_bert, small, tmp_path / "run"), notes)
    assert not any("training rows" in n for n in notes)  # 100 rows: a small class may be the data's real shape


def test_a_class_too_small_to_carve_names_its_rows(tiny_bert, tmp_path):
    rows = _with_label(sentiment_rows(40), {7: "mixed"})
    with pytest.raises(DataError) as e:
        _read(tiny_recipe(tiny_bert, {"train": write_rows(tmp_path / "train.csv", rows)}, tmp_path / "run"))
    assert f"class 'mixed' has only 1 row(s) ({tmp_path / 'train.csv'} row 7)" in str(e.value)
