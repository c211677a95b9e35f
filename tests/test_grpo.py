"""GRPO on a tiny Llama built from config: the objective's pieces against hand-worked values, a policy that learns
what a reward function pays for (with the row's other columns passed to it), clear errors, and exact resume."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tuneforge
from tuneforge.errors import RecipeError, TuneforgeError
from tuneforge.objectives.grpo import group_advantages, grpo_token_loss, k3_kl

from helpers import InterruptAt
from test_causal_lm import tiny_llama, write_jsonl  # noqa: F401  (fixture)

REWARD = '''
def reward(prompts, completions, target, **other):
    """The share of a completion's words that are the row's target word."""
    return [c.split().count(t) / max(len(c.split()), 1) for c, t in zip(completions, target)]


def wrong_length(prompts, completions, **other):
    return [0.0]
'''


def test_group_advantages_standardize_within_each_group():
    adv = group_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), 2)
    std = math.sqrt(0.5)  # unbiased std of (1, 0)
    assert adv.tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.0, 0.0])


def test_k3_kl_and_the_token_loss_by_hand():
    # logp -1, ref -2: d = -1, k3 = e^-1 + 1 - 1 = e^-1; equal log-probs give 0
    assert k3_kl(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -3.0])).tolist() == pytest.approx([math.exp(-1), 0.0])
    # advantage 2, two tokens, ref -1 and -1, logps -1 and -2, beta 0.5:
    # token 1: -2 + 0.5 * 0 = -2; token 2: -2 + 0.5 * (e^1 - 1 - 1); mean over the 2 tokens
    logps = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    loss = grpo_token_loss(logps, torch.tensor([[1, 1, 0]]), torch.tensor([2.0]), torch.tensor([[-1.0, -1.0, 0.0]]), 0.5)
    assert loss.item() == pytest.approx((-2 + (-2 + 0.5 * (math.e - 2))) / 2)
    loss.sum().backward()
    # gradient: -advantage / tokens, plus beta * d k3 / d logp = beta * (1 - e^(ref - logp)) / tokens; none masked
    assert logps.grad.tolist()[0] == pytest.approx([-1.0 + 0.25 * 0.0, -1.0 + 0.25 * (1 - math.e), 0.0])


def grpo_recipe(model_dir: Path, files: dict, out: Path, reward: str, **sections) -> dict:
    recipe = {"model": {"name": str(model_dir), "max_length": 32},
              "task": {"type": "grpo", "reward": reward, "num_generations": 4, "max_new_tokens": 4},
              "data": {k: str(v) for k, v in files.items()}, "method": {"name": "full"},
              "training": {"epochs": 12, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "progress": False, "seed": 0},
              "output": {"dir": str(out)}}
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


@pytest.fixture
def grpo_setup(tmp_path) -> tuple[dict, str]:
    (tmp_path / "reward.py").write_text(REWARD)
    rows = [{"prompt": p, "target": "five"} for p in ("one", "two", "three", "four")]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows * 2), "validation": write_jsonl(tmp_path / "val.jsonl", rows)}
    return files, f"{tmp_path / 'reward.py'}:reward"


def test_grpo_learns_what_the_reward_pays_for(tiny_llama, grpo_setup, tmp_path):
    files, reward = grpo_setup
    result = tuneforge.fine_tune(grpo_recipe(tiny_llama, files, tmp_path / "run", reward))
    history = json.loads((result.run_dir / "summary.json").read_text())["history"]
    first, last = history[0], result.metrics["validation"]
    assert last["reward"] > max(0.5, 2 * first["reward"])  # from rare to most words being the target
    assert last["kl"] > 0 and 0 < last["completion_tokens"] <= 4
    assert set(last) >= {"loss", "reward", "reward_std", "completion_tokens", "stopped", "kl"}
    again = tuneforge.evaluate(result.run_dir, files["validation"])  # the same seeded samples: the same reward
    assert again["reward"] == pytest.approx(last["reward"])
    reply = tuneforge.generate(result.run_dir, "one", tuneforge.GenerationOptions(max_new_tokens=4))
    assert "five" in reply


def test_grpo_with_lora_and_no_kl_needs_no_reference(tiny_llama, grpo_setup, tmp_path):
    files, reward = grpo_setup
    recipe = grpo_recipe(tiny_llama, files, tmp_path / "lora", reward, method={"name": "lora"},
                         task={"beta": 0.0}, training={"epochs": 2})
    result = tuneforge.fine_tune(recipe)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["reference"] == "adapter"  # the base is at hand for free, so KL is still measured
    assert result.metrics["validation"]["kl"] >= 0


def test_grpo_errors_are_clear_and_nothing_is_written(tiny_llama, grpo_setup, tmp_path):
    files, reward = grpo_setup
    with pytest.raises(RecipeError, match="task.reward: no file"):
        tuneforge.fine_tune(grpo_recipe(tiny_llama, files, tmp_path / "a", str(tmp_path / "nope.py:reward")))
    assert not (tmp_path / "a").exists()
    with pytest.raises(RecipeError, match="has no function 'missing'"):
        tuneforge.fine_tune(grpo_recipe(tiny_llama, files, tmp_path / "b", reward.replace(":reward", ":missing")))
    with pytest.raises(TuneforgeError, match="returned 1 rewards for 16 completions"):
        tuneforge.fine_tune(grpo_recipe(tiny_llama, files, tmp_path / "c", reward.replace(":reward", ":wrong_length")))
    with pytest.raises(RecipeError, match="task.reward: grpo needs a reward"):
        tuneforge.load_recipe(grpo_recipe(tiny_llama, files, tmp_path / "d", None))
    with pytest.raises(RecipeError, match="task.num_generations: for grpo tasks only"):
        tuneforge.load_recipe({**grpo_recipe(tiny_llama, files, tmp_path / "e", reward),
                               "task": {"type": "causal-lm", "num_generations": 8}})


def test_resumed_grpo_run_equals_an_uninterrupted_one(tiny_llama, grpo_setup, tmp_path):
    files, reward = grpo_setup
    training = {"epochs": 3, "checkpoint_every": 2}
    full = tuneforge.fine_tune(grpo_recipe(tiny_llama, files, tmp_path / "full", reward, training=training))
    recipe = grpo_recipe(tiny_llama, files, tmp_path / "cut", reward, training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(3)])
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics


def test_completion_logps_use_the_sampling_temperature_and_only_completion_positions():
    from tuneforge.tasks.grpo import completion_logps

    logits = torch.tensor([[[0.0, 2.0, 0.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])  # 1 row, 3 positions, 3 tokens
    ids = torch.tensor([[2, 1, 0]])  # prompt [2], completion [1, 0]: position 0 predicts 1, position 1 predicts 0
    logps, mask = completion_logps(logits, ids, starts=[1], lengths=[2], temperature=2.0)
    expected = [1 - math.log(math.e + 2), 2 - math.log(math.e ** 2 + 2)]  # logits halved, then log-softmax
    assert logps.tolist()[0] == pytest.approx(expected) and mask.tolist() == [[True, True]]


def test_a_reward_file_is_found_beside_the_recipe(tmp_path, tiny_llama):
    import yaml

    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "reward.py").write_text(REWARD)
    write_jsonl(folder / "prompts.jsonl", [{"prompt": "one", "target": "five"}] * 4)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(
        {"model": {"name": str(tiny_llama)}, "task": {"type": "grpo", "reward": "reward.py:reward"},
         "data": {"train": "prompts.jsonl"}}))
    recipe = tuneforge.load_recipe(folder / "recipe.yaml")
    assert recipe.task.reward == f"{(folder / 'reward.py').resolve()}:reward"
    with pytest.raises(tuneforge.DataError, match="'completions' would clash"):
        from tuneforge.data.prompts import read_prompt_examples
        read_prompt_examples(write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completions": 1}]), "auto", "prompt")
