"""Hyperparameter search on Optuna with a tiny BERT: each sampler, conditional and failing trials, pruning,
continuing an interrupted study, two workers on one SQLite study, and the best recipe reproducing its trial."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tuneforge
from tuneforge.errors import RecipeError

from conftest import tiny_recipe

optuna = pytest.importorskip("optuna")

from tuneforge.studies.space import read_space  # noqa: E402
from tuneforge.studies.tune import ReportToTrial, _open_study, tune  # noqa: E402

LR_RANGE = {"training.lr": {"low": 1e-4, "high": 3e-3, "log": True}}


def recipe_for(tiny_bert, files, tmp_path, **training):
    return tiny_recipe(tiny_bert, files, tmp_path / "run", training={"epochs": 1, **training})


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe", "gp"])
def test_each_sampler_runs_a_study_and_writes_the_best_recipe(sampler, tiny_bert, sentiment_files, tmp_path):
    space = {"training.lr": {"choices": [1e-3, 3e-3, 1e-4]}} if sampler == "grid" else LR_RANGE
    result = tune(recipe_for(tiny_bert, sentiment_files, tmp_path), space, 3, sampler=sampler, pruner="none",
                  study_dir=tmp_path / "study")
    assert [t["state"] for t in result.trials] == ["complete"] * 3
    values = [t["value"] for t in result.trials]
    assert result.best_value == max(values) and result.direction == "maximize" and result.metric == "accuracy"
    lrs = [t["training.lr"] for t in result.trials]
    if sampler == "grid":
        assert sorted(lrs) == [1e-4, 1e-3, 3e-3]  # every grid point once
    else:
        assert all(1e-4 <= lr <= 3e-3 for lr in lrs) and len(set(lrs)) == 3
    best = yaml.safe_load(result.best_recipe.read_text())
    assert best["training"]["lr"] == result.best_params["training.lr"]
    assert (tmp_path / "study" / "trials.csv").exists() and (tmp_path / "study" / "history.png").exists()


def test_the_best_recipe_reproduces_its_trials_metric(tiny_bert, sentiment_files, tmp_path):
    result = tune(recipe_for(tiny_bert, sentiment_files, tmp_path), LR_RANGE, 2, sampler="random", pruner="none",
                  study_dir=tmp_path / "study")
    again = tuneforge.fine_tune(result.best_recipe)
    assert again.metrics["validation"]["accuracy"] == result.best_value


def test_conditional_and_failing_trials_do_not_stop_the_study(tiny_bert, sentiment_files, tmp_path):
    space = {"method.name": {"choices": ["full", "lora", "freeze"]},
             "method.r": {"choices": [2, 4], "when": {"method.name": "lora"}}}
    # method 'freeze' without freeze_layers is refused by the recipe: those trials fail, the study goes on
    result = tune(recipe_for(tiny_bert, sentiment_files, tmp_path), space, 6, sampler="random", pruner="none",
                  study_dir=tmp_path / "study", seed=3)
    states = {t["trial"]: t["state"] for t in result.trials}
    methods = {t["trial"]: t["method.name"] for t in result.trials}
    assert len(states) == 6 and "fail" in states.values() and "complete" in states.values()
    assert all((states[i] == "fail") == (methods[i] == "freeze") for i in states)
    assert all(("method.r" in {k for k, v in t.items() if v is not None}) == (t["method.name"] == "lora")
               for t in result.trials)


def test_a_pruned_trial_stops_its_run_early(tiny_bert, sentiment_files, tmp_path):
    class AlwaysPrune:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return True

    trial = AlwaysPrune()
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 3, "eval_every": 2})
    with pytest.raises(optuna.TrialPruned, match="pruned at step 2"):
        tuneforge.fine_tune(recipe, callbacks=[ReportToTrial(trial, "accuracy")])
    assert [s for s, _ in trial.reports] == [2]  # one evaluation of 18 steps' worth, then stopped


def test_an_interrupted_study_continues_where_it_stopped(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    recipe, study = recipe_for(tiny_bert, sentiment_files, tmp_path), tmp_path / "study"
    original, calls = ReportToTrial.on_evaluate, []

    def interrupt_second(self, loop, metrics):
        calls.append(self.trial.number)
        if self.trial.number == 1:
            raise KeyboardInterrupt
        return original(self, loop, metrics)

    monkeypatch.setattr(ReportToTrial, "on_evaluate", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        tune(recipe, LR_RANGE, 4, sampler="random", pruner="none", study_dir=study)
    monkeypatch.setattr(ReportToTrial, "on_evaluate", original)
    result = tune(recipe, LR_RANGE, 4, sampler="random", pruner="none", study_dir=study)
    states = [t["state"] for t in result.trials]
    assert states[0] == "complete" and states[1] == "fail" and states.count("complete") == 3 and len(states) == 4


def test_two_workers_share_one_sqlite_study(tiny_bert, sentiment_files, tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe_for(tiny_bert, sentiment_files, tmp_path)))
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(LR_RANGE))
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, "-m", "tuneforge.cli", "tune", str(recipe_path), "--space", str(space_path), "--trials",
               "4", "--sampler", "random", "--pruner", "none", "--storage", storage, "--study", "shared"]
    workers = [subprocess.Popen(command + ["--out", str(tmp_path / f"worker-{i}"), "--seed", str(i)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers))) and 4 <= len(numbers) <= 5  # none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    dirs = [Path(t.user_attrs["recipe"]["output"]["dir"]) for t in study.trials]
    assert len(set(d.name for d in dirs)) == len(dirs) and all((d / "summary.json").exists() for d in dirs)


def _open_together(url, barrier, results):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    barrier.wait()  # all at once on the new database: the race to create its schema
    try:
        _open_study("together", url, "maximize", None, None)
        results.put("ok")
    except Exception as error:  # noqa: BLE001 - the test reports which
        results.put(f"{type(error).__name__}: {error}")


def test_workers_opening_a_new_sqlite_study_at_once_all_succeed(tmp_path):
    # Without retries, about one start in four here loses the schema-version insert with an IntegrityError.
    context = multiprocessing.get_context("fork")
    for round_number in range(5):
        url = f"sqlite:///{tmp_path / f'new-{round_number}.db'}"
        barrier, results = context.Barrier(4), context.Queue()
        workers = [context.Process(target=_open_together, args=(url, barrier, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join()
        assert outcomes == ["ok"] * 4
    assert len(optuna.get_all_study_summaries(url)) == 1


def test_space_errors_name_the_key(tiny_bert, sentiment_files, tmp_path):
    recipe = tuneforge.load_recipe(recipe_for(tiny_bert, sentiment_files, tmp_path))
    with pytest.raises(RecipeError, match="training.lrr: not a recipe key; did you mean 'training.lr'"):
        read_space({"training.lrr": {"low": 1e-5, "high": 1e-3}}, recipe)
    with pytest.raises(RecipeError, match="a log-scale range needs low > 0"):
        read_space({"training.lr": {"low": 0, "high": 1e-3, "log": True}}, recipe)
    with pytest.raises(RecipeError, match="`when` names 'method.name', which is not a searched key"):
        read_space({"method.r": {"choices": [4], "when": {"method.name": "lora"}}}, recipe)
    with pytest.raises(RecipeError, match="grid search needs a finite set"):
        tune(recipe, LR_RANGE, 1, sampler="grid", study_dir=tmp_path / "g")
    no_validation = recipe_for(tiny_bert, {"train": sentiment_files["train"]}, tmp_path)
    no_validation["data"]["validation_fraction"] = 0.0
    with pytest.raises(RecipeError, match="a search needs validation data"):
        tune(no_validation, LR_RANGE, 1, study_dir=tmp_path / "v")


@pytest.fixture
def postgres():
    pytest.importorskip("psycopg2", reason="psycopg2 (the PostgreSQL driver) is not installed")
    from postgres import Postgres

    server = Postgres()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        server.stop()
        pytest.skip(f"PostgreSQL could not start here: {e}")
    yield server
    server.stop()


def test_two_machines_share_one_study_through_postgresql(postgres, tiny_bert, sentiment_files, tmp_path):
    # Two workers with nothing in common but the database URL, as on two machines: each its own folder and seed.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(tiny_bert, sentiment_files, tmp_path)))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(LR_RANGE))
    workers = [subprocess.Popen([sys.executable, "-m", "tuneforge", "tune", str(recipe), "--space", str(space),
                                 "--trials", "6", "--sampler", "random", "--pruner", "none", "--storage", postgres.url,
                                 "--study", "shared", "--out", str(tmp_path / f"machine-{i}"), "--seed", str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=postgres.url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 6 <= len(finished) <= 8  # each worker may finish the trial it had started
    # both machines wrote trials, each under its own folder, into the one study
    folders = {Path(t.user_attrs["recipe"]["output"]["dir"]).parent.parent.name for t in finished}
    assert folders == {"machine-0", "machine-1"}
