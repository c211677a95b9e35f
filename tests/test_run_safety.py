"""Nothing lost, nothing silent: the non-finite guard, run-folder locks, --overwrite that survives a kill at any
instant, --resume's recipe check, damaged checkpoint files."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe
from safetensors.torch import load_file

import tuneforge
from tuneforge import runlock
from tuneforge.engine.callbacks import KeepBest
from tuneforge.engine.checkpoint import list_checkpoints
from tuneforge.engine.loop import LoopState
from tuneforge.errors import RunDirError, RunLocked, TrainingDiverged
from tuneforge.rundir import RUN_MARKER, TRASH, remove_run

SRC = str(Path(tuneforge.__file__).resolve().parents[1])


class PoisonAt:
    """Sets one weight to NaN after optimizer step `step`: the next step's loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, loop):
        if loop.state.global_step == self.step:
            with torch.no_grad():
                next(loop.model.parameters()).view(-1)[0] = float("nan")


def _all_finite(file: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(file)).values())


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_good_checkpoint(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                         training={"epochs": 3, "checkpoint_every": 2, "eval_every": 2, "keep_checkpoints": 5})
    # Steps 1-3 are good (a checkpoint and the best weights at step 2); a weight is set to NaN after step 3, so step
    # 4's loss is NaN: the run stops there, and nothing non-finite reaches disk.
    with pytest.raises(TrainingDiverged, match=r"training stopped at step 4 of 18: the loss is nan") as e:
        tuneforge.fine_tune(recipe, callbacks=[PoisonAt(3)])
    assert "step-00000002, is from before it" in str(e.value) and "training.nonfinite=skip" in str(e.value)
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002"]
    for ck in list_checkpoints(run / "checkpoints"):
        assert _all_finite(ck / "model.safetensors")
    assert not (run / "model").exists() and not (run / "summary.json").exists()
    assert _all_finite(run / "checkpoints" / "best" / "model.safetensors")


def test_skip_counts_non_finite_steps_and_saves_a_finite_model(tiny_bert, sentiment_files, tmp_path):
    class PoisonEveryThird:
        """Poisons the gradient (not the weights) of every third step, the rest train normally."""

        def on_train_start(self, loop):
            p = next(loop.model.parameters())
            p.register_hook(lambda g: g * float("nan") if (loop.state.global_step + 1) % 3 == 0 else g)

    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"nonfinite": "skip", "epochs": 2})
    result = tuneforge.fine_tune(recipe, callbacks=[PoisonEveryThird()])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == {"count": 4, "first": [3, 6, 9, 12]}
    assert result.steps == 12
    assert _all_finite(tmp_path / "run" / "model" / "model.safetensors")
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in logged if r["split"] == "train")


def test_a_nan_metric_is_never_the_best(tmp_path):
    class FakeLoop:
        state = LoopState()
        model = torch.nn.Linear(2, 2)

    keep = KeepBest("loss", False, 0.0, tmp_path / "best.safetensors")
    loop = FakeLoop()
    for step, value in enumerate([0.7, float("nan"), float("-inf"), 0.9], start=1):
        loop.state.global_step = step
        keep.on_evaluate(loop, {"loss": value})
    assert loop.state.best_step == 1 and loop.state.best_metric == 0.7


def test_non_finite_weights_are_never_written_as_the_best(tmp_path):
    class FakeLoop:
        state = LoopState(global_step=7)
        model = torch.nn.Linear(2, 2)

    with torch.no_grad():
        FakeLoop.model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="step 7: the weights hold NaN or inf .first: weight."):
        KeepBest("accuracy", True, 0.0, tmp_path / "best.safetensors").on_evaluate(FakeLoop(), {"accuracy": 0.5})
    assert not (tmp_path / "best.safetensors").exists()


def test_the_cli_refuses_a_diverging_lr_with_exit_2(tiny_bert, sentiment_files, tmp_path, capsys):
    from badinput import run_cli

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                            training={"checkpoint_every": 1})))
    code, _, err = run_cli(["train", str(f), "training.lr=1e8"], capsys)
    assert code == 2 and "training stopped at step" in err and "Traceback" not in err
    for ck in list_checkpoints(tmp_path / "run" / "checkpoints"):
        assert _all_finite(ck / "model.safetensors")


# --- locks --------------------------------------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from tuneforge import runlock
    with runlock.scope():
        runlock.acquire(Path({folder!r}))
        print("held", flush=True)
        time.sleep(60)
""")


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(src=SRC, folder=str(folder))], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_told_who_holds_the_run_and_a_killed_holder_blocks_no_one(tiny_bert, sentiment_files,
                                                                                      tmp_path):
    run = tmp_path / "run"
    recipe = tiny_recipe(tiny_bert, sentiment_files, run, training={"epochs": 1})
    proc = _holder(run)
    try:
        with pytest.raises(RunLocked, match=rf"is in use: process {proc.pid} on .* is writing a run there"):
            tuneforge.fine_tune(recipe)
        assert not run.exists()  # refused before anything was made
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert runlock.lock_file(run).exists()  # the killed process's file is left behind ...
    tuneforge.fine_tune(recipe)              # ... and blocks no one
    assert (run / "summary.json").exists() and not runlock.lock_file(run).exists()


def test_two_trainings_started_together_never_share_a_folder(tiny_bert, sentiment_files, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 3})))
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-m", "tuneforge", "train", str(f)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    errs = " ".join(e for _, e in outs)
    # One trains; the other is refused, either while the first holds the lock or (if it came last) by the finished
    # run it found: never a crash, never a mixed metrics.jsonl.
    assert codes == [0, 2], errs
    assert "is in use: process" in errs or "holds a finished run" in errs
    assert "Traceback" not in errs
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_compare_locks_its_study_folder(tiny_bert, sentiment_files, tmp_path):
    study = tmp_path / "study"
    proc = _holder(study)
    try:
        with pytest.raises(RunLocked, match=rf"{study} is in use: process {proc.pid} "):
            tuneforge.compare(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run"), "head", study_dir=study)
    finally:
        proc.kill()
        proc.wait()


# --- --overwrite and a kill at any instant -------------------------------------------------------------------------

KILL_AFTER = textwrap.dedent("""
    import os, shutil, signal, sys
    sys.path.insert(0, {src!r})
    from pathlib import Path
    import tuneforge.rundir as rundir
    budget = [{k}]
    def die_after_budget(real):
        def step(*args, **kwargs):  # each rename and each file deleted is a step; the process dies after `k` of them
            if budget[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            budget[0] -= 1
            return real(*args, **kwargs)
        return step
    rundir.os.replace = die_after_budget(os.replace)
    os.unlink = die_after_budget(os.unlink)
    rundir.remove_run(Path({run!r}), ())
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_kill_at_any_instant_of_overwrite_leaves_a_folder_tuneforge_owns(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})
    tuneforge.fine_tune(recipe)
    run = tmp_path / "run"
    files = sum(len(f) for _, _, f in os.walk(run))
    # SIGKILL after k renames/deletions, for k from 0 (before anything) to past the last file deleted.
    for k in sorted({0, 2, files // 2, files + 8}):
        proc = subprocess.run([sys.executable, "-c", KILL_AFTER.format(src=SRC, k=k, run=str(run))])
        assert proc.returncode == -signal.SIGKILL
        assert (run / RUN_MARKER).exists(), k  # never removed: the folder is still tuneforge's
        if k == 0:
            assert (run / "summary.json").exists()
        left = list_checkpoints(run / "checkpoints")
        for ck in left:  # a checkpoint still in place is whole: --resume could take it
            assert (ck / "model.safetensors").exists() and (ck / "optimizer.pt").exists()
        # Whatever is left, the next --overwrite finishes the job and trains.
        tuneforge.fine_tune(recipe, overwrite=True)
        assert (run / "summary.json").exists() and not (run / TRASH).exists()


def test_overwrite_moves_checkpoints_out_first(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "checkpoints" / "step-00000002" / "loop_state.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    (run / RUN_MARKER).write_text("x")
    moved = []
    real = os.replace

    def spy(a, b):
        moved.append(Path(a).name)
        real(a, b)
    import tuneforge.rundir as rundir
    rundir.os.replace, saved = spy, rundir.os.replace
    try:
        remove_run(run, ())
    finally:
        rundir.os.replace = saved
    assert moved[0] == "checkpoints" and sorted(p.name for p in run.iterdir()) == [RUN_MARKER]


# --- --resume -------------------------------------------------------------------------------------------------------

def _unfinished_run(tiny_bert, sentiment_files, run: Path) -> dict:
    from helpers import InterruptAt

    recipe = tiny_recipe(tiny_bert, sentiment_files, run, training={"epochs": 2, "checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(3)])
    return recipe


def test_resume_names_the_keys_that_differ(tiny_bert, sentiment_files, tmp_path):
    recipe = _unfinished_run(tiny_bert, sentiment_files, tmp_path / "run")
    with pytest.raises(RunDirError, match=r"differs from the run's recipe.yaml in training.lr: 0.001 -> 0.002; "
                                          r"training.seed: 0 -> 3"):
        tuneforge.fine_tune(recipe, ["training.lr=2e-3", "training.seed=3"], resume=True)


def test_a_moved_run_folder_resumes(tiny_bert, sentiment_files, tmp_path):
    recipe = _unfinished_run(tiny_bert, sentiment_files, tmp_path / "run")
    os.rename(tmp_path / "run", tmp_path / "moved")
    result = tuneforge.fine_tune({**recipe, "output": {"dir": str(tmp_path / "moved")}}, resume=True)
    assert result.steps == 12 and (tmp_path / "moved" / "summary.json").exists()


def test_a_tampered_optimizer_file_is_a_one_line_error(tiny_bert, sentiment_files, tmp_path, capsys):
    from badinput import Case, assert_refused

    recipe = _unfinished_run(tiny_bert, sentiment_files, tmp_path / "run")
    latest = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    (latest / "optimizer.pt").write_bytes(b"not a torch file at all")
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(recipe))
    assert_refused(Case("tampered-optimizer", ["train", f, "--resume"],
                        [str(latest), "damaged", "Delete this checkpoint folder", "--overwrite"],
                        watch=[tmp_path / "run" / "checkpoints"]), capsys)


def test_merge_locks_its_output_folder_and_writes_its_marker_inside_it(tiny_bert, sentiment_files, tmp_path):
    from tuneforge.merging import MERGED_MARKER

    tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "lora"},
                                    training={"epochs": 1}))
    proc = _holder(tmp_path / "run" / "merged")
    try:
        with pytest.raises(RunLocked, match=rf"merged is in use: process {proc.pid} "):
            tuneforge.merge(tmp_path / "run")
    finally:
        proc.kill()
        proc.wait()
    tuneforge.merge(tmp_path / "run")
    assert (tmp_path / "run" / "merged" / MERGED_MARKER).exists()


def test_an_output_dir_that_cannot_be_made_is_refused_before_anything_loads(tiny_bert, sentiment_files, tmp_path,
                                                                            capsys):
    from badinput import Case, assert_refused

    blocker = tmp_path / "out" / "a-file"
    blocker.parent.mkdir()
    blocker.write_text("not a folder")
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, blocker / "run")))
    assert_refused(Case("output-dir-under-a-file", ["train", f], [str(blocker), "is a file", "choose another output.dir"],
                        watch=[tmp_path / "out"]), capsys)


def test_skip_under_fp16s_gradient_scaler_trains_on(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    """A skipped step closes the scaler's step too (else the next unscale_ raises)."""
    from tuneforge.tasks.base import Task

    calls = {"n": 0}
    real = Task.batch_loss

    def nan_on_the_third_forward(self, model, batch, evaluating=False):
        loss, extra = real(self, model, batch, evaluating)
        if not evaluating:
            calls["n"] += 1
            if calls["n"] == 3:
                loss = loss * float("nan")
        return loss, extra
    monkeypatch.setattr(Task, "batch_loss", nan_on_the_third_forward)
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                         training={"nonfinite": "skip", "epochs": 1, "precision": "fp16"})
    result = tuneforge.fine_tune(recipe)
    assert result.steps == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_steps"] == {"count": 1, "first": [3]}


def test_a_killed_replacement_of_a_model_folder_brings_the_old_one_back(tmp_path):
    from tuneforge.engine.checkpoint import atomic_folder

    final = tmp_path / "model"
    (tmp_path / "model.old").mkdir()  # killed between the two renames: only NAME.old (and NAME.tmp) are left
    (tmp_path / "model.old" / "w.safetensors").write_text("old")
    (tmp_path / "model.tmp").mkdir()
    with atomic_folder(final) as tmp:
        assert (final / "w.safetensors").read_text() == "old"  # restored before the new one is written
        (tmp / "w.safetensors").write_text("new")
    assert (final / "w.safetensors").read_text() == "new" and not (tmp_path / "model.old").exists()


def test_a_lock_goes_into_the_folder_where_its_parent_cannot_be_written(tmp_path, monkeypatch):
    folder = tmp_path / "volume"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(runlock.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    assert runlock.lock_file(folder) == folder / runlock.LOCK_SUFFIX
    with runlock.scope():
        runlock.acquire(folder)
        assert (folder / runlock.LOCK_SUFFIX).exists()
    assert not (folder / runlock.LOCK_SUFFIX).exists()


def test_a_waiting_lock_takes_its_turn(tmp_path):
    """A study's workers write its tables one at a time: the second waits for the first instead of failing."""
    folder = tmp_path / "study"
    proc = _holder(folder)
    assert runlock.holder(folder)["pid"] == proc.pid
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time, signal; time.sleep(1.0); "
                               f"os.kill({proc.pid}, signal.SIGKILL)"])
    with runlock.scope():
        runlock.acquire(folder, "a tune study's tables", wait=True)  # granted once the holder is gone
        assert proc.poll() == -signal.SIGKILL  # (it returned only after the holder died)
        assert json.loads(runlock.lock_file(folder).read_text())["pid"] == os.getpid()
    killer.wait()
