"""Continued pre-training: masking rates and determinism, the tied masked-LM head, the masked-LM loss, and the
`adapt:` stage before a task (the task starts from the adapted weights; the stage is reused on resume)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from conftest import NEUTRAL, NEGATIVE, POSITIVE, tiny_recipe, write_rows
from helpers import InterruptAt, Snapshot
from tuneforge.data.dataset import TextExample
from tuneforge.data.masked import encode_masked
from tuneforge.errors import DataError, RecipeError, RunDirError
from tuneforge.models.loading import load_for_masked_lm
from tuneforge.tasks import get_task


@pytest.fixture(scope="module")
def tok(tiny_bert):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_bert)


def _long_rows(n: int, words: int = 30) -> list[TextExample]:
    rng = random.Random(0)
    vocab = NEUTRAL + POSITIVE + NEGATIVE
    return [TextExample(text=" ".join(rng.choice(vocab) for _ in range(words))) for _ in range(n)]


def test_masking_rates_special_tokens_and_determinism(tok):
    split = encode_masked(tok, _long_rows(400), 64, 0.15)
    chosen = replaced = random_or_kept = kept = 0
    special_ids = set(tok.all_special_ids)
    for i in range(len(split)):
        original = split.input_ids[i]
        inputs, labels = split.masked(i, (7, 0))
        for pos, (o, x, y) in enumerate(zip(original, inputs, labels)):
            if o in special_ids:  # [CLS], [SEP]: never chosen, never changed
                assert y == -100 and x == o
                continue
            if y == -100:
                assert x == o
                continue
            assert y == o  # the label is the original token
            chosen += 1
            replaced += x == tok.mask_token_id
            kept += x == o
            random_or_kept += x != tok.mask_token_id
    maskable = sum(len(ids) - 2 for ids in split.input_ids)
    assert chosen / maskable == pytest.approx(0.15, abs=0.01)       # 12,000 tokens: sd of the rate ~0.003
    assert replaced / chosen == pytest.approx(0.80, abs=0.03)
    assert random_or_kept / chosen == pytest.approx(0.20, abs=0.03)
    assert kept / chosen == pytest.approx(0.10 + 0.10 / len(tok), abs=0.03)  # a random token may be the original
    # A row's mask depends on (seed, epoch, row) only: same again, different next epoch, fixed for evaluation.
    assert split.masked(3, (7, 0)) == split.masked(3, (7, 0))
    assert split.masked(3, (7, 0)) != split.masked(3, (7, 1))
    assert split.masked(3) == split.masked(3)
    batch = split.batch([3, 5, 8], tok.pad_token_id, (7, 0))
    assert batch["input_ids"][0].tolist()[:len(split.input_ids[3])] == split.masked(3, (7, 0))[0]
    assert int((batch["labels"] != -100).sum()) == split.count([3, 5, 8], (7, 0))
    padded = batch["attention_mask"] == 0
    assert bool((batch["labels"][padded] == -100).all())


def test_masked_lm_loss_counts_the_chosen_tokens_only():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    by_hand = -math.log(math.e / (2 + math.e)) - math.log(1 / (2 + math.exp(3)))
    assert float(get_task("masked-lm").loss_sum(logits, labels)) == pytest.approx(by_hand, rel=1e-6)


def test_logits_only_at_chosen_positions_give_the_full_computation_s_loss_and_gradient(tiny_bert, tok):
    from tuneforge.tasks import Task
    model = load_for_masked_lm(str(tiny_bert), seed=0).model
    model.eval()
    split = encode_masked(tok, _long_rows(3, 12), 32, 0.3)
    batch = split.batch([0, 1, 2], tok.pad_token_id, (1, 0))
    task = get_task("masked-lm")
    fast, logits = task.batch_loss(model, batch)
    assert logits.shape == (int((batch["labels"] != -100).sum()), len(tok))
    full, _ = Task.batch_loss(task, model, batch)  # every position's logits, then the loss at the chosen ones
    assert fast.item() == pytest.approx(full.item(), rel=1e-6)
    fast.backward()
    grad = model.bert.embeddings.word_embeddings.weight.grad.clone()
    model.zero_grad()
    full.backward()
    assert torch.allclose(grad, model.bert.embeddings.word_embeddings.weight.grad, atol=1e-6)


def test_an_encoder_without_a_masked_lm_head_gets_one_tied_to_its_embeddings(tiny_bert):
    loaded = load_for_masked_lm(str(tiny_bert), seed=0)
    model = loaded.model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # New: only the head's transform and bias; the decoder is the embedding matrix itself.
    assert loaded.new_parameters and all(n.startswith("cls.predictions.") for n in loaded.new_parameters)
    assert not any("word_embeddings" in n for n in loaded.new_parameters)
    start = load_file(str(Path(tiny_bert) / "model.safetensors"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, start["embeddings.word_embeddings.weight"])


def _text_files(tmp_path):
    rows = [{"text": r.text, "label": "pos" if i % 2 else "neg"} for i, r in enumerate(_long_rows(40, 12))]
    return {"train": write_rows(tmp_path / "text.csv", rows)}


def test_masked_lm_run_trains_the_tied_head_and_saves_a_model_a_classifier_loads(tiny_bert, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    snap = Snapshot()
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, _text_files(tmp_path), tmp_path / "mlm", task={"type": "masked-lm"},
                                        data={"validation_fraction": 0.2},
                                        training={"epochs": 3, "lr": 5e-3, "restore_best": False}),
                            callbacks=[snap])
    history = json.loads((r.run_dir / "summary.json").read_text())["history"]
    assert {"loss", "perplexity", "token_accuracy"} <= set(r.metrics["validation"])
    assert history[-1]["loss"] < history[0]["loss"]
    assert "bert.embeddings.word_embeddings.weight" in snap.changed()
    saved = AutoModelForMaskedLM.from_pretrained(r.model_dir)
    assert saved.get_output_embeddings().weight is saved.get_input_embeddings().weight
    assert torch.equal(saved.bert.embeddings.word_embeddings.weight, snap.end["bert.embeddings.word_embeddings.weight"])
    # The base checkpoint's pooler (a masked LM has none) is saved beside the adapted weights, unchanged, so a
    # classifier fine-tuned from the adapted model starts from the same pooler as one from the original.
    original = load_file(str(Path(tiny_bert) / "model.safetensors"))
    clf = AutoModelForSequenceClassification.from_pretrained(r.model_dir, num_labels=2)
    assert torch.equal(clf.bert.pooler.dense.weight, original["pooler.dense.weight"])
    # A masked-LM run predicts no labels: using it so is a clear error.
    with pytest.raises(RunDirError, match="adapts an encoder; it predicts no labels"):
        tuneforge.predict(r.run_dir, texts=["good film"])
    # The second recipe of DAPT/TAPT: a task run whose model.name is the masked-LM run directory starts from
    # the adapted encoder.
    start = Snapshot()
    tuneforge.fine_tune(tiny_recipe(str(r.run_dir), _text_files(tmp_path), tmp_path / "clf",
                                    training={"epochs": 1}), callbacks=[start])
    assert torch.equal(start.start["bert.embeddings.word_embeddings.weight"], saved.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(start.start["bert.embeddings.word_embeddings.weight"], original["embeddings.word_embeddings.weight"])


def test_adapt_stage_runs_first_and_the_task_starts_from_its_weights(tiny_bert, sentiment_files, tmp_path):
    snap = Snapshot()
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", data={"limit_train": 12},
                         adapt={"epochs": 2, "lr": 5e-3}, training={"epochs": 2})
    r = tuneforge.fine_tune(recipe, callbacks=[snap])
    adapted = load_file(str(tmp_path / "run" / "adapt" / "model" / "model.safetensors"))
    original = load_file(str(Path(tiny_bert) / "model.safetensors"))
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(adapted[name], original["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(snap.start[name], adapted[name])  # the task began where adaptation ended
    summary = json.loads((r.run_dir / "summary.json").read_text())
    a = summary["adaptation"]
    # 'task' text: every training row, not only the 12 labelled ones (validation and test are never read).
    assert a["objective"] == "masked-lm" and a["rows"] == {"task (training text)": 48}
    assert summary["rows"]["train"] == 12
    texts = [json.loads(line)["text"] for line in (tmp_path / "run" / "adapt-data" / "text.jsonl").read_text().splitlines()]
    assert len(texts) == 48
    # A finished run is kept: no retraining of either stage without --overwrite.
    with pytest.raises(RunDirError, match="finished run"):
        tuneforge.fine_tune(recipe)
    # --overwrite redoes both stages (to the same result: same seeds).
    stage = tmp_path / "run" / "adapt" / "summary.json"
    before = stage.stat().st_mtime_ns
    r2 = tuneforge.fine_tune(recipe, overwrite=True)
    assert stage.stat().st_mtime_ns != before
    assert r2.metrics["test"] == pytest.approx(r.metrics["test"])
    # User callbacks watch the task's loop only (a study's pruning hook must not see the adaptation's).
    starts = []

    class CountStarts:
        def on_train_start(self, loop):
            starts.append(loop.run_dir)
    tuneforge.fine_tune(recipe, overwrite=True, callbacks=[CountStarts()])
    assert starts == [tmp_path / "run"]


def test_a_stage_made_with_other_settings_is_never_reused(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", adapt={"epochs": 1, "lr": 5e-3},
                         training={"epochs": 1})

    class StopAtStart:  # the task stage stops before its first checkpoint: nothing of it to resume
        def on_train_start(self, loop):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[StopAtStart()])
    assert (tmp_path / "run" / "adapt" / "summary.json").exists()
    changed = {**recipe, "adapt": {"epochs": 2, "lr": 5e-3}}
    with pytest.raises(RunDirError, match="other adapt settings, model or text"):
        tuneforge.fine_tune(changed)
    carved = {**recipe, "data": {"train": recipe["data"]["train"], "test": recipe["data"]["test"],
                                 "validation_fraction": 0.25}}
    with pytest.raises(RunDirError, match="other adapt settings, model or text"):
        tuneforge.fine_tune(carved)  # validation carved from train: fewer training rows, other text
    tuneforge.fine_tune(changed, overwrite=True)
    from tuneforge.recipe import load_recipe
    assert load_recipe(tmp_path / "run" / "adapt" / "recipe.yaml").training.epochs == 2


@pytest.mark.parametrize("stage", ["adapt", "task"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tiny_bert, sentiment_files, tmp_path, stage,
                                                                 monkeypatch):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", adapt={"epochs": 2, "lr": 5e-3},
                         training={"epochs": 2, "checkpoint_every": 2})
    whole = tuneforge.fine_tune({**recipe, "output": {"dir": str(tmp_path / "whole")}})
    with pytest.raises(KeyboardInterrupt):
        if stage == "adapt":
            monkeypatch.setattr("tuneforge.adapt.stage_callbacks", [InterruptAt(3)])
            tuneforge.fine_tune(recipe)
        else:
            tuneforge.fine_tune(recipe, callbacks=[InterruptAt(3)])
    monkeypatch.setattr("tuneforge.adapt.stage_callbacks", [])
    with pytest.raises(RunDirError, match="pass --resume"):
        tuneforge.fine_tune(recipe)
    finished_stage = tmp_path / "run" / "adapt" / "summary.json"
    written = finished_stage.stat().st_mtime_ns if stage == "task" else None
    resumed = tuneforge.fine_tune(recipe, resume=True)
    if stage == "task":  # the finished adaptation stage was reused, not run again
        assert finished_stage.stat().st_mtime_ns == written
    assert resumed.metrics["test"] == pytest.approx(whole.metrics["test"], abs=1e-6)
    same = load_file(str(whole.model_dir / "model.safetensors")), load_file(str(resumed.model_dir / "model.safetensors"))
    assert all(torch.allclose(same[0][k], same[1][k], atol=1e-6) for k in same[0])


def test_adapt_on_a_decoder_continues_causal_language_modelling(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_causal_data import make_tokenizer
    tok = make_tokenizer(chat_template=None)
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    corpus = write_rows(tmp_path / "corpus.jsonl", [{"text": "one two three four five"}] * 20)
    rows = [{"prompt": "one", "completion": "two three"}] * 8
    train = write_rows(tmp_path / "train.jsonl", rows)
    snap = Snapshot()
    r = tuneforge.fine_tune({"model": {"name": str(folder), "max_length": 32}, "task": {"type": "causal-lm"},
                             "data": {"train": str(train), "validation_fraction": 0.25},
                             "adapt": {"data": [str(corpus)], "epochs": 2, "lr": 1e-2},
                             "training": {"epochs": 1, "batch_size": 4, "progress": False},
                             "output": {"dir": str(tmp_path / "run")}}, callbacks=[snap])
    a = json.loads((r.run_dir / "summary.json").read_text())["adaptation"]
    assert a["objective"] == "causal-lm" and a["rows"] == {str(corpus): 20}
    stage = json.loads((tmp_path / "run" / "adapt" / "summary.json").read_text())["history"]
    assert stage[-1]["loss"] < stage[0]["loss"]  # the corpus's held-out loss fell during the adaptation
    adapted = load_file(str(tmp_path / "run" / "adapt" / "model" / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(snap.start[name], adapted[name])  # the task began where adaptation ended
    assert not torch.equal(adapted[name], load_file(str(folder / "model.safetensors"))[name])


def test_adaptation_keys_are_checked(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(RecipeError, match="task.mlm_probability: for masked-lm tasks only"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "x", task={"mlm_probability": 0.2}))
    with pytest.raises(RecipeError, match="task.type 'masked-lm' is not such a task"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "x", task={"type": "masked-lm"},
                                        adapt={}))
    with pytest.raises(DataError, match="missing.csv"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "x",
                                        adapt={"data": [str(tmp_path / "missing.csv")]}))
    assert not (tmp_path / "x").exists()
