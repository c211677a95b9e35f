"""The user's path: recipe -> run directory -> a model any Hugging Face tool loads; CLI; run-dir safety."""
import json

import pytest
import torch

import tuneforge
from tuneforge.cli import main

from conftest import tiny_recipe, write_rows


def test_run_directory_and_pipeline_round_trip(tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoConfig, pipeline

    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 6, "lr": 1e-2}))
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "model/config.json", "model/model.safetensors",
                 "model/tokenizer.json"):
        assert (r.run_dir / name).exists(), name
    config = AutoConfig.from_pretrained(r.model_dir)
    assert config.id2label == {0: "neg", 1: "pos"} and config.label2id == {"neg": 0, "pos": 1}
    assert r.metrics["test"]["accuracy"] >= 0.75  # the toy data is learnable: a word decides the label
    texts = ["the film was good", "a dull plot", "the actor was superb", "boring scene"]
    clf = pipeline("text-classification", model=str(r.model_dir), device="cpu")
    from_pipeline = clf(texts)
    ours = tuneforge.predict(r.run_dir, texts=texts)
    assert [p["label"] for p in from_pipeline] == [p["label"] for p in ours]
    for a, b in zip(from_pipeline, ours):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_saved_model_reloads_with_identical_outputs(tiny_bert, sentiment_files, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    class Keep:
        def on_train_end(self, loop):
            self.model = loop.model

    keep = Keep()
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run"), callbacks=[keep])
    tok = AutoTokenizer.from_pretrained(r.model_dir)
    batch = tok(["good film", "the plot was dull and poor"], padding=True, return_tensors="pt")
    reloaded = AutoModelForSequenceClassification.from_pretrained(r.model_dir).eval()
    keep.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, keep.model(**batch).logits)


def test_finished_run_is_never_overwritten_without_the_flag(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})
    tuneforge.fine_tune(recipe)
    before = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    with pytest.raises(tuneforge.RunDirError, match="finished run; pass --overwrite"):
        tuneforge.fine_tune(recipe, ["training.lr=0.01"])
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == before
    tuneforge.fine_tune(recipe, ["training.lr=0.01"], overwrite=True)
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() != before


def test_a_foreign_folder_is_never_deleted(tiny_bert, sentiment_files, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(tuneforge.RunDirError, match="was not made by tuneforge"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "mine"), overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_bad_data_fails_before_training_and_writes_nothing(tiny_bert, sentiment_files, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,pos\n,neg\nfine,\n")
    recipe = tiny_recipe(tiny_bert, {**sentiment_files, "train": bad}, tmp_path / "run")
    with pytest.raises(tuneforge.DataError) as e:
        tuneforge.fine_tune(recipe)
    assert len(e.value.problems) == 2
    assert not (tmp_path / "run").exists()


def test_multilabel_regression_and_pairs(tiny_bert, tmp_path):
    rows_ml = [{"text": t, "tags": tags} for t, tags in
               [("good film", "pos"), ("bad plot", "neg"), ("good but bad", "pos|neg"), ("the movie", "")] * 8]
    ml = write_rows(tmp_path / "ml.csv", rows_ml)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, {"train": ml}, tmp_path / "ml", task={"type": "multi-label"},
                                        data={"label_column": "tags", "label_separator": "|", "validation_fraction": 0.25}))
    assert set(r.metrics["validation"]) >= {"f1_micro", "f1_macro", "accuracy", "mcc"}
    pred = tuneforge.predict(r.run_dir, texts=["good film"])[0]
    assert set(pred["scores"]) == {"neg", "pos"}

    rows_reg = [{"text": t, "score": s} for t, s in [("good", 1.0), ("bad", -1.0), ("the film", 0.0)] * 10]
    reg = write_rows(tmp_path / "reg.jsonl", rows_reg)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, {"train": reg}, tmp_path / "reg", task={"type": "regression"},
                                        data={"label_column": "score"}, training={"metric": "mse"}))
    assert set(r.metrics["validation"]) >= {"mse", "mae", "pearson", "spearman"}
    assert isinstance(tuneforge.predict(r.run_dir, texts=["good"])[0]["score"], float)

    rows_pair = [{"a": "good film", "b": "great movie", "label": "same"}, {"a": "good film", "b": "bad plot", "label": "different"}] * 12
    pairs = write_rows(tmp_path / "pairs.parquet", rows_pair)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, {"train": pairs}, tmp_path / "pair", task={"type": "pair-classification"},
                                        data={"text_column": "a", "text_pair_column": "b", "validation_fraction": 0.25}))
    pred = tuneforge.predict(r.run_dir, texts=["good film"], text_pairs=["bad plot"])[0]
    assert pred["label"] in {"same", "different"} and pred["text_pair"] == "bad plot"


def test_cli_train_validate_evaluate_predict(tiny_bert, sentiment_files, tmp_path, capsys):
    import yaml

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run")))
    assert main(["validate", str(recipe_file)]) == 0
    assert "recipe and data are valid" in capsys.readouterr().out
    assert main(["train", str(recipe_file), "training.epochs=1", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{\n"):])
    assert result["steps"] == 6
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(sentiment_files["test"]), "--json"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{"):])
    assert metrics["accuracy"] == pytest.approx(result["metrics"]["test"]["accuracy"])
    assert main(["predict", str(tmp_path / "run"), "--text", "good film", "--text", "awful plot"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and {"label", "score", "scores"} <= set(lines[0])
    assert main(["predict", str(tmp_path / "run"), "--data", str(sentiment_files["test"]),
                 "--output", str(tmp_path / "p.jsonl")]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 16


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    f = tmp_path / "r.yaml"
    f.write_text("data: {train: x.csv}\ntraining: {epoch: 2}\n")
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err
    assert "training.epoch: unknown key; did you mean 'training.epochs'?" in err and "Traceback" not in err
    assert main(["train", str(f), "training.epochs=2", "model.nam=x"]) == 2
    assert "model.nam: unknown key; did you mean 'model.name'?" in capsys.readouterr().err


def test_a_users_own_recipe_yaml_does_not_make_a_folder_a_run(tiny_bert, sentiment_files, tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "recipe.yaml").write_text("mine")
    (tmp_path / "project" / "notes.csv").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(tuneforge.RunDirError, match="was not made by tuneforge"):
            tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "project"), overwrite=overwrite)
    assert sorted(p.name for p in (tmp_path / "project").iterdir()) == ["notes.csv", "recipe.yaml"]


def test_problems_found_with_the_model_fail_before_anything_is_written(tiny_bert, sentiment_files, tmp_path):
    cases = {
        "training.metric: 'f1_macr' is not a metric": {"training": {"metric": "f1_macr"}},
        "model.max_length: 500 is more than": {"model": {"max_length": 500}},
        "early_stopping needs validation data": {"training": {"early_stopping": {"patience": 1}},
                                                 "data": {"validation_fraction": 0.0}},
    }
    for i, (message, sections) in enumerate(cases.items()):
        files = {k: v for k, v in sentiment_files.items() if k != "validation"} if "data" in sections else sentiment_files
        recipe = tiny_recipe(tiny_bert, files, tmp_path / f"run{i}", **sections)
        with pytest.raises(tuneforge.RecipeError, match=message):
            tuneforge.fine_tune(recipe)
        with pytest.raises(tuneforge.RecipeError, match=message):
            tuneforge.validate(recipe)
        assert not (tmp_path / f"run{i}").exists()


def test_overwrite_keeps_the_old_run_when_the_new_recipe_is_broken(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})
    tuneforge.fine_tune(recipe)
    with pytest.raises(tuneforge.TuneforgeError):
        tuneforge.fine_tune(recipe, ["model.name=/no/such/model"], overwrite=True)
    assert (tmp_path / "run" / "summary.json").exists()


def test_gradual_unfreezing_that_stops_short_is_reported(tiny_bert, sentiment_files, tmp_path):
    report = tuneforge.validate(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                            method={"name": "gradual"}, training={"epochs": 2}))
    assert report["warnings"] == ["gradual unfreezing reaches 2 of 4 stages in this run: embeddings, layer.0 never "
                                  "train. Unfreeze more often (method.unfreeze_every) or train longer"]


def test_continue_from_a_fine_tuned_run_with_another_label_set(tiny_bert, sentiment_files, tmp_path):
    first = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "first", training={"epochs": 1}))
    rows = [{"text": t, "label": l} for t, l in [("good film", "pos"), ("bad plot", "neg"), ("the movie", "meh")] * 8]
    three = write_rows(tmp_path / "three.csv", rows)
    second = tuneforge.fine_tune(tiny_recipe(first.model_dir, {"train": three}, tmp_path / "second",
                                             training={"epochs": 1}, data={"validation_fraction": 0.25}))
    summary = json.loads((second.run_dir / "summary.json").read_text())
    assert {"classifier.weight", "classifier.bias"} <= set(summary["new_head_parameters"])
    assert summary["labels"] == ["meh", "neg", "pos"]


def test_predict_checks_text_pairs(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1}))
    with pytest.raises(tuneforge.DataError, match="single texts, not pairs"):
        tuneforge.predict(r.run_dir, texts=["a"], text_pairs=["b"])


def test_gradual_reach_counts_max_steps(tiny_bert, sentiment_files, tmp_path):
    # 6 steps per epoch, but max_steps 5 ends inside the first epoch: only the head ever trains.
    report = tuneforge.validate(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "gradual"},
                                            training={"epochs": 3, "max_steps": 5}))
    assert report["warnings"][0].startswith("gradual unfreezing reaches 1 of 4 stages")
