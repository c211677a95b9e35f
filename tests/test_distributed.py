"""Several processes on the CPU (gloo), started by torchrun as a user starts them: N processes train what one
process trains with the same global batch, resume exactly after a kill, run as two machines, write each file
once, and end together when one rank fails."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import sentiment_rows, tiny_recipe, write_rows
from test_causal_lm import lm_recipe, pc_files, tiny_llama  # noqa: F401  (fixtures)
from test_grpo import grpo_recipe, grpo_setup  # noqa: F401  (fixture)
from test_preference import pref_files, pref_recipe, reward_files  # noqa: F401  (fixtures)
from test_vision import image_models, image_recipe, stripe_data  # noqa: F401  (fixtures)

HERE = Path(__file__).parent
# Measured between 1 and 2 processes with the same micro-batches (fp32): at most 1e-6 on these models; the
# tolerance leaves a margin for summation order, not for a different gradient (one step of lr 1e-3 moves 1e-3).
ATOL = 2e-5
TIMEOUT = 240  # seconds: a hang fails the test instead of the suite


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def torchrun(args: list[str], extra_env: dict | None = None, **launcher) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run [launcher options] ARGS` (what the `torchrun` script runs)."""
    options = [f"--{k}={v}" for k, v in launcher.items()] or ["--standalone", "--nproc_per_node=2"]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *options, *args], env={**_env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=TIMEOUT)


def train_cli(recipe: dict, folder: Path, *flags: str, **launcher) -> subprocess.CompletedProcess:
    path = folder / f"{Path(recipe['output']['dir']).name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return torchrun(["-m", "tuneforge", "train", str(path), *flags], **launcher)


def train_one(recipe: dict, *flags: str) -> subprocess.CompletedProcess:
    path = Path(recipe["output"]["dir"] + ".yaml")
    path.write_text(yaml.safe_dump(recipe))
    return subprocess.run([sys.executable, "-m", "tuneforge", "train", str(path), *flags], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def saved(run_dir: Path) -> dict[str, torch.Tensor]:
    folder = run_dir / ("adapter" if (run_dir / "adapter").exists() else "model")
    files = sorted(folder.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def assert_close_weights(a: Path, b: Path, atol: float = ATOL) -> None:
    wa, wb = saved(a), saved(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= atol, f"largest weight difference {worst:.3g} > {atol}"


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_same_metrics(a: Path, b: Path, tol: float = 1e-5) -> None:
    ma, mb = summary(a)["metrics"], summary(b)["metrics"]
    assert ma.keys() == mb.keys()
    for split in ma:
        for k, v in ma[split].items():
            if k != "eval_seconds":
                # Correlations of a barely trained regressor's near-constant predictions amplify float rounding.
                slack = 1e-4 if k in ("pearson", "spearman") else tol
                assert mb[split][k] == pytest.approx(v, rel=1e-4, abs=slack), (split, k)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def kill_and_resume(full: dict, cut: dict, folder: Path, kill_at: int = 5) -> None:
    """Train `full` unbroken, and train `cut` until rank 0 is SIGKILLed after step `kill_at` (the caller resumes it)."""
    ok(train_cli(full, folder))
    (folder / "cut.json").write_text(json.dumps(cut))
    assert torchrun([str(HERE / "dist_worker.py"), str(folder / "cut.json")],
                    {"DIST_KILL_AT": str(kill_at)}).returncode != 0


@pytest.fixture
def odd_files(tmp_path) -> dict[str, Path]:
    # 36 training rows in global steps of 16: the last step of each epoch holds one micro-batch, so one rank has
    # no rows in it and must still join the gradient all-reduce.
    return {"train": write_rows(tmp_path / "data" / "train.csv", sentiment_rows(36, seed=1)),
            "validation": write_rows(tmp_path / "data" / "validation.csv", sentiment_rows(18, seed=2)),
            "test": write_rows(tmp_path / "data" / "test.csv", sentiment_rows(14, seed=3))}


CLASSIFIER_METHODS = {"full": {"name": "full"}, "lora": {"name": "lora", "dropout": 0.0},
                      "gradual": {"name": "gradual", "unfreeze_every": 2}}


@pytest.mark.parametrize("method", list(CLASSIFIER_METHODS))
def test_two_processes_train_what_one_does(method, tiny_bert_no_dropout, odd_files, tmp_path):
    training = {"batch_size": 4, "epochs": 2, "checkpoint_every": 2, "eval_every": 2, "log_every": 2}
    one = tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "one", method=CLASSIFIER_METHODS[method],
                      training={**training, "grad_accum": 4})
    two = tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "two", method=CLASSIFIER_METHODS[method],
                      training={**training, "grad_accum": 2})
    ok(train_one(one))
    ok(train_cli(two, tmp_path))
    assert_close_weights(tmp_path / "one", tmp_path / "two")
    assert_same_metrics(tmp_path / "one", tmp_path / "two")
    s1, s2 = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert s1["steps"] == s2["steps"] == 6 and s2["runtime"]["world_size"] == 2
    assert [h["step"] for h in s1["history"]] == [h["step"] for h in s2["history"]]
    # rank 0 alone wrote the log: each record once, the training loss equal to one process's
    r1, r2 = records(tmp_path / "one"), records(tmp_path / "two")
    assert [(r["step"], r["split"]) for r in r1] == [(r["step"], r["split"]) for r in r2]
    for a, b in zip(r1, r2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    start = load_file(str(tiny_bert_no_dropout / "model.safetensors"))
    if method == "full":  # the comparison is between trained models, not two untouched ones
        moved = saved(tmp_path / "two")["bert.encoder.layer.0.output.dense.weight"] - start["encoder.layer.0.output.dense.weight"]
        assert moved.abs().max() > 1e-3


def test_causal_lm_in_two_processes_normalizes_by_global_target_tokens(tiny_llama, pc_files, tmp_path):  # noqa: F811
    # Rows hold 1 to 4 target tokens, so a per-rank normalization would weigh them differently.
    training = {"batch_size": 2, "epochs": 2, "lr": 1e-2}
    ok(train_one(lm_recipe(tiny_llama, pc_files, tmp_path / "one", training={**training, "grad_accum": 2})))
    ok(train_cli(lm_recipe(tiny_llama, pc_files, tmp_path / "two", training={**training, "grad_accum": 1}), tmp_path))
    assert_close_weights(tmp_path / "one", tmp_path / "two")
    assert_same_metrics(tmp_path / "one", tmp_path / "two")


def test_preference_run_in_two_processes(tiny_llama, pref_files, tmp_path):  # noqa: F811
    training = {"batch_size": 2, "epochs": 2, "lr": 1e-2}
    method = {"name": "lora", "dropout": 0.0}
    ok(train_one(pref_recipe(tiny_llama, pref_files, tmp_path / "one", method=method,
                             training={**training, "grad_accum": 2})))
    ok(train_cli(pref_recipe(tiny_llama, pref_files, tmp_path / "two", method=method,
                             training={**training, "grad_accum": 1}), tmp_path))
    assert_close_weights(tmp_path / "one", tmp_path / "two")
    assert_same_metrics(tmp_path / "one", tmp_path / "two")


def test_killed_two_process_run_resumes_exactly(tiny_bert, odd_files, tmp_path):
    # With dropout: each rank draws its own masks, and resume must restore every rank's generator.
    training = {"batch_size": 4, "grad_accum": 2, "epochs": 3, "checkpoint_every": 2, "log_every": 3}
    full = tiny_recipe(tiny_bert, odd_files, tmp_path / "full", training=training)
    cut = tiny_recipe(tiny_bert, odd_files, tmp_path / "cut", training=training)
    kill_and_resume(full, cut, tmp_path)
    assert [p.name for p in sorted((tmp_path / "cut" / "checkpoints").glob("step-*"))] == ["step-00000004"]
    refused = train_one(cut, "--resume")  # one process cannot continue a run of two
    assert refused.returncode == 2 and "2 process(es)" in refused.stderr and "--nproc_per_node 2" in refused.stderr
    ok(train_cli(cut, tmp_path, "--resume"))
    assert_close_weights(tmp_path / "full", tmp_path / "cut", atol=0.0)
    assert summary(tmp_path / "cut")["metrics"] == summary(tmp_path / "full")["metrics"]
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("samples_per_s", "eval_seconds")} for r in recs]
    assert strip(records(tmp_path / "cut")) == strip(records(tmp_path / "full"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_train_what_one_process_does(tiny_bert_no_dropout, odd_files, tmp_path):
    training = {"batch_size": 4, "epochs": 2}
    ok(train_one(tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "one", training={**training, "grad_accum": 4})))
    recipe = tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "nodes", training={**training, "grad_accum": 2})
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(recipe))
    port = free_port()
    # Two torchrun agents, one per "machine", meeting at node 0's rendezvous endpoint, as on two hosts.
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=tuneforge-test", "-m", "tuneforge", "train", str(path)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs
    assert_close_weights(tmp_path / "one", tmp_path / "nodes")
    assert_same_metrics(tmp_path / "one", tmp_path / "nodes")
    assert summary(tmp_path / "nodes")["runtime"]["world_size"] == 2


def test_a_failing_rank_ends_the_run_with_its_error(tiny_bert, odd_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, odd_files, tmp_path / "fails", training={"batch_size": 4, "epochs": 3})
    (tmp_path / "fails.json").write_text(json.dumps(recipe))
    proc = torchrun([str(HERE / "dist_worker.py"), str(tmp_path / "fails.json")],
                    {"DIST_FAIL_AT": "2", "DIST_FAIL_RANK": "1"})
    assert proc.returncode != 0
    assert "planted failure on rank 1 after step 2" in proc.stderr
    assert not (tmp_path / "fails" / "summary.json").exists()


def test_nproc_shortcut_starts_torchrun(tiny_bert_no_dropout, odd_files, tmp_path):
    recipe = tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "short", training={"batch_size": 4, "epochs": 1})
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(path), "--nproc", "2", "--json"], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    ok(proc)
    assert summary(tmp_path / "short")["runtime"]["world_size"] == 2
    assert proc.stdout.count('"run_dir"') == 1  # one process speaks for the run


def test_accelerate_launch_trains_what_one_process_does(tiny_bert_no_dropout, odd_files, tmp_path):
    # `accelerate launch --multi_gpu` starts the processes through torchrun's machinery; without GPUs they meet over
    # gloo on the CPU, as on a GPU machine they would over NCCL.
    training = {"batch_size": 4, "epochs": 1}
    ok(train_one(tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "one", training={**training, "grad_accum": 4})))
    recipe = tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "acc", training={**training, "grad_accum": 2})
    path = tmp_path / "acc.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                           "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "-m", "tuneforge", "train",
                           str(path)], env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    ok(proc)
    assert summary(tmp_path / "acc")["runtime"]["world_size"] == 2
    assert_close_weights(tmp_path / "one", tmp_path / "acc")


# ---------------------------------------------------------------- FSDP (training.distributed: fsdp)

@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_in_two_processes_trains_what_one_process_does(method, tiny_bert_no_dropout, odd_files, tmp_path):
    spec = CLASSIFIER_METHODS[method]
    training = {"batch_size": 4, "epochs": 2, "checkpoint_every": 2, "eval_every": 2}
    ok(train_one(tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "one", method=spec,
                             training={**training, "grad_accum": 4})))
    ok(train_cli(tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "fsdp", method=spec,
                             training={**training, "grad_accum": 2, "distributed": "fsdp"}), tmp_path))
    assert_close_weights(tmp_path / "one", tmp_path / "fsdp")
    assert_same_metrics(tmp_path / "one", tmp_path / "fsdp")
    # each rank wrote its shard of the last checkpoint; the kept model is whole and names transformers' class
    shards = sorted(p.name for p in (tmp_path / "fsdp" / "checkpoints" / "step-00000006" / "shards").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    if method == "full":
        config = json.loads((tmp_path / "fsdp" / "model" / "config.json").read_text())
        assert config["architectures"] == ["BertForSequenceClassification"]


def test_fsdp_causal_lm_in_two_processes(tiny_llama, pc_files, tmp_path):  # noqa: F811
    training = {"batch_size": 2, "epochs": 2, "lr": 1e-2}
    ok(train_one(lm_recipe(tiny_llama, pc_files, tmp_path / "one", training={**training, "grad_accum": 2})))
    ok(train_cli(lm_recipe(tiny_llama, pc_files, tmp_path / "fsdp",
                           training={**training, "grad_accum": 1, "distributed": "fsdp"}), tmp_path))
    assert_close_weights(tmp_path / "one", tmp_path / "fsdp")
    assert_same_metrics(tmp_path / "one", tmp_path / "fsdp")


def test_killed_fsdp_run_resumes_exactly_from_its_shards(tiny_bert, odd_files, tmp_path):
    training = {"batch_size": 4, "grad_accum": 2, "epochs": 3, "checkpoint_every": 2, "distributed": "fsdp"}
    full = tiny_recipe(tiny_bert, odd_files, tmp_path / "full", training=training)
    cut = tiny_recipe(tiny_bert, odd_files, tmp_path / "cut", training=training)
    kill_and_resume(full, cut, tmp_path)
    assert (tmp_path / "cut" / "checkpoints" / "step-00000004" / "shards").is_dir()
    ok(train_cli(cut, tmp_path, "--resume"))
    assert_close_weights(tmp_path / "full", tmp_path / "cut", atol=0.0)
    assert summary(tmp_path / "cut")["metrics"] == summary(tmp_path / "full")["metrics"]


def test_fsdp_refuses_what_it_cannot_run(tiny_llama, grpo_setup, tmp_path):  # noqa: F811
    files, reward = grpo_setup
    proc = train_cli(grpo_recipe(tiny_llama, files, tmp_path / "grpo", reward, training={"distributed": "fsdp"}),
                     tmp_path)
    assert proc.returncode != 0 and "training.distributed: fsdp does not run task grpo" in proc.stderr
    assert not (tmp_path / "grpo" / "summary.json").exists()


def test_adaptation_then_task_in_two_processes(tiny_bert_no_dropout, odd_files, tmp_path):
    # Two stages in one run: the masked-LM adaptation's folder is rank 0's, and both ranks then start the task
    # from the adapted model.
    common = {"adapt": {"epochs": 1, "batch_size": 4}}
    training = {"batch_size": 4, "epochs": 1}
    ok(train_one(tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "one", training={**training, "grad_accum": 4},
                             **common)))
    ok(train_cli(tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "two", training={**training, "grad_accum": 2},
                             **common), tmp_path))
    assert (tmp_path / "two" / "adapt" / "model" / "config.json").exists()
    assert_same_metrics(tmp_path / "one", tmp_path / "two")


def test_killed_fsdp_run_resumes_exactly_during_gradual_unfreezing(tiny_bert, odd_files, tmp_path):
    # The checkpoint's stage is applied before the shards load, so the optimizer state of what was unfrozen returns.
    training = {"batch_size": 4, "grad_accum": 2, "epochs": 3, "checkpoint_every": 2, "distributed": "fsdp"}
    method = {"name": "gradual", "unfreeze_every": 2}
    full = tiny_recipe(tiny_bert, odd_files, tmp_path / "full", method=method, training=training)
    cut = tiny_recipe(tiny_bert, odd_files, tmp_path / "cut", method=method, training=training)
    kill_and_resume(full, cut, tmp_path)
    ok(train_cli(cut, tmp_path, "--resume"))
    assert_close_weights(tmp_path / "full", tmp_path / "cut", atol=0.0)


def test_a_finished_run_is_refused_on_every_rank_without_waiting(tiny_bert_no_dropout, odd_files, tmp_path):
    recipe = tiny_recipe(tiny_bert_no_dropout, odd_files, tmp_path / "done", training={"batch_size": 4, "epochs": 1})
    ok(train_cli(recipe, tmp_path))
    again = train_cli(recipe, tmp_path)
    assert again.returncode != 0 and "holds a finished run" in again.stderr
    assert "error (rank 1)" in again.stderr  # rank 0's decision reached rank 1, which stopped with it


def test_grpo_and_distillation_run_in_two_processes(tiny_llama, grpo_setup, tiny_bert, odd_files, tmp_path):  # noqa: F811
    # GRPO samples on every rank (its own prompts, its own generator), so it is not compared with one process;
    # it must train and evaluate (sampling under the evaluation seed on every rank) to the end.
    files, reward = grpo_setup
    ok(train_cli(grpo_recipe(tiny_llama, files, tmp_path / "grpo", reward, training={"epochs": 2}), tmp_path))
    s = summary(tmp_path / "grpo")
    assert s["runtime"]["world_size"] == 2 and "reward" in s["metrics"]["validation"]
    # distillation with a teacher beside the student on every rank
    ok(train_one(tiny_recipe(tiny_bert, odd_files, tmp_path / "teacher", training={"epochs": 1, "batch_size": 4})))
    student = tiny_recipe(tiny_bert, odd_files, tmp_path / "student", training={"epochs": 1, "batch_size": 4},
                          distill={"teacher": str(tmp_path / "teacher")})
    ok(train_cli(student, tmp_path))
    assert summary(tmp_path / "student")["distillation"]["report"]["rows"][0]["model"] == "teacher"


def test_every_method_and_task_in_two_processes_trains_what_one_does(tiny_bert_no_dropout, tiny_llama, odd_files,  # noqa: F811
                                                                     reward_files, image_models, stripe_data, tmp_path):
    # The rest of the matrix in one pair of processes (each run started alike, one after another): adapters,
    # regression, multi-label, masked-LM, a reward model and an image model against one process each.
    import tuneforge

    rows = sentiment_rows(36, seed=1)
    reg = write_rows(tmp_path / "reg.csv", [{"text": r["text"], "label": float(len(r["text"]) % 5)} for r in rows])
    ml = write_rows(tmp_path / "ml.csv", [{"text": r["text"], "label": r["label"] + ("|long" if i % 3 else "")}
                                          for i, r in enumerate(rows)])
    bert, files = tiny_bert_no_dropout, {"train": odd_files["train"], "validation": odd_files["validation"]}
    cases = {
        "dora": tiny_recipe(bert, files, tmp_path / "x", method={"name": "dora", "dropout": 0.0}),
        "ia3": tiny_recipe(bert, files, tmp_path / "x", method={"name": "ia3"}),
        "prefix": tiny_recipe(bert, files, tmp_path / "x", method={"name": "prefix", "num_virtual_tokens": 4}),
        "prompt": tiny_recipe(bert, files, tmp_path / "x", method={"name": "prompt", "num_virtual_tokens": 4}),
        "bottleneck": tiny_recipe(bert, files, tmp_path / "x", method={"name": "bottleneck", "dropout": 0.0}),
        "regression": tiny_recipe(bert, {"train": reg}, tmp_path / "x", task={"type": "regression"},
                                  data={"validation_fraction": 0.25}),
        "multi-label": tiny_recipe(bert, {"train": ml}, tmp_path / "x", task={"type": "multi-label"},
                                   data={"label_separator": "|", "validation_fraction": 0.25}),
        "masked-lm": tiny_recipe(bert, {"train": odd_files["train"]}, tmp_path / "x", task={"type": "masked-lm"}),
        "reward-model": {**pref_recipe(tiny_llama, reward_files, tmp_path / "x", method={"name": "full"}),
                         "task": {"type": "reward-model"}},
        "image": image_recipe(str(image_models["vit"]), {"train": stripe_data["train"],
                                                         "validation": stripe_data["validation"]}, tmp_path / "x"),
    }
    pairs = []
    for name, recipe in cases.items():
        recipe["training"].update(batch_size=4, epochs=1, progress=False, lr=1e-3)
        one = json.loads(json.dumps(recipe))
        one["training"]["grad_accum"], one["output"]["dir"] = 4, str(tmp_path / f"{name}-one")
        recipe["training"]["grad_accum"], recipe["output"]["dir"] = 2, str(tmp_path / f"{name}-two")
        tuneforge.fine_tune(one)
        pairs.append((name, recipe))
    (tmp_path / "matrix.json").write_text(json.dumps([r for _, r in pairs]))
    ok(torchrun([str(HERE / "dist_worker.py"), str(tmp_path / "matrix.json")]))
    for name, _ in pairs:
        assert summary(tmp_path / f"{name}-two")["runtime"]["world_size"] == 2, name
        assert_close_weights(tmp_path / f"{name}-one", tmp_path / f"{name}-two")
        assert_same_metrics(tmp_path / f"{name}-one", tmp_path / f"{name}-two")
