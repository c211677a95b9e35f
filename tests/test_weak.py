"""Weak-supervision runs on a tiny BERT: rules label the rows, uncovered rows wait for self-training, soft labels
train the first stage, COSINE self-training moves the model, and the CLI analyses and labels without training."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.cli import main as cli_main
from tuneforge.errors import DataError, RecipeError
from tuneforge.recipe import load_recipe
from tuneforge.tasks import get_task

from conftest import NEGATIVE, POSITIVE, tiny_recipe, write_rows

RULES = [{"name": "praise", "label": "pos", "keywords": POSITIVE[:3]},
         {"name": "blame", "label": "neg", "keywords": NEGATIVE[:3]},
         {"name": "shouting", "label": "neg", "regex": r"\bawful\b.*\bfilm\b"}]


def covered(text: str) -> bool:
    words = set(text.split())
    return bool(words & set(POSITIVE[:3] + NEGATIVE[:3]))


def weak_recipe(tiny_bert, files, tmp_path, **weak):
    return tiny_recipe(tiny_bert, files, tmp_path / "run", weak={"rules": RULES, "gold_column": "label", **weak},
                       training={"epochs": 2, "eval_every": 3})


def test_rules_label_rows_and_uncovered_rows_wait_for_self_training(tiny_bert, sentiment_files, tmp_path):
    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path,
                         self_training={"steps": 6, "update_every": 3, "threshold": 0.0, "lr": 1e-3})
    result = tuneforge.fine_tune(recipe)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    texts = [line.split(",")[0] for line in sentiment_files["train"].read_text().splitlines()[1:]]
    labelled = sum(covered(t) for t in texts)
    assert 0 < labelled < len(texts)
    weak = summary["weak"]
    assert (weak["rows"], weak["labelled"], weak["unlabelled"]) == (len(texts), labelled, len(texts) - labelled)
    assert summary["rows"]["train"] == labelled  # stage one trains on labelled rows only
    # Keyword rules on these rows are always right: the label model's labels agree with gold wherever it labels.
    assert weak["label_model"]["accuracy"] == 1.0 and weak["label_model"]["scored_rows"] == labelled
    rows = [json.loads(line) for line in (result.run_dir / "weak" / "labels.jsonl").read_text().splitlines()]
    assert [r["label"] is None for r in rows] == [not covered(t) for t in texts]
    assert all(r["probs"] is None for r in rows if r["label"] is None)
    analysis = json.loads((result.run_dir / "weak" / "analysis.json").read_text())
    assert analysis["coverage"] == pytest.approx(labelled / len(texts))
    assert [f["name"] for f in analysis["functions"]] == ["praise", "blame", "shouting"]
    # Self-training ran on every row, refreshed its pseudo-labels at steps 0 and 3, and moved the weights.
    st = weak["self_training"]
    assert st["steps"] == 6 and [p["step"] for p in st["pseudo_labels"]] == [0, 3]
    # The first refresh is the first stage's best model labelling every row: labelled rows, then unlabelled ones.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.objectives.cosine import sharpen
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    teacher.load_state_dict(load_file(result.run_dir / "checkpoints" / "best" / "model.safetensors"))
    teacher.eval()
    ordered = [t for t in texts if covered(t)] + [t for t in texts if not covered(t)]
    gold = [r["label"] for r in (json.loads(json.dumps(x)) for x in _gold_rows(sentiment_files["train"]))]
    gold_ordered = [g for t, g in zip(texts, gold) if covered(t)] + [g for t, g in zip(texts, gold) if not covered(t)]
    tokens = AutoTokenizer.from_pretrained(tiny_bert)(ordered, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = sharpen(teacher(**tokens).logits.softmax(-1)).argmax(-1)
    expected = sum(["neg", "pos"][int(p)] == g for p, g in zip(predicted, gold_ordered)) / len(texts)
    assert st["pseudo_labels"][0]["pseudo_label_accuracy"] == pytest.approx(expected, abs=1e-4)
    # Stage one's recorded metrics are those of its best (restored) step.
    assert weak["stage_one"]["metrics"]["validation"]["accuracy"] == \
        pytest.approx(max(h["accuracy"] for h in summary["history"]))
    before = load_file(result.run_dir / "checkpoints" / "best" / "model.safetensors")
    final = load_file(result.model_dir / "model.safetensors")
    if st["improved"]:  # the model saved is self-training's best ...
        kept = load_file(result.run_dir / "self-training" / "checkpoints" / "best" / "model.safetensors")
        assert all(torch.equal(kept[k], final[k]) for k in kept)
        moved = [k for k in before if not torch.equal(before[k], kept[k])]
        assert any(k.startswith("bert.encoder") for k in moved) and "classifier.weight" in moved
    else:  # ... or the first stage's, when self-training never beat it on validation
        assert all(torch.equal(before[k], final[k]) for k in before)
    # The saved model is an ordinary classifier: it evaluates like any run.
    again = tuneforge.evaluate(result.run_dir, str(sentiment_files["test"]))
    assert again["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])


def _gold_rows(path):
    import pandas as pd
    return pd.read_csv(path).to_dict("records")


def test_soft_labels_are_the_cross_entropy_targets():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[0.7, 0.3], [0.5, 0.5]])
    log_p = torch.log_softmax(logits, -1)
    by_hand = -(targets * log_p).sum()
    loss, _ = get_task("classification").batch_loss(lambda **kw: type("Out", (), {"logits": logits})(),
                                                    {"input_ids": None, "labels": targets})
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_weak_label_column_with_abstains_and_probabilities(tiny_bert, sentiment_files, tmp_path):
    rows = [{"text": "good film", "weak": "pos", "label": "pos"},
            {"text": "bad film", "weak": "[0.8, 0.2]", "label": "neg"},
            {"text": "the plot", "weak": "-1", "label": "pos"},
            {"text": "a scene", "weak": "", "label": "neg"},
            {"text": "awful story", "weak": "neg", "label": "neg"},
            {"text": "fun actor", "weak": "[0.1, 0.9]", "label": "pos"}]
    files = {**sentiment_files, "train": write_rows(tmp_path / "weak.csv", rows)}
    recipe = tiny_recipe(tiny_bert, files, tmp_path / "run", weak={"column": "weak", "gold_column": "label"},
                         training={"epochs": 1})
    data = tuneforge.weak.label_rows(recipe)
    assert data.space.names == ["neg", "pos"]
    assert data.labels.covered.tolist() == [True, True, False, False, True, True]
    torch.testing.assert_close(data.targets, torch.tensor([[0, 1], [0.8, 0.2], [1, 0], [0.1, 0.9]]))
    assert [ex.text for ex in data.unlabelled] == ["the plot", "a scene"]
    assert data.quality["label_model"]["accuracy"] == 1.0
    bad = [*rows, {"text": "dull", "weak": "[0.5, 0.6]", "label": "neg"}, {"text": "x", "weak": "maybe", "label": "neg"}]
    recipe["data"]["train"] = str(write_rows(tmp_path / "bad.csv", bad))
    recipe["data"]["labels"] = ["neg", "pos"]  # else "maybe" would be a third class
    with pytest.raises(DataError) as e:
        tuneforge.fine_tune(recipe)
    text = str(e.value)
    assert "bad.csv row 7, column 'weak': class probabilities must be 2 non-negative numbers summing to 1" in text
    assert "bad.csv row 8, column 'weak': unknown label 'maybe'" in text
    assert not (tmp_path / "run").exists()  # nothing written before the data is known to be good


def test_a_row_no_rule_labels_is_never_trained_on_with_a_label(tiny_bert, sentiment_files, tmp_path):
    rows = [{"text": "good good", "label": "pos"}, {"text": "bad story", "label": "neg"},
            {"text": "the plot was very", "label": "pos"}]
    files = {**sentiment_files, "train": write_rows(tmp_path / "three.csv", rows)}
    data = tuneforge.weak.label_rows(tiny_recipe(tiny_bert, files, tmp_path / "run", weak={"rules": RULES}))
    assert [ex.text for ex in data.labelled] == ["good good", "bad story"]
    assert [ex.text for ex in data.unlabelled] == ["the plot was very"]
    assert math.isnan(data.labels.probs[2, 0]) and data.labels.hard[2] == -1


def test_recipe_checks(tiny_bert, sentiment_files, tmp_path):
    base = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run")
    with pytest.raises(RecipeError, match="give labeling_functions and/or rules .* or column"):
        load_recipe({**base, "weak": {"rules": RULES, "column": "weak"}})
    with pytest.raises(RecipeError, match="give labeling_functions and/or rules"):
        load_recipe({**base, "weak": {}})
    with pytest.raises(RecipeError, match="rule 'both': give keywords .* or regex .*, exactly one"):
        load_recipe({**base, "weak": {"rules": [{"name": "both", "label": "pos", "keywords": ["a"], "regex": "b"}]}})
    with pytest.raises(RecipeError, match="weak supervision is for task.type classification"):
        load_recipe({**base, "task": {"type": "regression"}, "weak": {"column": "weak"}})
    with pytest.raises(RecipeError, match="method 'prompt' shifts"):
        load_recipe({**base, "method": {"name": "prompt"}, "weak": {"column": "w", "self_training": {}}})
    with pytest.raises(RecipeError, match="no Python file"):
        tuneforge.weak.label_rows({**base, "weak": {"labeling_functions": str(tmp_path / "missing.py")}})


def test_cli_analyze_and_label(tiny_bert, sentiment_files, tmp_path, capsys):
    import yaml

    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli_main(["weak", "analyze", str(path), "--out", str(tmp_path / "analysis")]) == 0
    shown = capsys.readouterr().out
    assert "praise" in shown and "coverage" in shown and "one-coin" in shown
    assert (tmp_path / "analysis" / "analysis.md").read_text().count("| praise |") == 1
    assert cli_main(["weak", "label", str(path), "--out", str(tmp_path / "labels.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and {"text", "label", "probs", "votes"} <= set(rows[0])
    assert not (tmp_path / "run").exists()  # analysing and labelling train nothing


def test_a_run_interrupted_in_self_training_resumes_to_the_same_model(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    from tuneforge.weak.self_training import RefreshPseudoLabels

    st = {"steps": 6, "update_every": 2, "threshold": 0.0, "lr": 1e-3}
    whole = tuneforge.fine_tune(weak_recipe(tiny_bert, sentiment_files, tmp_path / "whole", self_training=st))
    original = RefreshPseudoLabels.on_step_end

    def interrupt(self, loop):
        if loop.state.global_step == 3:
            raise KeyboardInterrupt
        original(self, loop)

    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path / "cut", self_training=st)
    monkeypatch.setattr(RefreshPseudoLabels, "on_step_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe)
    monkeypatch.setattr(RefreshPseudoLabels, "on_step_end", original)
    with pytest.raises(Exception, match="unfinished run"):
        tuneforge.fine_tune(recipe)
    resumed = tuneforge.fine_tune(recipe, resume=True)
    a, b = load_file(whole.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == whole.metrics


def test_soft_labels_reach_the_loss(tiny_bert, sentiment_files, tmp_path):
    rows = [{"text": r["text"], "weak": "[0.6, 0.4]" if r["label"] == "neg" else "[0.3, 0.7]", "label": r["label"]}
            for r in _gold_rows(sentiment_files["train"])]
    files = {**sentiment_files, "train": write_rows(tmp_path / "soft.csv", rows)}
    weights = {}
    for soft in (True, False):
        recipe = tiny_recipe(tiny_bert, files, tmp_path / f"soft-{soft}", weak={"column": "weak", "soft": soft},
                             training={"epochs": 1})
        weights[soft] = load_file(tuneforge.fine_tune(recipe).model_dir / "model.safetensors")
    # Same rows, same argmax labels, same seeds: only the targets' softness differs.
    assert not torch.equal(weights[True]["classifier.weight"], weights[False]["classifier.weight"])


def test_self_training_that_never_beats_the_first_stage_keeps_its_model(tiny_bert, sentiment_files, tmp_path):
    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path,
                         self_training={"steps": 4, "update_every": 2, "threshold": 0.0, "lr": 1e-12})
    result = tuneforge.fine_tune(recipe)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["weak"]["self_training"]["improved"] is False
    assert summary["weak"]["self_training"]["best_step"] is None
    first = load_file(result.run_dir / "checkpoints" / "best" / "model.safetensors")
    final = load_file(result.model_dir / "model.safetensors")
    assert all(torch.equal(first[k], final[k]) for k in first)
    assert result.metrics["validation"] == summary["weak"]["stage_one"]["metrics"]["validation"]


def test_self_training_with_lora(tiny_bert, sentiment_files, tmp_path):
    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path,
                         self_training={"steps": 4, "update_every": 2, "threshold": 0.0, "lr": 1e-2})
    recipe["method"] = {"name": "lora", "r": 4}
    result = tuneforge.fine_tune(recipe)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["weak"]["self_training"]["steps"] == 4 and (result.run_dir / "adapter").is_dir()
    again = tuneforge.evaluate(result.run_dir, str(sentiment_files["test"]))
    assert again["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])


def test_column_cells_that_are_not_probabilities_are_named(tiny_bert, sentiment_files, tmp_path):
    rows = [{"text": "good film", "weak": "pos"}, {"text": "bad", "weak": "[NaN, 1.0]"},
            {"text": "dull", "weak": "[0.2; 0.8]"}]
    files = {**sentiment_files, "train": write_rows(tmp_path / "cells.csv", rows)}
    with pytest.raises(DataError) as e:
        tuneforge.weak.label_rows(tiny_recipe(tiny_bert, files, tmp_path / "run", weak={"column": "weak"}))
    assert "cells.csv row 2, column 'weak': class probabilities" in str(e.value)
    assert "cells.csv row 3, column 'weak': class probabilities" in str(e.value)


def test_rules_of_one_class_without_gold_data_are_refused_clearly(tiny_bert, sentiment_files, tmp_path):
    files = {"train": sentiment_files["train"]}
    recipe = tiny_recipe(tiny_bert, files, tmp_path / "run", weak={"rules": RULES[:1]})
    with pytest.raises(DataError, match="name 1 class.*at least two"):
        tuneforge.weak.label_rows(recipe)


def test_self_training_trains_the_encoder_and_head(tiny_bert, sentiment_files, tmp_path):
    finals = {}
    for name, st in (("without", None), ("with", {"steps": 4, "update_every": 2, "threshold": 0.0, "lr": 1e-2})):
        recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path / name, self_training=st)
        recipe["training"]["restore_best"] = False  # each model as its last step left it
        finals[name] = load_file(tuneforge.fine_tune(recipe).model_dir / "model.safetensors")
    moved = [k for k in finals["without"] if not torch.equal(finals["without"][k], finals["with"][k])]
    assert any(k.startswith("bert.encoder") for k in moved) and "classifier.weight" in moved


def test_every_pseudo_label_refresh_reads_the_frozen_prefix_cache(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    from tuneforge.weak import self_training

    served = []
    original = self_training.RefreshPseudoLabels.refresh

    def refresh(self, loop):
        cache = loop.prefix_cache
        hits, misses = cache.hits, cache.misses
        original(self, loop)
        served.append((cache.hits - hits, cache.misses - misses))

    monkeypatch.setattr(self_training.RefreshPseudoLabels, "refresh", refresh)
    recipe = weak_recipe(tiny_bert, sentiment_files, tmp_path, self_training={"steps": 4, "update_every": 2})
    recipe["method"] = {"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1}
    tuneforge.fine_tune(recipe)
    assert len(served) == 2  # before step 1 and after step 2
    assert all(hits > 0 and misses == 0 for hits, misses in served), served
