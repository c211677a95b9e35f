"""Standardized regression targets: the loss against hand-worked values, metrics and predictions in the targets'
units, a saved model (full, adapter, head without a bias) that plain transformers / PEFT load to the same outputs,
statistics that survive --resume, the collapse warning, and task.standardize_targets: false as before."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sentiment_rows, tiny_recipe, write_rows
from helpers import InterruptAt
from rich.console import Console

import tuneforge
from tuneforge.data.dataset import TextExample
from tuneforge.recipe import load_recipe
from tuneforge.tasks import task_for
from tuneforge.tasks import targets as standard
from tuneforge.tasks.metrics import RegressionMetrics


def _rows(n: int, seed: int, scale: float = 10.0) -> list[dict]:
    """Targets on a 0-20 scale: the sentiment word and the length of the text decide them."""
    return [{"text": r["text"], "label": scale * (float(r["label"] == "pos") + 0.1 * len(r["text"].split()))}
            for r in sentiment_rows(n, seed)]


def _files(tmp_path: Path, scale: float = 10.0) -> dict:
    return {"train": write_rows(tmp_path / "data" / "train.csv", _rows(60, 1, scale)),
            "validation": write_rows(tmp_path / "data" / "validation.csv", _rows(16, 2, scale))}


def _recipe(model, files, out, standardize=True, **sections):
    training = {"epochs": 6, "lr": 5e-3, **sections.pop("training", {})}
    return tiny_recipe(model, files, out, task={"type": "regression", "standardize_targets": standardize},
                       training=training, **sections)


def _targets(path: Path) -> list[float]:
    import pandas as pd
    return [float(v) for v in pd.read_csv(path)["label"]]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _plain_outputs(model, tokenizer, texts: list[str]) -> list[float]:
    """What a user with transformers alone gets, one text at a time (no padding involved)."""
    model.eval()
    with torch.no_grad():
        return [float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in texts]


def _task(recipe: dict):
    return task_for(load_recipe(recipe))


def _tiny_regression_model(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    return (AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1, problem_type="regression"),
            AutoTokenizer.from_pretrained(tiny_bert))


# ------------------------------------------------------------------ the loss


def test_training_loss_is_the_mse_of_standardized_targets(tiny_bert, tmp_path):
    model, tok = _tiny_regression_model(tiny_bert)
    task = _task(_recipe(tiny_bert, {"train": tmp_path / "x.csv"}, tmp_path / "run"))
    targets = [1.0, 2.0, 3.0, 6.0]  # mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    train = [TextExample(text="good film", label=y) for y in targets]
    lines = task.start_training(model, train, tmp_path, resumed=False, is_main=True)
    assert task.scaling.mean == 3.0 and task.scaling.std == pytest.approx(math.sqrt(3.5))
    assert "mean 3, std 1.871" in lines[0]
    with torch.no_grad():  # the head's raw output z is 0.5 for every row
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(0.5)
    enc = tok(["good film"] * 4, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor(targets)}
    loss, outputs = task.batch_loss(model, batch)
    # standardized targets t have sum 0 and sum of squares n = 4: sum (0.5 - t)^2 = 4 * 0.25 + 4 = 5
    assert float(loss.detach()) == pytest.approx(5.0, rel=1e-6)
    # the outputs are in the targets' units: 3 + 0.5 * sqrt(3.5)
    assert torch.allclose(outputs.reshape(-1), torch.full((4,), 3 + 0.5 * math.sqrt(3.5)))
    # evaluation's loss is in the targets' units too: 3.5 * 5
    eval_loss, _ = task.batch_loss(model, batch, evaluating=True)
    assert float(eval_loss.detach()) == pytest.approx(17.5, rel=1e-6)
    assert (tmp_path / standard.FILE).exists()


def test_constant_targets_train_unscaled():
    assert standard.safe_scale(4.0, 0.0) == 1.0
    assert standard.safe_scale(4.0, 0.5) == 0.5


# ------------------------------------------------------------------ units, saved model, adapters


def test_metrics_predictions_and_the_saved_model_are_in_the_targets_units(tiny_bert_no_dropout, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    files = _files(tmp_path)
    r = tuneforge.fine_tune(_recipe(tiny_bert_no_dropout, files, tmp_path / "run"))
    train, val = _targets(files["train"]), _targets(files["validation"])
    summary = _summary(r.run_dir)
    assert summary["targets"]["standardized"] is True
    assert summary["targets"]["mean"] == pytest.approx(np.mean(train))
    assert summary["targets"]["std"] == pytest.approx(np.std(train))
    config = json.loads((r.model_dir / "config.json").read_text())
    assert config["tuneforge_target_mean"] == pytest.approx(np.mean(train))
    assert config["tuneforge_target_std"] == pytest.approx(np.std(train))

    texts = [row["text"] for row in _rows(16, 2)]
    predicted = [p["score"] for p in tuneforge.predict(r.run_dir, data=str(files["validation"]))]
    plain = _plain_outputs(AutoModelForSequenceClassification.from_pretrained(r.model_dir),
                           AutoTokenizer.from_pretrained(r.model_dir), texts)
    assert predicted == pytest.approx(plain, abs=1e-5)
    # metrics are those of these predictions against the targets as written
    m = r.metrics["validation"]
    assert m["mse"] == pytest.approx(np.mean((np.array(predicted) - val) ** 2), rel=1e-4)
    assert m["pred_mean"] == pytest.approx(np.mean(predicted), rel=1e-4)
    assert abs(m["pred_mean"] - np.mean(train)) < 0.5 * np.std(train)  # real units, not standardized ones
    assert tuneforge.evaluate(r.run_dir, files["validation"])["mse"] == pytest.approx(m["mse"], rel=1e-5)
    assert "warnings" not in summary  # it learned a spread: no collapse warning


def test_a_lora_run_saves_a_head_that_plain_peft_maps_to_the_targets_units(tiny_bert_no_dropout, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    files = _files(tmp_path)
    r = tuneforge.fine_tune(_recipe(tiny_bert_no_dropout, files, tmp_path / "run", method={"name": "lora", "r": 2}))
    texts = [row["text"] for row in _rows(16, 2)]
    predicted = [p["score"] for p in tuneforge.predict(r.run_dir, texts=texts)]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_no_dropout, num_labels=1)
    plain = _plain_outputs(PeftModel.from_pretrained(base, r.run_dir / "adapter"),
                           AutoTokenizer.from_pretrained(tiny_bert_no_dropout), texts)
    assert predicted == pytest.approx(plain, abs=1e-5)
    evaluated = tuneforge.evaluate(r.run_dir, files["validation"])
    assert evaluated["mse"] == pytest.approx(r.metrics["validation"]["mse"], rel=1e-5)
    assert abs(np.mean(predicted) - np.mean(_targets(files["train"]))) < 0.5 * np.std(_targets(files["train"]))


def test_a_head_without_bias_is_scaled_not_centred_and_still_loads_alone(tmp_path):
    from test_causal_lm import make_tiny_llama
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    llama = make_tiny_llama(tmp_path / "llama")
    files = _files(tmp_path)
    r = tuneforge.fine_tune(_recipe(llama, files, tmp_path / "run", training={"epochs": 2}))
    targets = _summary(r.run_dir)["targets"]
    assert targets["layer"] == "score" and targets["shift"] == 0.0
    assert targets["scale"] == pytest.approx(np.std(_targets(files["train"])))
    texts = [row["text"] for row in _rows(8, 2)]
    predicted = [p["score"] for p in tuneforge.predict(r.run_dir, texts=texts)]
    plain = _plain_outputs(AutoModelForSequenceClassification.from_pretrained(r.model_dir),
                           AutoTokenizer.from_pretrained(r.model_dir), texts)
    assert predicted == pytest.approx(plain, abs=1e-4)
    # and they are what the model computed in training (the saved folder holds the whole map)
    evaluated = tuneforge.evaluate(r.run_dir, files["validation"])
    assert evaluated["mse"] == pytest.approx(r.metrics["validation"]["mse"], rel=1e-4)


def test_the_saved_head_is_folded_only_for_saving(tiny_bert, tmp_path):
    model, _ = _tiny_regression_model(tiny_bert)
    task = _task(_recipe(tiny_bert, {"train": tmp_path / "x.csv"}, tmp_path / "run"))
    task.start_training(model, [TextExample(text="a", label=y) for y in (0.0, 4.0)], tmp_path, False, True)
    weight, bias = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with task.saving(model):
        assert torch.allclose(model.classifier.weight, weight * 2.0)
        assert torch.allclose(model.classifier.bias, bias * 2.0 + 2.0)
        assert not model.classifier._forward_hooks  # the saved layer is the whole map
    assert torch.equal(model.classifier.weight, weight) and torch.equal(model.classifier.bias, bias)
    assert len(model.classifier._forward_hooks) == 1
    with task.saving(model, state):  # a sharded model's gathered weights are folded, the live module left alone
        assert torch.allclose(state["classifier.bias"], bias * 2.0 + 2.0)
        assert torch.equal(model.classifier.bias, bias)
    assert torch.equal(state["classifier.bias"], bias)


# ------------------------------------------------------------------ resume


def _full_and_interrupted(model_dir, files, tmp_path):
    """An uninterrupted run, and the same recipe stopped at step 6 (after its step-4 checkpoint)."""
    training = {"checkpoint_every": 4, "epochs": 2}
    full = tuneforge.fine_tune(_recipe(model_dir, files, tmp_path / "full", training=training))
    recipe = _recipe(model_dir, files, tmp_path / "cut", training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(6)])
    return full, recipe


def test_resume_trains_with_the_statistics_the_run_started_with(tiny_bert_no_dropout, tmp_path):
    files = _files(tmp_path)
    full, recipe = _full_and_interrupted(tiny_bert_no_dropout, files, tmp_path)
    started = json.loads((tmp_path / "cut" / standard.FILE).read_text())
    # the training file changes before the resume: the run keeps the statistics its checkpoint was trained under
    write_rows(files["train"], _rows(60, 1, scale=3.0))
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert json.loads((tmp_path / "cut" / standard.FILE).read_text()) == started
    assert _summary(resumed.run_dir)["targets"] == _summary(full.run_dir)["targets"]
    assert _summary(resumed.run_dir)["targets"]["mean"] == pytest.approx(started["mean"])


def test_resume_with_unchanged_data_equals_an_uninterrupted_run(tiny_bert_no_dropout, tmp_path):
    full, recipe = _full_and_interrupted(tiny_bert_no_dropout, _files(tmp_path), tmp_path)
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics


# ------------------------------------------------------------------ the collapse warning


def _metrics(predictions, labels) -> dict:
    m = RegressionMetrics()
    m.update(torch.tensor(predictions).reshape(-1, 1), torch.tensor(labels))
    return m.compute()


def test_collapse_warning_fires_for_a_constant_model_only():
    labels = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    constant = _metrics([2.5] * 6, labels)
    assert constant["pred_std"] == 0.0 and constant["pred_mean"] == pytest.approx(2.5)
    warning = standard.collapse_warning({"validation": constant}, 2.5, 1.7)
    assert "predicts about the same value" in warning and "mean 2.5" in warning and "training.lr" in warning
    spread = _metrics([0.5, 1.2, 1.9, 3.2, 3.9, 4.4], labels)
    assert standard.collapse_warning({"validation": spread}, 2.5, 1.7) is None
    # a shrunk model: the right order, but a spread of 5% of the targets'
    shrunk = _metrics([2.5 + 0.05 * (y - 2.5) for y in labels], labels)
    assert standard.collapse_warning({"validation": shrunk}, 2.5, 1.7) is not None
    assert standard.collapse_warning({}, 2.5, 1.7) is None  # nothing held out: nothing to say


class ConstantHead:
    """After training, the head outputs its bias alone: a model that predicts one value."""

    def on_train_end(self, loop):
        _, layer, _ = standard.output_layer(loop.model)
        with torch.no_grad():
            layer.weight.zero_()


def test_a_run_that_predicts_one_value_warns_in_the_console_and_summary(tiny_bert_no_dropout, tmp_path):
    out = io.StringIO()
    recipe = _recipe(tiny_bert_no_dropout, _files(tmp_path), tmp_path / "run", training={"restore_best": False})
    tuneforge.fine_tune(recipe, callbacks=[ConstantHead()], console=Console(file=out, width=300))
    warnings = _summary(tmp_path / "run").get("warnings")
    assert warnings and "predicts about the same value" in warnings[0]
    assert "predicts about the same value" in out.getvalue()


# ------------------------------------------------------------------ standardize_targets: false


def test_false_trains_on_the_targets_as_they_are(tiny_bert_no_dropout, tmp_path):
    files = _files(tmp_path)
    first = tuneforge.fine_tune(_recipe(tiny_bert_no_dropout, files, tmp_path / "std", training={"epochs": 1}))
    # fine-tuned again from that saved model: the earlier run's statistics are not carried into this one
    r = tuneforge.fine_tune(_recipe(first.model_dir, files, tmp_path / "plain", standardize=False,
                                    training={"epochs": 1}))
    assert not (r.run_dir / standard.FILE).exists()
    config = json.loads((r.model_dir / "config.json").read_text())
    assert not set(standard.CONFIG_KEYS) & set(config)
    assert _summary(r.run_dir)["targets"] == {"standardized": False, "rows": 60,
                                              "mean": pytest.approx(np.mean(_targets(files["train"]))),
                                              "std": pytest.approx(np.std(_targets(files["train"])))}

    model, tok = _tiny_regression_model(tiny_bert_no_dropout)
    task = _task(_recipe(tiny_bert_no_dropout, files, tmp_path / "x", standardize=False))
    task.start_training(model, [TextExample(text="a", label=y) for y in (1.0, 2.0, 6.0)], tmp_path / "x", False, True)
    assert task.scaling is None and not model.classifier._forward_hooks
    batch = {**tok(["good film", "bad plot", "a"], return_tensors="pt", padding=True),
             "labels": torch.tensor([1.0, 2.0, 6.0])}
    loss, logits = task.batch_loss(model, batch)
    assert float(loss.detach()) == pytest.approx(float(((logits.reshape(-1) - batch["labels"]) ** 2).sum()))


def test_standardizing_targets_of_mean_0_and_std_1_is_training_on_them_as_they_are(tiny_bert_no_dropout, tmp_path):
    rows = [{"text": r["text"], "label": 1.0 if r["label"] == "pos" else -1.0} for r in sentiment_rows(40, 1)]
    files = {"train": write_rows(tmp_path / "train.csv", rows),
             "validation": write_rows(tmp_path / "validation.csv", rows[:12])}
    on = tuneforge.fine_tune(_recipe(tiny_bert_no_dropout, files, tmp_path / "on", training={"epochs": 2}))
    off = tuneforge.fine_tune(_recipe(tiny_bert_no_dropout, files, tmp_path / "off", standardize=False,
                                      training={"epochs": 2}))
    assert _summary(on.run_dir)["targets"]["scale"] == 1.0 and _summary(on.run_dir)["targets"]["shift"] == 0.0
    assert on.metrics == off.metrics
