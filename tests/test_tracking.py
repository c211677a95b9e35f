"""Experiment trackers (training.report_to): what MLflow and W&B hold after a run, read back with their own APIs
and files, against the run's metrics.jsonl; resume into the same run; failures; the missing-package error."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe
from helpers import InterruptAt
from rich.console import Console

import tuneforge
from tuneforge.engine.runtime import Runtime
from tuneforge.tracking import callbacks_for, finish_run
from tuneforge.tracking.base import Tracker, TrackedRun, Tracking, flatten


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def expected_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as tracker metric histories: key -> [(step, value)]."""
    out: dict[str, list] = {}
    for r in jsonl(run_dir):
        if r["split"] == "train":
            for key in ("loss", "lr", "epoch"):
                out.setdefault(f"train/{key}", []).append((r["step"], r[key]))
        else:
            for key, value in r.items():
                if key not in ("step", "epoch", "split"):
                    out.setdefault(f"validation/{key}", []).append((r["step"], value))
    return out


def recipe_leaves(run_dir: Path) -> dict[str, object]:
    """Every leaf of the run's recipe.yaml as `section.key` (nested: `a.b.c`), read independently of the code."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(yaml.safe_load((run_dir / "recipe.yaml").read_text()), "")
    return out


# ---------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> str:
    """One SQLite tracking store for the module: creating its tables takes MLflow about 10 s."""
    mlflow = pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    here = os.getcwd()
    os.chdir(folder)  # MLflow's default artefact root is ./mlruns of the working directory
    try:
        mlflow.MlflowClient(uri).search_experiments()
    finally:
        os.chdir(here)
    return uri


@pytest.fixture
def mlflow_env(mlflow_db, monkeypatch, tmp_path, request):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)  # a fresh experiment per test
    return MlflowClient(mlflow_db)


def mlflow_runs(client, name: str):
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_holds_the_recipe_every_metric_and_the_model(tiny_bert, sentiment_files, tmp_path, mlflow_env,
                                                            request):
    client = mlflow_env
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"report_to": ["mlflow"], "eval_every": 4}))
    [run] = mlflow_runs(client, request.node.name)
    assert run.info.status == "FINISHED" and run.info.run_name == str(tmp_path / "run")
    assert json.loads((r.run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    # Parameters: every leaf of the resolved recipe, by its dotted key.
    params = run.data.params
    leaves = recipe_leaves(r.run_dir)
    assert set(params) == set(leaves) and len(params) > 50
    assert params["training.lr"] == "0.001" and params["model.max_length"] == "32"
    assert params["training.report_to"] == '["mlflow"]' and params["output.dir"] == str(tmp_path / "run")
    # Metrics: each history is metrics.jsonl's, value for value and step for step.
    expected = expected_history(r.run_dir)
    assert [s for s, _ in expected["train/loss"]] == [2, 4, 6, 8, 10, 12]
    assert [s for s, _ in expected["validation/accuracy"]] == [4, 8, 12]
    for key, points in expected.items():
        assert mlflow_history(client, run.info.run_id, key) == points, key
    norms = mlflow_history(client, run.info.run_id, "train/grad_norm")
    assert [s for s, _ in norms] == [2, 4, 6, 8, 10, 12] and all(0 < v < 1e3 for _, v in norms)
    assert run.data.metrics["final/test/accuracy"] == pytest.approx(r.metrics["test"]["accuracy"])
    # The final model, file for file, byte for byte.
    listed = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert listed == {p.name for p in r.model_dir.iterdir()} and "model.safetensors" in listed
    copy = Path(client.download_artifacts(run.info.run_id, "model/model.safetensors", str(tmp_path / "dl")))
    assert copy.read_bytes() == (r.model_dir / "model.safetensors").read_bytes()
    assert not (r.run_dir / "tensorboard").exists()  # report_to without tensorboard: no TensorBoard files


def test_mlflow_resume_continues_the_same_run_with_one_point_per_step(tiny_bert, sentiment_files, tmp_path,
                                                                      mlflow_env, request):
    client = mlflow_env
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                         method={"name": "lora"},
                         training={"report_to": ["mlflow"], "eval_every": 2, "checkpoint_every": 4})
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(11)])
    [stopped] = mlflow_runs(client, request.node.name)
    assert stopped.info.status == "KILLED"
    assert not client.list_artifacts(stopped.info.run_id)  # an interrupted run sends no model
    # Logged up to step 10, past the last checkpoint (step 8): the resumed run computes steps 9 and 10 again.
    assert max(s for s, _ in mlflow_history(client, stopped.info.run_id, "train/loss")) == 10
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))[-1] == "step-00000008"
    r = tuneforge.fine_tune(recipe, resume=True)
    [run] = mlflow_runs(client, request.node.name)  # the same run, not a second one
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    for key, points in expected_history(r.run_dir).items():
        if key != "validation/eval_seconds":  # timed anew by the resumed attempt for steps 6 and after
            assert mlflow_history(client, run.info.run_id, key) == points, key
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")} == \
        {p.name for p in r.model_dir.iterdir()}


def test_self_training_logs_into_the_run_under_its_stage(tiny_bert, sentiment_files, tmp_path, mlflow_env, request):
    from test_weak import weak_recipe

    client = mlflow_env
    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path,
                         self_training={"steps": 6, "update_every": 3, "threshold": 0.0, "lr": 1e-3})
    recipe["training"]["report_to"] = ["mlflow"]
    r = tuneforge.fine_tune(recipe)
    [run] = mlflow_runs(client, request.node.name)  # one run for both stages
    assert run.info.status == "FINISHED"
    stage = expected_history(r.run_dir / "self-training")
    assert [s for s, _ in stage["train/loss"]] == [2, 4, 6]
    for key, points in stage.items():
        assert mlflow_history(client, run.info.run_id, f"self-training/{key}") == points, key
    assert mlflow_history(client, run.info.run_id, "train/loss") == expected_history(r.run_dir)["train/loss"]


class Fails:
    """A callback that raises at a given step: the run fails inside its loop."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, loop):
        if loop.state.global_step == self.step:
            raise RuntimeError("a planted failure")


def test_a_failed_run_is_marked_failed_and_sends_no_model(tiny_bert, sentiment_files, tmp_path, mlflow_env,
                                                          request, monkeypatch):
    client = mlflow_env
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"report_to": ["mlflow"]})
    with pytest.raises(RuntimeError, match="planted"):
        tuneforge.fine_tune(recipe, callbacks=[Fails(3)])
    [run] = mlflow_runs(client, request.node.name)
    assert run.info.status == "FAILED" and not client.list_artifacts(run.info.run_id)
    # A failure after the loop, before the model is written: the run stays open until the folder trains again
    # (or the process ends), then it is closed as failed, without a model.
    import tuneforge.run as run_module

    def refuse(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(run_module, "save_model", refuse)
    with pytest.raises(OSError, match="disk full"):
        tuneforge.fine_tune(recipe, overwrite=True)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    tuneforge.fine_tune(recipe, overwrite=True)
    runs = sorted(mlflow_runs(client, request.node.name), key=lambda x: x.info.start_time)
    assert [x.info.status for x in runs] == ["FAILED", "FAILED", "FINISHED"]
    assert not client.list_artifacts(runs[1].info.run_id) and client.list_artifacts(runs[2].info.run_id)


def test_a_tracker_that_fails_mid_run_is_warned_about_and_the_run_goes_on(tiny_bert, sentiment_files, tmp_path,
                                                                          mlflow_env, request, monkeypatch):
    from mlflow import MlflowClient

    client, calls, real = mlflow_env, [], MlflowClient.log_batch

    def flaky(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        if metrics:
            calls.append(1)
            if len(calls) == 3:
                raise ConnectionError("tracking server unreachable")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)
    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    out = io.StringIO()
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"report_to": ["mlflow"], "eval_every": 4}),
                            console=Console(file=out, width=300))
    text = out.getvalue()
    assert text.count("training.report_to: mlflow failed") == 1 and "tracking server unreachable" in text
    assert (r.model_dir / "model.safetensors").exists() and (r.run_dir / "summary.json").exists()
    assert len(calls) == 3  # left out after its failure: nothing more was sent
    [run] = mlflow_runs(client, request.node.name)
    assert run.info.status == "FAILED" and not client.list_artifacts(run.info.run_id)
    # The two logging steps sent before the failure:
    assert mlflow_history(client, run.info.run_id, "train/loss") == expected_history(r.run_dir)["train/loss"][:2]


# ---------------------------------------------------------------- W&B (offline)


def wandb_records(path: Path):
    """The records of a W&B run file (run-<id>.wandb): a 7-byte header, then LevelDB-log style 32 KiB blocks of
    [crc32, length, type] chunks (type 1: whole record, 2/3/4: first, middle, last part), each a protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00"
    block, pos, part = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def item_key(item) -> str:
    """A record item's key: plain, or (keys holding '/') given as nested_key."""
    return item.key or "/".join(item.nested_key)


def wandb_run_file(folder: Path) -> Path:
    [path] = folder.glob("wandb/offline-run-*/run-*.wandb")
    return path


def test_wandb_offline_holds_the_recipe_every_metric_and_the_model(tiny_bert, sentiment_files, tmp_path,
                                                                   monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "tuneforge-tests")
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"report_to": ["wandb"], "eval_every": 4}))
    records = list(wandb_records(wandb_run_file(tmp_path)))
    kinds = [x.WhichOneof("record_type") for x in records]
    [run] = [x.run for x in records if x.WhichOneof("record_type") == "run"]
    stored = json.loads((r.run_dir / "trackers.json").read_text())["wandb"]
    assert run.display_name == str(tmp_path / "run") and run.project == "tuneforge-tests" and run.run_id == stored["id"]
    config = {item_key(u): json.loads(u.value_json) for u in run.config.update if item_key(u) != "_wandb"}
    # Numbers, text and flags as they are; lists and nulls as JSON text (as every tracker takes them).
    assert config == {k: v if isinstance(v, (str, bool, int, float)) else json.dumps(v)
                      for k, v in recipe_leaves(r.run_dir).items()}
    assert config["training.lr"] == 0.001 and config["training.report_to"] == '["wandb"]'
    # History rows: W&B's step is the optimizer step; the values are metrics.jsonl's.
    rows: dict[int, dict] = {}
    for x in records:
        if x.WhichOneof("record_type") == "history":
            row = {item_key(i): json.loads(i.value_json) for i in x.history.item}
            rows.setdefault(row["_step"], {}).update(row)
    for key, points in expected_history(r.run_dir).items():
        assert [(s, rows[s][key]) for s, _ in points] == points, key
    assert sorted(s for s, row in rows.items() if "train/grad_norm" in row) == [2, 4, 6, 8, 10, 12]
    summary = {}
    for x in records:
        if x.WhichOneof("record_type") == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in x.summary.update})
    assert summary["final/test/accuracy"] == pytest.approx(r.metrics["test"]["accuracy"])
    [artifact] = [x.artifact for x in records if x.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and artifact.name.endswith("-model")
    assert {e.path for e in artifact.manifest.contents} == {p.name for p in r.model_dir.iterdir()}
    [done] = [x.exit for x in records if x.WhichOneof("record_type") == "exit"]
    assert done.exit_code == 0 and kinds.index("artifact") < kinds.index("exit")


# ---------------------------------------------------------------- trackio (when installed)


def test_trackio_when_installed(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is first imported
    pytest.importorskip("trackio", reason="trackio is not in the dev extra (it brings gradio); pip install trackio")
    from trackio.api import Api
    from trackio.sqlite_storage import SQLiteStorage

    monkeypatch.chdir(tmp_path)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"report_to": ["trackio"], "eval_every": 4}))
    assert json.loads((r.run_dir / "trackers.json").read_text())["trackio"] == {"project": "tuneforge",
                                                                               "name": str(r.run_dir)}
    [run] = [x for x in Api().runs("tuneforge") if x.name == str(r.run_dir)]
    assert run.config["training.lr"] == 0.001
    logs = SQLiteStorage.get_logs("tuneforge", str(r.run_dir))
    for key, points in expected_history(r.run_dir).items():
        assert [(x["step"], x[key]) for x in logs if key in x] == points, key
    # The model folder as an artefact: its files, content-addressed by their SHA-256.
    blobs = {p.name for p in (tmp_path / "trackio" / "artifacts").rglob("*") if p.is_file()}
    assert blobs == {hashlib.sha256(p.read_bytes()).hexdigest() for p in r.model_dir.iterdir()}


# ---------------------------------------------------------------- refusals, ranks, stages


def test_a_tracker_not_installed_is_refused_before_training(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importlib finds no spec
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(tuneforge.RecipeError) as e:
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"report_to": ["tensorboard", "mlflow", "wandb"]}))
    message = str(e.value)
    assert "2 problem(s)" in message
    assert "training.report_to: 'mlflow' needs the mlflow package, which is not installed: pip install mlflow-skinny" \
        in message
    assert "training.report_to: 'wandb' needs the wandb package, which is not installed: pip install wandb" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_only_rank_zero_reports(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "never-made.db"))
    other = Runtime(torch.device("cpu"), rank=1)
    assert callbacks_for(["tensorboard", "mlflow"], tmp_path / "run", other) == []
    main = callbacks_for(["mlflow"], tmp_path / "run", Runtime(torch.device("cpu")))
    assert [type(c) for c in main] == [Tracking]
    finish_run(tmp_path / "elsewhere", None, {})  # a folder no tracker reports: nothing happens
    assert not (tmp_path / "never-made.db").exists() and not (tmp_path / "run").exists()


class Recorder(Tracker):
    """A tracker that records what it is sent."""
    name = "recorder"

    def __init__(self):
        self.calls = []

    def start(self, name, params, resume):
        self.calls.append(("start", name, resume))
        return {"id": "r1"}

    def log(self, metrics, step, axis=None):
        self.calls.append(("log", metrics, step, axis))

    def log_artifact(self, folder, kind):
        self.calls.append(("artifact", folder.name, kind))

    def finish(self, status):
        self.calls.append(("finish", status))


def test_a_stage_loop_logs_into_its_run_under_its_name(tmp_path):
    pytest.importorskip("mlflow")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("training:\n  lr: 0.1\n  report_to: [mlflow]\n")
    recorder = Recorder()
    tracked = TrackedRun([recorder], run_dir)
    tracked.open(resuming=False)
    try:
        [stage] = callbacks_for(["mlflow"], run_dir / "self-training", Runtime(torch.device("cpu")))
        assert stage.run is tracked and stage.stage == "self-training"
        stage.on_evaluate(type("L", (), {"state": type("S", (), {"global_step": 3})()})(), {"accuracy": 0.75})
        tracked.log({"train/loss": 0.5}, 12)
        (run_dir / "model").mkdir()
        finish_run(run_dir, run_dir / "model", {"test": {"accuracy": 0.5, "labels": ["a", "b"]}})
    finally:
        tracked.close("FAILED")
    assert recorder.calls == [
        ("start", str(run_dir), None),
        ("log", {"self-training/validation/accuracy": 0.75}, 3, "self-training"),
        ("log", {"train/loss": 0.5}, 12, None),
        ("log", {"final/test/accuracy": 0.5}, 12, None),
        ("artifact", "model", "model"),
        ("finish", "FINISHED")]
    assert json.loads((run_dir / "trackers.json").read_text()) == {"recorder": {"id": "r1"}}


def test_parameters_are_flattened_by_section_and_key():
    assert flatten({"training": {"lr": 0.1, "report_to": ["mlflow"], "early_stopping": None,
                                 "schedule": {"name": "cosine"}}, "output": {"dir": "runs/x"}}) == {
        "training.lr": 0.1, "training.report_to": '["mlflow"]', "training.early_stopping": "null",
        "training.schedule.name": "cosine", "output.dir": "runs/x"}
