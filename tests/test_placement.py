"""Studies on a machine with several GPUs place one trial per GPU at a time, each in a process that sees only
its GPU. Shown here with two pretend GPUs: the placement (which process saw which CUDA_VISIBLE_DEVICES), and
results equal to the same study run one trial after another."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import tuneforge
import importlib

from tuneforge.studies.placement import TRIAL_GPU, gpu_env, run_placed, trial_gpus

from conftest import tiny_recipe

# (the package exports functions named like these modules: take the modules themselves)
compare_module, seeds_module, tune_module = (importlib.import_module(f"tuneforge.studies.{m}")
                                             for m in ("compare", "seeds", "tune"))
TWO = lambda: ["0", "1"]  # noqa: E731  (what trial_gpus answers on a machine with two GPUs)


def test_trial_gpus_is_empty_without_several_gpus_and_inside_a_placed_trial(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,6,7")
    assert trial_gpus() == ["2", "5", "6", "7"]
    monkeypatch.setenv(TRIAL_GPU, "5")  # a placed trial places nothing itself
    assert trial_gpus() == []
    monkeypatch.delenv(TRIAL_GPU)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert trial_gpus() == []
    env = gpu_env("5")
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env[TRIAL_GPU] == "5"


def test_run_placed_gives_each_job_a_gpu_of_its_own():
    import threading

    busy, seen, lock = set(), [], threading.Lock()

    def job(i, env):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            assert gpu not in busy  # never two jobs on one GPU at once
            busy.add(gpu)
        import time
        time.sleep(0.05)
        with lock:
            busy.discard(gpu)
            seen.append(gpu)
        return i * 10

    assert run_placed(list(range(6)), job, ["0", "1"]) == [0, 10, 20, 30, 40, 50]
    assert sorted(set(seen)) == ["0", "1"]


def test_compare_places_runs_on_gpus_with_the_results_of_one_after_another(tiny_bert, sentiment_files, tmp_path,
                                                                           monkeypatch):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})
    alone = tuneforge.compare(recipe, "full,head", study_dir=tmp_path / "alone")
    monkeypatch.setattr(compare_module, "trial_gpus", TWO)
    placed = tuneforge.compare(recipe, "full,head", study_dir=tmp_path / "placed")
    gpus = {json.loads(p.read_text())["gpu"] for p in (tmp_path / "placed" / "logs").glob("*-seed-*.json")
            if not p.name.endswith(".job.json")}
    assert gpus == {"0", "1"}  # two runs started together, one on each GPU
    for a, b in zip(alone.rows, placed.rows):
        assert a.label == b.label and a.values == b.values


def test_seed_study_places_seeds_and_continues_the_best_on_gpus(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "alone", training={"epochs": 2})
    alone = seeds_module.seed_study(recipe, 3, keep=1, discard_after=0.5)
    monkeypatch.setattr(seeds_module, "trial_gpus", TWO)
    placed = seeds_module.seed_study({**recipe, "output": {"dir": str(tmp_path / "placed")}}, 3, keep=1,
                                     discard_after=0.5)
    assert [r.status for r in placed.runs] == [r.status for r in alone.runs]
    assert [r.early for r in placed.runs] == [r.early for r in alone.runs]
    assert placed.mean == alone.mean
    logs = sorted((tmp_path / "placed" / "logs").glob("seed-*.log"))
    assert len(logs) == 3


def test_tune_runs_one_worker_per_gpu_on_the_shared_study(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setattr(tune_module, "trial_gpus", TWO)
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})
    result = tune_module.tune(recipe, {"training.lr": {"low": 1e-4, "high": 3e-3, "log": True}}, 4, sampler="random",
                              pruner="none", study_dir=tmp_path / "study")
    assert sum(t["state"] == "complete" for t in result.trials) >= 4
    import optuna
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{(tmp_path / 'study' / 'study.db').resolve()}")
    assert {t.user_attrs["gpu"] for t in study.trials} <= {"0", "1"}
    assert all(Path(tmp_path / "study" / "logs" / f"worker-{i}.log").exists() for i in (0, 1))
    assert len({t.params["training.lr"] for t in study.trials}) == len(study.trials)  # workers seeded apart
