"""Preference tuning end to end on tiny models built from config: reading and checking pairs, response-only
log-probabilities, the reference (adapter disabled, frozen copy, precomputed), DPO against TRL, every loss
training, reward models on an encoder and a decoder, scoring, and resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.data.preference import encode_policy_pairs, read_preference_examples
from tuneforge.errors import DataError, RecipeError

from helpers import InterruptAt
from test_causal_data import make_tokenizer
from test_causal_lm import tiny_llama, write_jsonl  # noqa: F401  (fixture)

# Chosen responses count up from the prompt's word; rejected ones repeat a word: a preference a tiny model learns.
PAIRS = [("one", "two three", "five five"), ("two", "three four", "one one"), ("three", "four five", "two two"),
         ("four", "five one", "three three"), ("five", "one two", "four four")]


# For reward models, a preference a tiny random network picks up in a few steps: chosen responses say "one",
# rejected ones "five" (pairs that differ only in word order sit on the Bradley-Terry loss's saddle for long).
REWARD_PAIRS = [(p, f"{p} one", f"{p} five") for p in ("two", "three", "four", "two three", "four two")]


@pytest.fixture
def reward_files(tmp_path) -> dict[str, Path]:
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in REWARD_PAIRS]
    return {"train": write_jsonl(tmp_path / "train.jsonl", rows * 4),
            "validation": write_jsonl(tmp_path / "validation.jsonl", rows)}


@pytest.fixture
def pref_files(tmp_path) -> dict[str, Path]:
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    return {"train": write_jsonl(tmp_path / "train.jsonl", rows * 4),
            "validation": write_jsonl(tmp_path / "validation.jsonl", rows)}


def pref_recipe(model_dir: Path, files: dict, out: Path, **sections) -> dict:
    recipe = {"model": {"name": str(model_dir), "max_length": 32}, "task": {"type": "preference", "beta": 0.5},
              "data": {k: str(v) for k, v in files.items()}, "method": {"name": "lora"},
              "training": {"epochs": 10, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "progress": False, "seed": 0},
              "output": {"dir": str(out)}}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


# ---------------------------------------------------------------- data

def test_text_chat_and_implicit_prompt_rows_are_read(tmp_path):
    conv = lambda reply: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]  # noqa: E731
    rows = [{"prompt": "one", "chosen": "two", "rejected": "three"},
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "fine"}]}]
    text = read_preference_examples(write_jsonl(tmp_path / "a.jsonl", rows), "auto", "prompt", "chosen", "rejected")
    assert text[0].prompt == "one" and text[1].is_chat and text[1].prompt == [{"role": "user", "content": "hi"}]
    implicit = read_preference_examples(write_jsonl(tmp_path / "b.jsonl", [{"chosen": conv("hello"), "rejected": conv("fine")}]),
                                        "auto", "prompt", "chosen", "rejected")
    assert implicit[0].prompt == [{"role": "user", "content": "hi"}]
    assert implicit[0].chosen == [{"role": "assistant", "content": "hello"}]


def test_empty_and_identical_pairs_are_named_by_row_or_skipped_on_request(tmp_path):
    rows = [{"prompt": "one", "chosen": "two", "rejected": "three"},
            {"prompt": "two", "chosen": "", "rejected": "three"},
            {"prompt": "three", "chosen": "four five", "rejected": " four five "},
            {"prompt": "four", "chosen": "five", "rejected": None}]
    (tmp_path / "prompt").mkdir()  # a folder named like the prompt column changes nothing
    path = write_jsonl(tmp_path / "prompt" / "pairs.jsonl", rows)
    with pytest.raises(DataError) as e:
        read_preference_examples(path, "auto", "prompt", "chosen", "rejected")
    text = str(e.value)
    assert f"{path} row 2, column 'chosen': empty" in text
    assert f"{path} row 3: 'chosen' and 'rejected' are identical" in text
    assert f"{path} row 4, column 'rejected': empty" in text
    assert "row 1" not in text and "data.drop_invalid_pairs" in text
    notes: list[str] = []
    kept = read_preference_examples(path, "auto", "prompt", "chosen", "rejected", drop_invalid=True, report=notes.append)
    assert [k.prompt for k in kept] == ["one"]
    assert "skipped 3 invalid pair(s)" in notes[0] and all(f"row {i}" in notes[0] for i in (2, 3, 4))


def test_messages_written_into_csv_cells_as_json_or_python_literals(tmp_path):
    import pandas as pd

    reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"prompt": ["hi", "yo"], "chosen": [json.dumps(reply("hello")), str(reply("hey"))],
                  "rejected": [json.dumps(reply("go")), str(reply("no"))]}).to_csv(path, index=False)
    pairs = read_preference_examples(path, "auto", "prompt", "chosen", "rejected")
    assert pairs[1].chosen == reply("hey") and pairs[0].rejected == reply("go")
    text = tmp_path / "text.csv"  # a text answer that merely looks like a list stays text
    pd.DataFrame({"prompt": ["a"], "chosen": ["[1, 2]"], "rejected": ["[3]"]}).to_csv(text, index=False)
    assert read_preference_examples(text, "auto", "prompt", "chosen", "rejected")[0].chosen == "[1, 2]"
    broken = tmp_path / "broken.csv"
    pd.DataFrame({"prompt": ["a"], "chosen": ['[{"role": "assistant", "content": "x"'], "rejected": ["b"]}).to_csv(broken, index=False)
    with pytest.raises(DataError, match="row 1, column 'chosen': looks like a list of chat messages"):
        read_preference_examples(broken, "auto", "prompt", "chosen", "rejected")


def test_whole_conversations_beside_a_prompt_column_are_split_at_the_reply(tmp_path):
    conv = lambda reply: [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]  # noqa: E731
    path = write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "hi", "chosen": conv("hello"), "rejected": conv("go")}])
    pair = read_preference_examples(path, "auto", "prompt", "chosen", "rejected")[0]
    assert pair.prompt == [{"role": "user", "content": "hi"}] and pair.chosen == [{"role": "assistant", "content": "hello"}]


def test_reward_inputs_lose_the_prompt_start_not_the_response(tiny_encoder):
    from transformers import AutoTokenizer
    from tuneforge.data.preference import PreferenceExample, encode_reward_pairs

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    long_prompt = " ".join(["one", "two", "three"] * 5)
    split = encode_reward_pairs(tok, [PreferenceExample(long_prompt, "four five", "five four", "row 1"),
                                      PreferenceExample(long_prompt + " four", "five", "five", "row 2")], 8)
    chosen = tok.convert_ids_to_tokens(split.chosen[0]["input_ids"])
    assert len(chosen) == 8 and chosen[-3:] == ["four", "five", "[SEP]"] and split.truncated == 4  # rows cut
    assert split.dropped == ["row 2"] and len(split) == 1  # identical sides: nothing to learn, named


def test_malformed_rows_are_errors_even_when_dropping_invalid_pairs(tmp_path):
    rows = [{"prompt": "one", "chosen": "two", "rejected": [{"role": "assistant", "content": "x"}]},
            {"prompt": "two", "chosen": [{"role": "bot", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]}]
    with pytest.raises(DataError) as e:
        read_preference_examples(write_jsonl(tmp_path / "bad.jsonl", rows), "auto", "prompt", "chosen", "rejected", True)
    assert "row 1: 'chosen' and 'rejected' must both be text or both chat messages" in str(e.value)
    assert "row 2, column 'chosen', message 1" in str(e.value)
    with pytest.raises(DataError, match="no column 'rejected'.*data.rejected_column"):
        read_preference_examples(write_jsonl(tmp_path / "c.jsonl", [{"prompt": "a", "chosen": "b"}]), "auto",
                                 "prompt", "chosen", "rejected")


def test_policy_rows_have_loss_on_the_response_only():
    tok = make_tokenizer()
    from tuneforge.data.preference import PreferenceExample

    split = encode_policy_pairs(tok, [PreferenceExample("one two", "three", "four five", "row 1")], 32)
    for row, words in ((split.chosen[0], ["three"]), (split.rejected[0], ["four", "five"])):
        tokens = tok.convert_ids_to_tokens(row.input_ids)
        targets = [tokens[i] for i, label in enumerate(row.labels) if label != -100]
        assert targets == words + ["<|im_end|>"]  # the reply and the end of the turn, nothing of the prompt
        assert tokens[:4] == ["<|im_start|>", "user", "one", "two"]
    batch = split.batch([0], tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and (batch["labels"][0] != -100).sum() == 2


# ---------------------------------------------------------------- reference and losses

def _logps(model, batch):
    from tuneforge.objectives.preference import sequence_logprobs
    from tuneforge.tasks.metrics import align_to_labels

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logprobs(align_to_labels(logits, batch["labels"]), batch["labels"])[0]


def test_reference_with_the_adapter_disabled_equals_the_base_model(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from tuneforge.data.preference import PreferenceExample
    from tuneforge.models.loading import load_for_causal_lm
    from tuneforge.tasks.preference import AdapterReference

    tok = make_tokenizer()
    split = encode_policy_pairs(tok, [PreferenceExample(p, c, r, "") for p, c, r in PAIRS], 32)
    batch = split.batch(range(len(PAIRS)), tok.pad_token_id)
    base = load_for_causal_lm(str(tiny_llama), 0).model.eval()
    with torch.no_grad():
        expected = _logps(base, batch)
    policy = get_peft_model(load_for_causal_lm(str(tiny_llama), 0).model,
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        adapted = _logps(policy, batch)
        from tuneforge.objectives.preference import sequence_logprobs
        reference = sequence_logprobs(AdapterReference().logits(policy, {k: batch[k] for k in ("input_ids", "attention_mask")}),
                                      batch["labels"])[0]
    assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapter changes the policy...
    assert torch.allclose(reference, expected, atol=1e-6)    # ...and switched off it is the base model exactly
    assert torch.allclose(_logps(policy, batch).detach(), adapted)  # and it is on again afterwards


def test_dpo_loss_equals_trls_on_the_same_batch_and_model(tiny_llama, tmp_path):
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    import copy

    from trl import DPOConfig, DPOTrainer

    from tuneforge.models.loading import load_for_causal_lm
    from tuneforge.tasks.preference import CopyReference, PreferenceTask

    loaded = load_for_causal_lm(str(tiny_llama), 0)
    model, tok = loaded.model, loaded.tokenizer
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that has moved away from its reference
        reference = copy.deepcopy(model)
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), beta=1.0,
                     report_to="none", use_cpu=True, max_length=32, precompute_ref_log_probs=False, seed=0)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
    ours = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)}
    task = PreferenceTask(loss="dpo", beta=1.0, reference=CopyReference(reference))
    with torch.no_grad():
        loss_sum, outputs = task.batch_loss(model, ours)
    assert float(loss_sum) / len(rows) == pytest.approx(trl_loss, rel=1e-5, abs=1e-6)
    assert abs(trl_loss - 0.6931) > 1e-3  # the policy differs from the reference: not the trivial log 2


# ---------------------------------------------------------------- training a policy

def test_dpo_with_lora_learns_the_preference_and_keeps_the_base_frozen(tiny_llama, pref_files, tmp_path):
    result = tuneforge.fine_tune(pref_recipe(tiny_llama, pref_files, tmp_path / "run"))
    history = json.loads((result.run_dir / "summary.json").read_text())["history"]
    first, last = history[0], result.metrics["validation"]
    assert last["reward_accuracy"] == 1.0 and last["margin"] > first["margin"] > 0
    assert last["loss"] < 0.3 < 0.6931 and last["kl"] > 0
    assert set(last) >= {"loss", "reward_accuracy", "chosen_reward", "rejected_reward", "margin", "kl", "chosen_logps"}
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["reference"] == "adapter" and summary["prompt_format"] == "chat-template"
    saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)  # only the adapter: the base stays as it was
    again = tuneforge.evaluate(result.run_dir, pref_files["validation"])
    assert again["loss"] == pytest.approx(last["loss"], abs=1e-5) and again["kl"] == pytest.approx(last["kl"], abs=1e-5)
    reply = tuneforge.generate(result.run_dir, "one", tuneforge.GenerationOptions(max_new_tokens=4))
    merged = tuneforge.merge(result.run_dir)  # checked on the validation pairs' response logits
    assert merged.examples == len(PAIRS) and merged.max_abs_diff <= merged.tolerance and isinstance(reply, str)


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo"])
def test_every_loss_trains_full_networks_with_the_right_reference(loss, tiny_llama, pref_files, tmp_path):
    recipe = pref_recipe(tiny_llama, pref_files, tmp_path / loss, task={"loss": loss}, method={"name": "full"},
                         training={"lr": 5e-3, "epochs": 3})
    result = tuneforge.fine_tune(recipe)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    history, last = summary["history"], result.metrics["validation"]
    assert last["loss"] < history[0]["loss"] and last["reward_accuracy"] == 1.0
    if loss == "ipo":
        assert summary["reference"] == "copy" and last["kl"] > 0
    else:  # reference-free: no copy is made, so no KL estimate
        assert summary["reference"] == "none" and last["kl"] != last["kl"]


def test_precomputed_reference_trains_exactly_as_a_frozen_copy(tiny_llama, pref_files, tmp_path):
    runs = {}
    for mode in ("copy", "precomputed"):
        recipe = pref_recipe(tiny_llama, pref_files, tmp_path / mode, task={"reference": mode}, method={"name": "full"},
                             training={"lr": 5e-3, "epochs": 2})
        runs[mode] = tuneforge.fine_tune(recipe)
    a = load_file(str(runs["copy"].run_dir / "model" / "model.safetensors"))
    b = load_file(str(runs["precomputed"].run_dir / "model" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert runs["precomputed"].metrics["validation"]["loss"] == pytest.approx(runs["copy"].metrics["validation"]["loss"],
                                                                             abs=1e-4)
    assert runs["precomputed"].metrics["validation"]["kl"] != runs["precomputed"].metrics["validation"]["kl"]  # no copy


def test_resumed_full_dpo_keeps_the_starting_network_as_reference(tiny_llama, pref_files, tmp_path):
    training = {"lr": 5e-3, "epochs": 2, "checkpoint_every": 2}
    full = tuneforge.fine_tune(pref_recipe(tiny_llama, pref_files, tmp_path / "full", method={"name": "full"},
                                           training=training))
    recipe = pref_recipe(tiny_llama, pref_files, tmp_path / "cut", method={"name": "full"}, training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(3)])
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics


# ---------------------------------------------------------------- reward models

@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-encoder")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "one", "two", "three", "four", "five"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("base,method", [("encoder", "full"), ("decoder", "lora")])
def test_reward_model_learns_to_rank_and_scores_files(base, method, tiny_encoder, tiny_llama, reward_files, tmp_path):
    model_dir = tiny_encoder if base == "encoder" else tiny_llama
    recipe = pref_recipe(model_dir, reward_files, tmp_path / "rm", method={"name": method},
                         training={"lr": 1e-3 if method == "full" else 1e-2, "epochs": 8})
    recipe["task"] = {"type": "reward-model"}
    result = tuneforge.fine_tune(recipe)
    last = result.metrics["validation"]
    assert last["accuracy"] == 1.0 and last["margin"] > 0.5
    assert last["chosen_reward"] - last["rejected_reward"] == pytest.approx(last["margin"], abs=1e-5)
    records, summary = tuneforge.score(result.run_dir, reward_files["validation"])
    assert summary["accuracy"] == 1.0 and summary["margin"] == pytest.approx(last["margin"], abs=1e-4)
    responses = write_jsonl(tmp_path / "responses.jsonl", [{"prompt": p, "response": r} for p, c, r in REWARD_PAIRS[:2]] +
                            [{"prompt": p, "response": c} for p, c, r in REWARD_PAIRS[:2]])
    scored, _ = tuneforge.score(result.run_dir, responses)
    assert [r["row"] for r in scored] == ["1", "2", "3", "4"]
    assert scored[2]["score"] == pytest.approx(records[0]["chosen_score"], abs=1e-5)  # alone = batched with pairs
    assert scored[2]["score"] > scored[0]["score"] and scored[3]["score"] > scored[1]["score"]
    if base == "encoder":  # a plain Hugging Face sequence-classification model with one output
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
        tok = AutoTokenizer.from_pretrained(result.model_dir)
        assert model.config.num_labels == 1
        with torch.no_grad():
            value = model(**tok("two", "two one", return_tensors="pt")).logits[0, 0]
        assert float(value) == pytest.approx(records[0]["chosen_score"], abs=1e-4)
    else:  # the new scoring head trains and is saved beside the adapter; the base stays frozen
        assert tuneforge.merge(result.run_dir).examples == len(REWARD_PAIRS)  # both rewards of each pair checked
        saved = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
        assert any("score" in k for k in saved) and not [k for k in saved if not ("lora_" in k or "score" in k or "norm" in k)], list(saved)


def test_score_command_writes_one_line_per_row(tiny_encoder, reward_files, tmp_path, capsys):
    from tuneforge.cli import main

    recipe = pref_recipe(tiny_encoder, reward_files, tmp_path / "rm", method={"name": "full"},
                         training={"lr": 1e-3, "epochs": 2})
    recipe["task"] = {"type": "reward-model"}
    run = tuneforge.fine_tune(recipe).run_dir
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(run), "--data", str(reward_files["validation"]), "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(REWARD_PAIRS) and set(lines[0]) == {"row", "chosen_score", "rejected_score", "prefers_chosen"}
    assert main(["score", str(run), "--data", str(tmp_path / "missing.jsonl")]) == 2


# ---------------------------------------------------------------- recipe checks

def test_recipe_checks_for_preference_keys(tiny_llama, pref_files, tmp_path):
    base = pref_recipe(tiny_llama, pref_files, tmp_path / "r")
    with pytest.raises(RecipeError, match="task.beta: for preference and grpo tasks only"):
        tuneforge.load_recipe({**base, "task": {"type": "causal-lm", "beta": 0.2}})
    with pytest.raises(RecipeError, match="task.reference: none leaves loss 'dpo'"):
        tuneforge.load_recipe({**base, "task": {"type": "preference", "reference": "none"}})
    with pytest.raises(RecipeError, match="task.gamma is read by loss simpo only"):
        tuneforge.load_recipe({**base, "task": {"type": "preference", "gamma": 1.0}})
    with pytest.raises(RecipeError, match="data.packing: for causal-lm tasks only"):
        tuneforge.load_recipe({**base, "data": {**base["data"], "packing": True}})
    with pytest.raises(RecipeError, match="task.reference: copy is for whole-network methods"):
        tuneforge.load_recipe({**base, "task": {"type": "preference", "reference": "copy"}})
    with pytest.raises(RecipeError, match="precomputed log-probs are unused by loss 'simpo'"):
        tuneforge.load_recipe({**base, "task": {"type": "preference", "loss": "simpo", "reference": "precomputed"}})
    with pytest.raises(RecipeError, match="method 'prompt' cannot train a reward model"):
        tuneforge.load_recipe({**base, "task": {"type": "reward-model"}, "method": {"name": "prompt"}})
    with pytest.raises(RecipeError, match="data.chosen_column: for preference and reward-model tasks only"):
        tuneforge.load_recipe({**base, "task": {"type": "causal-lm"}, "data": {**base["data"], "chosen_column": "good"}})
    with pytest.raises(RecipeError, match="training.metric: kl needs a reference network"):
        tuneforge.fine_tune({**base, "task": {"type": "preference", "loss": "simpo"}, "method": {"name": "full"},
                             "training": {**base["training"], "metric": "kl"}})
    assert not (tmp_path / "r").exists()
    recipe = tuneforge.load_recipe({**base, "task": {"type": "preference", "loss": "simpo"}})
    assert recipe.task.preference_beta == 2.0
    report = tuneforge.validate(base)
    assert report["rows"] == {"train": 20, "validation": 5} and report["trainable_parameters"] > 0
