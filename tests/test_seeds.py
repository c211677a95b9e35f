"""Seed studies: the 95% interval by hand, seeds varied separately, early discard continuing the best runs
exactly as if never stopped, reuse of finished runs, and the interval in `compare`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import tuneforge
from tuneforge.errors import RecipeError
from tuneforge.studies.seeds import interval95, seed_recipes, seed_study

from conftest import tiny_recipe


def test_interval95_by_hand():
    mean, std, low, high = interval95([1.0, 2.0, 3.0])
    # mean 2, sample std 1, t(0.975, 2 dof) = 4.302653: half-width 4.302653 / sqrt(3)
    assert (mean, std) == (2.0, 1.0)
    assert (low, high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-5)


def test_init_and_data_seeds_vary_separately(tiny_bert, sentiment_files, tmp_path):
    base = tuneforge.load_recipe(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "s", training={"seed": 7}))
    seeds = lambda vary: [(r.init_seed, r.data_seed) for r, _ in seed_recipes(base, 3, vary)]  # noqa: E731
    assert seeds("both") == [(7, 7), (8, 8), (9, 9)]
    assert seeds("init") == [(7, 7), (8, 7), (9, 7)]
    assert seeds("data") == [(7, 7), (7, 8), (7, 9)]
    _, recipe = seed_recipes(base, 3, "data")[2]
    assert (recipe.training.head_seed, recipe.training.data_seed, recipe.output.dir) == (7, 9, str(tmp_path / "s" / "seed-02"))


def test_a_seed_study_summarizes_every_run_and_reuses_finished_ones(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "s", training={"epochs": 1})
    study = seed_study(recipe, 3, vary="init")
    values = [r.test for r in study.runs]
    assert study.split == "test" and all(r.status == "complete" for r in study.runs)
    assert study.mean == pytest.approx(sum(values) / 3) and study.low <= study.mean <= study.high
    assert len(set(r.init_seed for r in study.runs)) == 3 and len(set(r.data_seed for r in study.runs)) == 1
    assert "95% interval of the mean" in (tmp_path / "s" / "seeds.md").read_text()
    modified = {p: p.stat().st_mtime for p in (tmp_path / "s").glob("seed-*/summary.json")}
    again = seed_study(recipe, 3, vary="init")  # nothing retrained
    assert [r.test for r in again.runs] == values
    assert all(p.stat().st_mtime == t for p, t in modified.items())


def test_early_discard_continues_the_best_seeds_exactly(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "s", training={"epochs": 2})
    study = seed_study(recipe, 3, keep=1, discard_after=0.5)
    kept = [r for r in study.runs if r.status == "complete"]
    dropped = [r for r in study.runs if r.status == "discarded"]
    assert len(kept) == 1 and len(dropped) == 2
    assert kept[0].early >= max(r.early for r in dropped)  # the best at the discard point went on
    # the kept run, stopped at half its steps and continued, ends as one trained without stopping
    uninterrupted = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "straight", training={"epochs": 2})
    uninterrupted["training"].update(seed=kept[0].init_seed, head_seed=kept[0].init_seed, data_seed=kept[0].data_seed)
    straight = tuneforge.fine_tune(uninterrupted)
    assert straight.metrics["test"]["accuracy"] == kept[0].test
    discarded_dir = Path(dropped[0].run_dir)
    assert not (discarded_dir / "summary.json").exists() and list((discarded_dir / "checkpoints").glob("step-*"))
    history = json.loads((Path(kept[0].run_dir) / "summary.json").read_text())["history"]
    assert history[0]["step"] == 6  # evaluated at the discard point: half of 12 steps
    again = seed_study(recipe, 3, keep=1, discard_after=0.5)  # started again: discarded runs stay discarded
    assert [r.status for r in again.runs] == [r.status for r in study.runs]


def test_seed_options_are_checked(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "s")
    with pytest.raises(RecipeError, match="needs both --keep K and --discard-after"):
        seed_study(recipe, 4, keep=2)
    with pytest.raises(RecipeError, match="--keep 4: keep between 1 and 3"):
        seed_study(recipe, 4, keep=4, discard_after=0.3)
    with pytest.raises(RecipeError, match="--vary 'weights'"):
        seed_study(recipe, 4, vary="weights")


def test_train_seeds_from_the_command_line(tiny_bert, sentiment_files, tmp_path):
    import yaml

    from tuneforge.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "s", training={"epochs": 1})))
    assert main(["train", str(recipe), "--seeds", "2", "--vary", "data"]) == 0
    table = (tmp_path / "s" / "seeds.md").read_text()
    assert table.count("| complete |") == 2 and "95% interval of the mean" in table
    assert main(["train", str(recipe), "--keep", "1"]) == 2  # early discard needs --seeds
