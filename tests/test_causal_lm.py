"""Causal-LM fine-tuning end to end on a tiny Llama built from config: full and LoRA, prompt/completion and chat
rows, packing, and accumulation normalized by target tokens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.errors import DataError

from test_causal_data import make_tokenizer

PAIRS = [("one", "two three"), ("two", "three four five"), ("three", "four"), ("four", "five one two three"),
         ("five", "one")]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def make_tiny_llama(folder: Path) -> Path:
    """A 2-block Llama built from config, with the ChatML test tokenizer, saved in `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pc_files(tmp_path) -> dict[str, Path]:
    rows = [{"prompt": p, "completion": c} for p, c in PAIRS] * 4
    return {"train": write_jsonl(tmp_path / "train.jsonl", rows),
            "validation": write_jsonl(tmp_path / "validation.jsonl", rows[:5])}


def lm_recipe(model_dir: Path, files: dict, out: Path, **sections) -> dict:
    recipe = {"model": {"name": str(model_dir), "max_length": 32}, "task": {"type": "causal-lm"},
              "data": {k: str(v) for k, v in files.items()}, "method": {"name": "full"},
              "training": {"epochs": 8, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "progress": False, "seed": 0},
              "output": {"dir": str(out)}}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


def untrained_loss(model_dir: Path, data: Path) -> float:
    from tuneforge.data.causal import read_causal_examples
    from tuneforge.data.collate import encode_causal_split
    from tuneforge.engine.evaluate import run_evaluation
    from tuneforge.models.loading import load_for_causal_lm
    from tuneforge.tasks import get_task

    loaded = load_for_causal_lm(str(model_dir), 0)
    examples = read_causal_examples(data, "auto", "text", "prompt", "completion", "messages")
    split = encode_causal_split(loaded.tokenizer, examples, 32)
    return run_evaluation(loaded.model, split, get_task("causal-lm"), 0, 0.5, 8, loaded.tokenizer.pad_token_id)["loss"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_causal_lm_learns_and_reloads(method, tiny_llama, pc_files, tmp_path):
    before = untrained_loss(tiny_llama, pc_files["validation"])
    result = tuneforge.fine_tune(lm_recipe(tiny_llama, pc_files, tmp_path / "run", method={"name": method}))
    after = result.metrics["validation"]
    assert after["loss"] < (0.5 if method == "full" else 0.9) * before  # a rank-8 update on a tiny model learns slower
    assert after["perplexity"] == pytest.approx(torch.tensor(after["loss"]).exp().item(), rel=1e-5)
    assert after["target_tokens"] == sum(len(c.split()) + 1 for _, c in PAIRS)  # completion words + <|im_end|>
    again = tuneforge.evaluate(result.run_dir, pc_files["validation"])
    assert again["loss"] == pytest.approx(after["loss"], abs=1e-6)
    if method == "lora":
        config = json.loads((result.model_dir / "adapter_config.json").read_text())
        assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")


def test_accumulation_normalizes_by_target_tokens(tiny_llama, pc_files, tmp_path):
    """Rows hold 2 to 5 target tokens: 2 micro-batches of 2 must equal one batch of 4 only when the summed loss is
    divided by the target tokens of the whole step."""
    runs = {}
    for name, batch, accum in (("one", 4, 1), ("two", 2, 2)):
        recipe = lm_recipe(tiny_llama, pc_files, tmp_path / name, training={"batch_size": batch, "grad_accum": accum,
                                                                           "epochs": 1, "max_grad_norm": None})
        runs[name] = load_file(str(tuneforge.fine_tune(recipe).model_dir / "model.safetensors"))
    assert all(torch.allclose(runs["one"][k], runs["two"][k], atol=1e-6) for k in runs["one"])


def test_packed_training_runs_and_reports(tiny_llama, pc_files, tmp_path):
    result = tuneforge.fine_tune(lm_recipe(tiny_llama, pc_files, tmp_path / "run", data={"packing": True}))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["rows"]["train"] == 20
    # 20 examples of 9 to 13 tokens share rows of 32: fewer batches than the 5 per epoch unpacked (8 epochs).
    assert result.steps < 8 * 5
    assert result.metrics["validation"]["loss"] < untrained_loss(tiny_llama, pc_files["validation"])


def test_chat_rows_and_bad_chat_rows(tiny_llama, tmp_path):
    chats = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in PAIRS] * 3
    files = {"train": write_jsonl(tmp_path / "chat.jsonl", chats)}
    result = tuneforge.fine_tune(lm_recipe(tiny_llama, files, tmp_path / "run", training={"epochs": 1}))
    assert "validation" in result.metrics
    bad = write_jsonl(tmp_path / "bad.jsonl", [chats[0], {"messages": [{"role": "user", "content": "hi"}]},
                                               {"messages": [{"role": "robot", "content": "hi"}]}])
    with pytest.raises(DataError) as e:
        tuneforge.fine_tune(lm_recipe(tiny_llama, {"train": bad}, tmp_path / "bad"))
    message = str(e.value)
    assert "bad.jsonl row 2, column 'messages': no assistant message" in message
    assert "bad.jsonl row 3, column 'messages', message 1" in message


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_changes_memory_not_results(method, tiny_llama, pc_files, tmp_path):
    out, seen = {}, {}

    class Seen:
        def on_train_start(self, loop):
            base = loop.model.get_base_model() if hasattr(loop.model, "get_base_model") else loop.model
            seen[flag] = base.is_gradient_checkpointing

    for flag in (False, True):
        recipe = lm_recipe(tiny_llama, pc_files, tmp_path / str(flag), method={"name": method},
                           training={"epochs": 1, "gradient_checkpointing": flag})
        result = tuneforge.fine_tune(recipe, callbacks=[Seen()])
        name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
        out[flag] = load_file(str(result.model_dir / name))
    assert seen == {False: False, True: True}
    assert out[True].keys() == out[False].keys()
    assert all(torch.allclose(out[True][k], out[False][k], atol=1e-6) for k in out[True])


def test_generation_stops_at_eos_and_streams(tiny_llama, pc_files, tmp_path, capsys):
    from tuneforge.cli import main
    from tuneforge.generation import GenerationOptions, generate_ids

    result = tuneforge.fine_tune(lm_recipe(tiny_llama, pc_files, tmp_path / "run",
                                           task={"sample_prompts": ["one", "three"], "max_new_tokens": 8}))
    generator = tuneforge.Generator(result.run_dir)
    model, tok = generator.run.model, generator.run.tokenizer
    # Make <|im_end|> the certain next token: generation must end right there, after one token, not run to the limit.
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 10.0
    model.lm_head = head
    new = generate_ids(model, tok, "one", GenerationOptions(max_new_tokens=20))
    assert new == [tok.eos_token_id]

    samples = [json.loads(x) for x in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples[:2]] == [(0, "one"), (0, "three")]  # before training
    assert {s["step"] for s in samples} == {0, *[h["step"] for h in result_history(result)]}
    assert all(s["tokens"] <= 8 for s in samples)

    capsys.readouterr()
    assert main(["generate", str(result.run_dir), "--prompt", "one", "--max-new-tokens", "5"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.strip() == tuneforge.generate(result.run_dir, "one", GenerationOptions(max_new_tokens=5)).strip()


def result_history(result):
    return json.loads((result.run_dir / "summary.json").read_text())["history"]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_saved_causal_models_load_in_a_text_generation_pipeline(method, tiny_llama, pc_files, tmp_path):
    """The full model, the adapter (base + adapter, through PEFT) and the merged adapter all load in a plain
    transformers pipeline and write what tuneforge writes."""
    from transformers import pipeline

    from tuneforge.generation import GenerationOptions

    result = tuneforge.fine_tune(lm_recipe(tiny_llama, pc_files, tmp_path / "run", method={"name": method}))
    ours = tuneforge.generate(result.run_dir, "one", GenerationOptions(max_new_tokens=6))
    folders = [result.model_dir]
    if method == "lora":
        report = tuneforge.merge(result.run_dir)
        assert report.max_abs_diff <= report.tolerance
        folders.append(Path(report.out_dir))
    chat = [{"role": "user", "content": "one"}]
    for folder in folders:
        generate = pipeline("text-generation", model=str(folder))
        theirs = generate(chat, max_new_tokens=6, do_sample=False)[0]["generated_text"][-1]["content"]
        assert theirs.strip() == ours.strip(), folder


def _family(kind: str, vocab: int, tok):
    from transformers import (GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config)

    common = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.bos_token_id)
    if kind == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gemma": GemmaConfig, "mistral": MistralConfig}[kind]
    extra = {"head_dim": 8} if kind == "gemma" else {}
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=64, **extra, **common)


@pytest.mark.parametrize("kind", ["qwen2", "gemma", "gpt2", "mistral"])
def test_other_causal_families_fine_tune_with_full_and_lora(kind, pc_files, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    folder = tmp_path / kind
    AutoModelForCausalLM.from_config(_family(kind, len(tok), tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    before = untrained_loss(folder, pc_files["validation"])
    for method in ("full", "lora"):
        result = tuneforge.fine_tune(lm_recipe(folder, pc_files, tmp_path / f"run-{method}", method={"name": method},
                                               training={"epochs": 4}))
        assert result.metrics["validation"]["loss"] < before, (kind, method)


@pytest.mark.parametrize("method", [{"name": "dora"}, {"name": "ia3"}, {"name": "prefix"}, {"name": "prompt"},
                                    {"name": "bottleneck"}, {"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1},
                                    {"name": "head"}])
def test_every_method_on_a_causal_lm(method, tiny_llama, pc_files, tmp_path):
    from helpers import Snapshot

    snap = Snapshot()
    result = tuneforge.fine_tune(lm_recipe(tiny_llama, pc_files, tmp_path / "run", method=method,
                                           training={"epochs": 2}), callbacks=[snap])
    frozen = {n for n in snap.start if n not in snap.trainable_at_start}
    assert frozen and not (snap.changed() & frozen)
    assert snap.changed()
    again = tuneforge.evaluate(result.run_dir, pc_files["validation"])
    assert again["loss"] == pytest.approx(result.metrics["validation"]["loss"], abs=1e-5)


def test_causal_recipe_checks(tiny_llama, pc_files, tmp_path):
    from tuneforge.recipe import load_recipe

    with pytest.raises(tuneforge.RecipeError, match="data.packing cannot isolate packed examples under method 'prefix'"):
        load_recipe(lm_recipe(tiny_llama, pc_files, tmp_path / "r", data={"packing": True}, method={"name": "prefix"}))
    with pytest.raises(tuneforge.RecipeError, match="data.packing, data.train_on: for causal-lm tasks only"):
        load_recipe({"data": {"train": "x.csv", "packing": True, "train_on": "all"}})
    # Every validation example loses its targets to truncation: an error, not a perfect score.
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "one two three four five " * 4, "completion": "one"}] * 3)
    recipe = lm_recipe(tiny_llama, {"train": pc_files["train"], "validation": long}, tmp_path / "run",
                       model={"max_length": 16})
    with pytest.raises(DataError, match=r"validation: all 3 example\(s\) were left with nothing to train on"):
        tuneforge.fine_tune(recipe)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_merge_checks_a_causal_adapter_on_a_given_file(tiny_llama, pc_files, tmp_path):
    result = tuneforge.fine_tune(lm_recipe(tiny_llama, pc_files, tmp_path / "run", method={"name": "lora"},
                                           training={"epochs": 1}))
    report = tuneforge.merge(result.run_dir, data=pc_files["validation"])
    assert report.inputs == str(pc_files["validation"]) and report.examples == 5
    assert report.max_abs_diff <= report.tolerance
