"""Adapters: one conformance matrix run by every method, plus merge, resume, switching and target discovery."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import sentiment_rows, tiny_recipe, write_rows
from helpers import InterruptAt, Snapshot

import tuneforge
from tuneforge.adapters import disabled, is_adapter_parameter
from tuneforge.inference import Predictor
from tuneforge.models import find_layer_groups, load_for_classification

METHODS = ["lora", "dora", "ia3", "prefix", "prompt", "bottleneck"]
PEFT_METHODS = ["lora", "dora", "ia3", "prefix", "prompt"]
MERGEABLE = ["lora", "dora", "ia3"]
TEXTS = ["good film", "the plot was boring", "a very lovely story", "weak actor", "fun movie quite fun"]


class KeepModel:
    """Keeps a reference to the trained model (after the run, it holds the run's final weights)."""

    def on_train_start(self, loop):
        self.model = loop.model


def adapter_recipe(tiny_bert, files, out, method, **training):
    return tiny_recipe(tiny_bert, files, out, method={"name": method, "num_virtual_tokens": 4} if method in
                       ("prefix", "prompt") else {"name": method},
                       training={"lr": 1e-2, "epochs": 2, "restore_best": False, **training})


@pytest.fixture(scope="module")
def trained(tiny_bert_no_dropout, tmp_path_factory):
    """One short run per method on the same data, shared by the conformance tests."""
    root = tmp_path_factory.mktemp("adapters")
    files = {"train": write_rows(root / "train.csv", sentiment_rows(48, seed=1)),
             "validation": write_rows(root / "validation.csv", sentiment_rows(16, seed=2))}
    runs = {}
    for method in METHODS:
        snap, keep = Snapshot(), KeepModel()
        result = tuneforge.fine_tune(adapter_recipe(tiny_bert_no_dropout, files, root / method, method),
                                     callbacks=[snap, keep])
        runs[method] = (result, snap, keep.model)
    return runs


def logits_of(model, tokenizer, texts=TEXTS):
    model.eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


# ---------------------------------------------------------------- the conformance matrix

@pytest.mark.parametrize("method", METHODS)
def test_only_adapter_and_head_weights_change(trained, method):
    result, snap, model = trained[method]
    changed = snap.changed()
    assert changed, "training changed nothing"
    assert changed <= snap.trainable_at_start  # frozen pre-trained weights are bit-for-bit unchanged
    adapter = {n for n in snap.trainable_at_start if is_adapter_parameter(n)}
    head = snap.trainable_at_start - adapter
    assert adapter and adapter <= changed  # every adapter weight learned
    assert any("classifier" in n for n in head & changed)  # the new head trains beside the adapter
    for n in head:  # what else trains is the head: modules above the last block, kept as trainable copies
        assert "encoder.layer" not in n and "embeddings" not in n, n
    assert result.trainable_parameters == sum(snap.start[n].numel() for n in snap.trainable_at_start)
    # Checkpoints hold only the adapter and head
    from safetensors.torch import load_file
    from tuneforge.engine.checkpoint import list_checkpoints
    saved = load_file(str(list_checkpoints(result.run_dir / "checkpoints")[-1] / "model.safetensors"))
    assert set(saved) == snap.trainable_at_start


@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_reloads_with_identical_outputs(trained, method):
    result, _, model = trained[method]
    predictor = Predictor(result.run_dir)
    expected = logits_of(model, predictor.run.tokenizer)
    assert torch.equal(logits_of(predictor.run.model, predictor.run.tokenizer), expected)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["stored_bytes"] == (result.run_dir / "adapter" / "adapter_model.safetensors").stat().st_size
    assert not (result.run_dir / "model").exists()  # only the adapter is stored


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_loads_the_adapter_and_reproduces_outputs(trained, tiny_bert_no_dropout, method):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, _, model = trained[method]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_no_dropout)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_no_dropout, num_labels=2)
    loaded = PeftModel.from_pretrained(base, result.run_dir / "adapter")
    assert torch.equal(logits_of(loaded, tokenizer), logits_of(model, tokenizer))


@pytest.mark.parametrize("method", MERGEABLE)
def test_merge_equals_unmerged_and_loads_without_peft(trained, method, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    result, _, model = trained[method]
    report = tuneforge.merge(result.run_dir, tmp_path / "merged")
    assert report.max_abs_diff <= report.tolerance and report.examples == 16
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    tokenizer = Predictor(result.run_dir).run.tokenizer
    torch.testing.assert_close(logits_of(merged, tokenizer), logits_of(model, tokenizer), rtol=1e-5, atol=1e-6)
    assert not any("lora" in n or "ia3" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    out = pipeline("text-classification", model=str(tmp_path / "merged"))("good film")
    assert out[0]["label"] in {"neg", "pos"}


@pytest.mark.parametrize("method", ["prefix", "prompt", "bottleneck"])
def test_merge_refuses_methods_without_weights_to_fold(trained, method, tmp_path):
    result = trained[method][0]
    with pytest.raises(tuneforge.MergeError, match=f"a {method} adapter cannot be merged"):
        tuneforge.merge(result.run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("method", METHODS)
def test_disabled_adapter_gives_the_base_models_outputs(trained, tiny_bert_no_dropout, method):
    result, _, model = trained[method]
    tokenizer = Predictor(result.run_dir).run.tokenizer
    base = load_for_classification(str(tiny_bert_no_dropout), 2, "single_label_classification",
                                   {0: "neg", 1: "pos"}, head_seed=0).model
    if method in ("prefix", "prompt", "bottleneck"):
        # The adapter is skipped and the head stays as trained: the base model with that head.
        head = {n.removeprefix("base_model.").replace(".modules_to_save.default", ""): p
                for n, p in model.named_parameters()
                if not is_adapter_parameter(n) and "original_module" not in n}
        assert not base.load_state_dict(head, strict=False).unexpected_keys
    # LoRA, DoRA, (IA)^3: the adapter and the trained head are both switched off: the base model as loaded.
    with disabled(model):
        off = logits_of(model, tokenizer)
    assert torch.equal(off, logits_of(base, tokenizer))
    assert not torch.equal(off, logits_of(model, tokenizer))  # and back on afterwards


# ---------------------------------------------------------------- merge refusal, resume, tasks, switching

def test_merge_refuses_and_writes_nothing_when_outputs_differ(trained, monkeypatch, tmp_path):
    import tuneforge.merging as merge_module

    real = merge_module._merge_and_unload

    def corrupted(model):
        merged = real(model)
        with torch.no_grad():
            merged.bert.encoder.layer[1].output.dense.weight.mul_(4.0)  # a merge gone wrong
        return merged

    monkeypatch.setattr(merge_module, "_merge_and_unload", corrupted)
    with pytest.raises(tuneforge.MergeError, match=r"differ from the adapter model's by [0-9.e-]+ .*nothing was written"):
        tuneforge.merge(trained["lora"][0].run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_adapter_resume_equals_uninterrupted(tiny_bert, sentiment_files, tmp_path, method):
    recipe = lambda out: adapter_recipe(tiny_bert, sentiment_files, out, method, checkpoint_every=2,  # noqa: E731
                                        epochs=2, restore_best=True)
    full = tuneforge.fine_tune(recipe(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe(tmp_path / "cut"), callbacks=[InterruptAt(5)])
    resumed = tuneforge.fine_tune(recipe(tmp_path / "cut"), resume=True)
    assert resumed.metrics == full.metrics
    a = Predictor(full.run_dir)
    b = Predictor(resumed.run_dir)
    assert torch.equal(logits_of(a.run.model, a.run.tokenizer), logits_of(b.run.model, b.run.tokenizer))


def test_adapters_train_on_every_task(tiny_bert, tmp_path):
    ml = write_rows(tmp_path / "ml.jsonl", [{"text": "good film", "label": ["pos", "film"]},
                                            {"text": "bad plot", "label": ["neg"]}] * 12)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, {"train": ml}, tmp_path / "ml", task={"type": "multi-label"},
                                        method={"name": "lora"}, data={"validation_fraction": 0.25}))
    assert set(tuneforge.predict(r.run_dir, texts=["good film"])[0]["scores"]) == {"film", "neg", "pos"}
    reg = write_rows(tmp_path / "reg.csv", [{"text": "good film", "label": 4.5}, {"text": "bad plot", "label": 1.0}] * 12)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, {"train": reg}, tmp_path / "reg", task={"type": "regression"},
                                        method={"name": "bottleneck"}, data={"validation_fraction": 0.25}))
    assert isinstance(tuneforge.predict(r.run_dir, texts=["good film"])[0]["score"], float)
    pairs = write_rows(tmp_path / "pairs.csv", [{"a": "good film", "b": "great movie", "label": "same"},
                                                {"a": "good film", "b": "bad plot", "label": "different"}] * 12)
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, {"train": pairs}, tmp_path / "pair",
                                        task={"type": "pair-classification"}, method={"name": "prompt", "num_virtual_tokens": 4},
                                        data={"text_column": "a", "text_pair_column": "b", "validation_fraction": 0.25}))
    assert tuneforge.predict(r.run_dir, texts=["good film"], text_pairs=["bad plot"])[0]["label"] in {"same", "different"}


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_predict_switches_adapters_without_reloading_the_base(tiny_bert, tmp_path, monkeypatch, method):
    import transformers

    runs = []
    for name, seed in (("first", 1), ("second", 2)):
        files = {"train": write_rows(tmp_path / f"{name}.csv", sentiment_rows(32, seed=seed))}
        runs.append(tuneforge.fine_tune(adapter_recipe(tiny_bert, files, tmp_path / "runs" / name, method, seed=seed)))
    alone = [Predictor(r.run_dir) for r in runs]
    expected = [logits_of(p.run.model, p.run.tokenizer) for p in alone]
    assert not torch.equal(expected[0], expected[1])

    loads = []
    real = transformers.AutoModelForSequenceClassification.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained",
                        lambda *a, **k: loads.append(a) or real(*a, **k))
    predictor = Predictor(runs[0].run_dir)
    second = predictor.add_adapter("second")  # a run beside the first, by name
    predictor.use(second)
    assert torch.equal(predictor.logits(_examples()), _logits(alone[1]))
    predictor.use("first")
    assert torch.equal(predictor.logits(_examples()), _logits(alone[0]))
    assert len(loads) == 1  # the base model was loaded once

    records = tuneforge.predict(runs[0].run_dir, texts=["good film"], adapter=str(runs[1].run_dir))
    assert records == tuneforge.predict(runs[1].run_dir, texts=["good film"])


def _examples():
    from tuneforge.data.dataset import TextExample
    return [TextExample(text=t, text_pair=None, source="") for t in TEXTS]


def _logits(predictor):
    return predictor.logits(_examples())


def test_adapters_of_another_kind_or_base_are_refused(trained):
    predictor = Predictor(trained["lora"][0].run_dir)
    with pytest.raises(tuneforge.RunDirError, match="it is a ia3 adapter and this run's is lora"):
        predictor.add_adapter(trained["ia3"][0].run_dir)
    with pytest.raises(tuneforge.RunDirError, match="not an adapter run directory"):
        predictor.add_adapter("no-such-run")


def test_cli_merge_and_predict_with_adapter(trained, tmp_path, capsys):
    from tuneforge.cli import main

    run = trained["lora"][0].run_dir
    assert main(["merge", str(run), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert main(["merge", str(run), "--out", str(tmp_path / "m")]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["merge", str(trained["prefix"][0].run_dir)]) == 2
    assert "cannot be merged" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["predict", str(run), "--text", "good film", "--adapter", str(run)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["label"] in {"neg", "pos"}


def test_early_stopping_and_keep_best_work_with_adapters(tiny_bert, sentiment_files, tmp_path):
    recipe = adapter_recipe(tiny_bert, sentiment_files, tmp_path / "es", "lora", epochs=6, eval_every=2, lr=0.5,
                            restore_best=True, early_stopping={"patience": 1, "min_delta": 0.0}, metric="loss")
    result = tuneforge.fine_tune(recipe)
    history = json.loads((result.run_dir / "summary.json").read_text())["history"]
    assert result.steps < 36  # stopped before the 6 epochs of 6 steps
    best = min(history, key=lambda h: h["loss"])
    assert result.best_step == best["step"]
    # the saved adapter is the best one: its validation loss is the best loss seen
    assert result.metrics["validation"]["loss"] == pytest.approx(best["loss"], abs=1e-6)


def test_merge_never_writes_over_the_run_or_a_foreign_folder(trained, tmp_path):
    run = trained["lora"][0].run_dir
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for out, why in ((run.parent, "holds the run itself"), (run, "holds the run itself"),
                     (run / "adapter", "inside the run's own files"), (foreign, "not a merged model tuneforge wrote"),
                     (foreign / "notes.txt", "is a file")):
        with pytest.raises(tuneforge.RunDirError, match=why):
            tuneforge.merge(run, out, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me" and (run / "adapter" / "adapter_config.json").exists()
    tuneforge.merge(run, tmp_path / "merged")
    with pytest.raises(tuneforge.RunDirError, match="--overwrite"):
        tuneforge.merge(run, tmp_path / "merged")
    tuneforge.merge(run, tmp_path / "merged", overwrite=True)  # an earlier merge may be replaced
    assert json.loads((tmp_path / "merged" / "merged_from.json").read_text())["method"] == "lora"


def test_adapters_with_one_folder_name_stay_apart(tiny_bert, tmp_path):
    runs = []
    for parent, seed in (("a", 1), ("b", 2)):
        files = {"train": write_rows(tmp_path / f"{parent}.csv", sentiment_rows(32, seed=seed))}
        runs.append(tuneforge.fine_tune(adapter_recipe(tiny_bert, files, tmp_path / parent / "lora", "lora", seed=seed)))
    predictor = Predictor(runs[0].run_dir)
    other = predictor.add_adapter(runs[1].run_dir)
    assert other == "lora-2" and predictor.add_adapter(runs[1].run_dir / "adapter") == "lora-2"
    predictor.use(other)
    assert torch.equal(predictor.logits(_examples()), _logits(Predictor(runs[1].run_dir)))
    predictor.use("lora")
    assert torch.equal(predictor.logits(_examples()), _logits(Predictor(runs[0].run_dir)))


def test_bottleneck_adapters_of_another_layout_are_refused(tiny_bert, sentiment_files, tmp_path):
    a = tuneforge.fine_tune(adapter_recipe(tiny_bert, sentiment_files, tmp_path / "relu", "bottleneck"))
    recipe = adapter_recipe(tiny_bert, sentiment_files, tmp_path / "gelu", "bottleneck")
    recipe["method"]["non_linearity"] = "gelu"
    b = tuneforge.fine_tune(recipe)
    with pytest.raises(tuneforge.RunDirError, match="bottleneck layout differs.*non_linearity"):
        Predictor(a.run_dir).add_adapter(b.run_dir)
