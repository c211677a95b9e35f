"""`tuneforge check`: each invariant holds on a tiny model, and each is shown to fail on a planted defect, so none
can pass vacuously; nothing is written into output.dir."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import tiny_recipe

import tuneforge.engine.loop as loop_module
from tuneforge.check import check
from tuneforge.check.export import EXPORT_RTOL
from tuneforge.tasks.base import Task


def _by_name(report) -> dict:
    return {r.name: r for r in report.results}


def test_the_invariants_hold_and_nothing_is_written_to_output_dir(tiny_bert, sentiment_files, tmp_path):
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run"), workdir=tmp_path)
    results = _by_name(report)
    assert report.passed
    assert results["accumulation"].passed and results["accumulation"].detail["k"] == 2
    assert results["resume"].passed and results["resume"].detail["max_abs_diff"] == 0.0
    assert "12 steps" in results["projected run time"].measured  # 48 rows / 8 x 2 epochs
    assert not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the scratch folder is gone too


def test_accumulation_fails_when_the_loss_is_normalized_per_micro_batch(tiny_bert, sentiment_files, tmp_path,
                                                                         monkeypatch):
    real = Task.batch_loss

    def mean_per_micro_batch(self, model, batch, evaluating=False):  # the defect of transformers #37766
        loss, extra = real(self, model, batch, evaluating)
        return loss / len(batch["labels"]) * 8, extra
    monkeypatch.setattr(Task, "batch_loss", mean_per_micro_batch)
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run"), workdir=tmp_path)
    acc = _by_name(report)["accumulation"]
    assert acc.passed is False and acc.detail["relative"] > 0.3 and not report.passed


def test_resume_fails_when_a_resumed_run_reshuffles(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    real = loop_module.epoch_order
    calls = {"n": 0}

    def reshuffling(n, data_seed, epoch):  # each process draws its own order: a resumed one replays other rows
        calls["n"] += 1
        return real(n, data_seed + calls["n"], epoch)
    monkeypatch.setattr(loop_module, "epoch_order", reshuffling)
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1}),
                   ["training.group_by_length=false"], workdir=tmp_path)
    resumed = _by_name(report)["resume"]
    assert resumed.passed is False and resumed.detail["max_abs_diff"] > 0


def test_the_cli_prints_the_report_and_exits_1_on_a_failure(tiny_bert, sentiment_files, tmp_path, capsys,
                                                           monkeypatch):
    from badinput import run_cli

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})))
    code, out, _ = run_cli(["check", str(f), "--steps", "1", "--json"], capsys)
    assert code == 0 and json.loads(out[out.index("{"):])["passed"] is True
    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", lambda self, state: None)  # resume loses Adam's moments
    code, out, _ = run_cli(["check", str(f), "--steps", "1"], capsys)
    assert code == 1 and "AN INVARIANT FAILED" in out and "FAIL" in out
    assert not (tmp_path / "run").exists()


def test_check_refuses_a_bad_step_count(tiny_bert, sentiment_files, tmp_path, capsys):
    from badinput import Case, assert_refused

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run")))
    assert_refused(Case("check-steps-zero", ["check", f, "--steps", "0"], ["--steps", "0"], watch=[tmp_path]), capsys)


@pytest.mark.parametrize("method", ["lora", "freeze:1"])
def test_the_invariants_hold_for_adapters_and_frozen_layers(tiny_bert, sentiment_files, tmp_path, method):
    name, _, n = method.partition(":")
    sections = {"method": {"name": name, **({"freeze_layers": int(n)} if n else {})}, "training": {"epochs": 1}}
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", **sections), steps=1, workdir=tmp_path)
    assert report.passed, [(r.name, r.measured) for r in report.results]


def test_export_fails_when_the_saved_model_is_not_the_trained_one(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    import tuneforge.run as run_module

    real = run_module.save_model

    def save_a_nudged_model(model, *args, **kwargs):  # an export that changes a weight on the way out
        with torch.no_grad():
            model.classifier.bias.add_(1.0)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(run_module, "save_model", save_a_nudged_model)
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1}), steps=1,
                   workdir=tmp_path)
    export = _by_name(report)["export: full model (model/)"]
    assert export.passed is False and export.detail["max_abs_diff"] > 0.5


def test_export_fails_when_a_merge_drops_the_scaling(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    import tuneforge.merging as merging

    def merge_without_scaling(model):  # the defect of peft #2321's kind: the merged update is not the adapter's
        for m in model.modules():
            if isinstance(getattr(m, "scaling", None), dict):
                m.scaling = {k: 1.0 for k in m.scaling}
        return model.merge_and_unload()
    monkeypatch.setattr(merging, "_merge_and_unload", merge_without_scaling)
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "lora", "alpha": 4},
                               training={"epochs": 1, "lr": 1e-2}), steps=1, workdir=tmp_path)
    merged = _by_name(report)["export: merged model (tuneforge merge)"]
    # (On this tiny model the logits are ~0.03, within merge's own default atol of 1e-4: the reload comparison,
    # relative to the outputs' size, is what catches it.)
    assert merged.passed is False and (merged.detail.get("relative", 1.0) > EXPORT_RTOL
                                       or "differ from the adapter model's" in merged.measured)


def test_padding_fails_when_the_attention_mask_is_dropped(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    real = Task.batch_loss

    def unmasked(self, model, batch, evaluating=False):  # padding the model attends to
        return real(self, model, {k: v for k, v in batch.items() if k != "attention_mask"}, evaluating)
    monkeypatch.setattr(Task, "batch_loss", unmasked)
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1}), steps=1,
                   workdir=tmp_path)
    padding = _by_name(report)["padding"]
    assert padding.passed is False and padding.detail["grad_relative"] > 1e-2


def test_packing_holds_and_fails_when_packed_rows_get_a_full_attention_mask(tmp_path, monkeypatch):
    from test_causal_lm import PAIRS, lm_recipe, make_tiny_llama, write_jsonl

    from tuneforge.data.collate import CausalLMSplit
    llama = make_tiny_llama(tmp_path / "llama")
    rows = [{"prompt": p, "completion": c} for p, c in PAIRS] * 4
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows)}
    recipe = lm_recipe(llama, files, tmp_path / "run", data={"packing": True}, training={"epochs": 1})
    packing = _by_name(check(recipe, steps=1, workdir=tmp_path))["packing"]
    assert packing.passed and packing.detail["kind"] == "packed"

    real = CausalLMSplit.batch

    def leaking(self, indices, pad_id, augment=None):  # a 2-D mask of ones: packed examples see each other
        batch = real(self, indices, pad_id, augment)
        if "position_ids" in batch:
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch
    monkeypatch.setattr(CausalLMSplit, "batch", leaking)
    packing = _by_name(check(recipe, steps=1, workdir=tmp_path))["packing"]
    assert packing.passed is False and packing.detail["loss_relative"] > 1e-3


def test_two_processes_give_the_one_process_step_and_a_planted_defect_fails(tiny_bert, sentiment_files, tmp_path):
    from test_distributed import HERE, torchrun

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})))
    good = torchrun([str(HERE / "check_worker.py"), "check", str(f), "--steps", "1", "--json"])
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    report = json.loads(good.stdout[good.stdout.index("{"):])  # one report: rank 0 speaks for the check
    processes = next(r for r in report["results"] if r["name"] == "processes")
    assert processes["passed"] and processes["detail"]["world_size"] == 2 and report["passed"]
    bad = torchrun([str(HERE / "check_worker.py"), "--plant-every-rank-takes-the-whole-step", "check", str(f),
                    "--steps", "1", "--json"])
    assert bad.returncode != 0
    report = json.loads(bad.stdout[bad.stdout.index("{"):])
    processes = next(r for r in report["results"] if r["name"] == "processes")
    assert processes["passed"] is False and processes["detail"]["relative"] > 0.5
    sharded = torchrun([str(HERE / "check_worker.py"), "check", str(f), "training.distributed=fsdp", "--steps", "1",
                        "--json"])  # FSDP: the gradient gathered from its shards
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-3000:]
    report = json.loads(sharded.stdout[sharded.stdout.index("{"):])
    assert next(r for r in report["results"] if r["name"] == "processes")["passed"] and report["passed"]
    assert not (tmp_path / "run").exists()


def test_generation_stops_at_the_end_of_turn_and_fails_when_the_saved_settings_forget_it(tmp_path, monkeypatch):
    from test_causal_lm import PAIRS, lm_recipe, make_tiny_llama, write_jsonl

    import tuneforge.run as run_module
    llama = make_tiny_llama(tmp_path / "llama")
    files = {"train": write_jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in PAIRS] * 4)}
    recipe = lm_recipe(llama, files, tmp_path / "run", training={"epochs": 1})
    results = _by_name(check(recipe, steps=1, workdir=tmp_path))
    stops = results["export: full model (model/), generation stops"]
    assert stops.passed and "<|im_end|>" in stops.measured
    assert results["time per generated token"].detail["seconds_per_token"] > 0

    real = run_module.save_model

    def forgetful(model, tokenizer, model_dir, *args, **kwargs):  # generation settings that stop at BOS only
        size = real(model, tokenizer, model_dir, *args, **kwargs)
        settings = model_dir / "generation_config.json"
        settings.write_text(json.dumps({**json.loads(settings.read_text()), "eos_token_id": tokenizer.bos_token_id}))
        return size
    monkeypatch.setattr(run_module, "save_model", forgetful)
    stops = _by_name(check(recipe, steps=1, workdir=tmp_path))["export: full model (model/), generation stops"]
    assert stops.passed is False and "went on to 8 tokens" in stops.measured


def test_an_adapter_is_opened_with_peft_alone(tiny_bert, sentiment_files, tmp_path):
    report = check(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "lora"},
                               training={"epochs": 1}), steps=1, workdir=tmp_path)
    peft_line = _by_name(report)["export: adapter (adapter/) in PEFT"]
    assert peft_line.passed and peft_line.detail["class"] == "AutoPeftModelForSequenceClassification"


def test_an_adapter_peft_cannot_open_as_saved_fails_with_the_reason(tiny_bert, tmp_path):
    from conftest import write_rows

    # Three classes: PEFT's AutoPeftModelForSequenceClassification builds the base with its default 2-label head.
    rows = [{"text": f"{w} film", "label": lab} for w, lab in [("good", "pos"), ("bad", "neg"), ("plot", "mid")] * 8]
    files = {"train": write_rows(tmp_path / "d" / "train.csv", rows)}
    report = check(tiny_recipe(tiny_bert, files, tmp_path / "run", method={"name": "lora"}, training={"epochs": 1}),
                   steps=1, workdir=tmp_path)
    peft_line = _by_name(report)["export: adapter (adapter/) in PEFT"]
    assert peft_line.passed is False and "size mismatch" in peft_line.measured and "num_labels=N" in peft_line.measured


def test_stages_with_their_own_loops_are_left_out_and_said(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1})
    recipe["adapt"] = {"epochs": 1, "lr": 1e-3}
    report = check(recipe, steps=1, workdir=tmp_path)
    assert report.passed
    said = _by_name(report)["not probed"]
    assert said.measured.startswith("adapt (continued pre-training before the task)")
    assert not (tmp_path / "run").exists()
