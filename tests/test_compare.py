"""Method comparison: parsing, a real two-method two-seed study, its files, and reuse of finished runs."""
from __future__ import annotations

import csv
import json
import statistics

import pytest
import yaml
from conftest import tiny_recipe

import tuneforge
from tuneforge.studies import parse_methods


def test_method_specs():
    choices = parse_methods("full,freeze:4,lora:16,lora:r=4:alpha=8:lr=5e-4,lora:target_modules=[query,value],ia3")
    assert [c.label for c in choices] == ["full", "freeze:4", "lora:16", "lora:r=4:alpha=8:lr=5e-4",
                                          "lora:target_modules=[query,value]", "ia3"]
    assert choices[1].method == {"name": "freeze", "freeze_layers": 4, "freeze_embeddings": True}
    assert choices[2].method == {"name": "lora", "r": 16}
    assert choices[3].method == {"name": "lora", "r": 4, "alpha": 8} and choices[3].lr == pytest.approx(5e-4)
    assert choices[4].method == {"name": "lora", "target_modules": ["query", "value"]}


def test_bad_method_specs_are_all_reported(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(tuneforge.RecipeError) as e:
        parse_methods("full,ia3:4,freeze,full")
    text = str(e.value)
    assert "ia3 takes no number" in text and "freeze:4" in text and "listed twice" in text
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run")
    with pytest.raises(tuneforge.RecipeError, match="'lorax'.*method.name"):
        tuneforge.compare(recipe, "full,lorax", study_dir=tmp_path / "study")
    assert not (tmp_path / "study").exists()  # nothing ran


def test_compare_runs_every_method_and_seed_and_tabulates(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 3, "lr": 3e-2})
    study = tmp_path / "study"
    result = tuneforge.compare(recipe, "head,lora:4", seeds=2, study_dir=study)
    assert [r.label for r in result.rows] == ["head", "lora:4"]
    for row in result.rows:
        runs = sorted((study / row.label.replace(":", "-")).glob("seed-*"))
        assert [p.name for p in runs] == ["seed-0", "seed-1"]
        values = [json.loads((p / "summary.json").read_text())["metrics"]["test"]["accuracy"] for p in runs]
        assert row.values == values
        assert row.mean == pytest.approx(statistics.fmean(values))
        assert row.std == pytest.approx(statistics.stdev(values))
        assert row.peak_rss_mb > 100 and row.train_seconds > 0
    head, lora = result.rows
    assert head.lr == pytest.approx(3e-2)  # the recipe's rate for a whole-network method...
    assert lora.lr == pytest.approx(1e-3)  # ...and LoRA's own default, not the recipe's
    assert lora.stored_bytes < head.stored_bytes  # an adapter stores far less than a whole model
    seeds = [yaml.safe_load((study / "lora-4" / s / "recipe.yaml").read_text())["training"]["seed"]
             for s in ("seed-0", "seed-1")]
    assert seeds == [0, 1]
    rows = list(csv.DictReader(open(result.files["csv"])))
    assert [r["method"] for r in rows] == ["head", "lora:4"]
    assert "± " in result.files["markdown"].read_text()
    assert result.files["plot"].read_bytes()[:4] == b"\x89PNG"

    # Started again: finished runs are reused, not retrained.
    stamps = {p: p.stat().st_mtime for p in study.glob("*/seed-*/summary.json")}
    again = tuneforge.compare(recipe, "head,lora:4", seeds=2, study_dir=study)
    assert [r.values for r in again.rows] == [r.values for r in result.rows]
    assert stamps == {p: p.stat().st_mtime for p in study.glob("*/seed-*/summary.json")}


def test_compare_needs_held_out_data(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, {"train": sentiment_files["train"]}, tmp_path / "run",
                         data={"validation_fraction": 0.0})
    with pytest.raises(tuneforge.RecipeError, match="held-out data"):
        tuneforge.compare(recipe, "head", study_dir=tmp_path / "study")
