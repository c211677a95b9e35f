"""GRPO as a task: each batch of prompts is answered G times by the policy being trained (sampling), the
completions are scored by a reward (a Python function, or a trained reward-model run), and the loss raises the
log-probability of completions that scored above their group's mean (see objectives/grpo.py).

Evaluation samples G completions per validation prompt from a fixed seed (so evaluations compare alike and do
not move the training RNG) and reports their mean reward, its spread within groups, their length, how many
ended by themselves, and the per-token KL from the reference when there is one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..errors import DataError, TuneforgeError
from ..objectives.grpo import group_advantages, grpo_token_loss, k3_kl
from .language_model import LanguageModelTask
from .preference import check_reference_choice, eval_mode

EVAL_SEED = 1234  # evaluation samples are drawn from this seed, apart from training's RNG


def call_reward(fn, prompts: list[str], completions: list[str], columns: dict) -> torch.Tensor:
    try:
        values = fn(prompts, completions, **columns)
    except Exception as e:
        raise TuneforgeError(f"task.reward raised {type(e).__name__}: {e}") from e
    values = list(values) if values is not None else []
    if len(values) != len(completions):
        raise TuneforgeError(f"task.reward returned {len(values)} rewards for {len(completions)} completions; it must "
                             "return one number per completion")
    try:
        out = torch.tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise TuneforgeError(f"task.reward must return numbers; got {values[:3]!r}...") from None
    if not torch.isfinite(out).all():
        raise TuneforgeError(f"task.reward returned a non-finite reward ({values}); return finite numbers")
    return out


class GRPOMetrics:
    def __init__(self):
        self.rewards: list[torch.Tensor] = []
        self.group_std: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []
        self.stopped: list[torch.Tensor] = []
        self.kl_sum, self.kl_tokens = 0.0, 0

    def update(self, outputs: dict, labels=None) -> None:
        self.rewards.append(outputs["rewards"].cpu())
        self.group_std.append(outputs["group_std"].cpu())
        self.tokens.append(outputs["tokens"].float().cpu())
        self.stopped.append(outputs["stopped"].float().cpu())
        if outputs.get("kl") is not None:
            self.kl_sum += outputs["kl"][0]
            self.kl_tokens += outputs["kl"][1]

    def merge(self, other: "GRPOMetrics") -> None:
        for name in ("rewards", "group_std", "tokens", "stopped"):
            getattr(self, name).extend(getattr(other, name))
        self.kl_sum += other.kl_sum
        self.kl_tokens += other.kl_tokens

    def compute(self) -> dict[str, float]:
        if not self.rewards:
            return {k: float("nan") for k in ("reward", "reward_std", "completion_tokens", "stopped", "kl")}
        return {"reward": float(torch.cat(self.rewards).mean()), "reward_std": float(torch.cat(self.group_std).mean()),
                "completion_tokens": float(torch.cat(self.tokens).mean()),
                "stopped": float(torch.cat(self.stopped).mean()),
                "kl": self.kl_sum / self.kl_tokens if self.kl_tokens else float("nan")}


@dataclass
class GRPOTask(LanguageModelTask):
    num_generations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    beta: float = 0.04
    reward: Optional[Callable] = None
    tokenizer: object = None
    stop_ids: list = field(default_factory=list)
    reference: Optional[object] = None
    name: str = "grpo"
    problem_type: str = "causal_lm"
    default_metric: str = "reward"

    has_reference = True
    uses_reward = True
    samples = True
    keys = ("task.sample_prompts", "data.chat_template", "task.beta", "task.reference", "task.reward",
            "task.num_generations", "task.temperature", "task.disable_dropout")

    def check_recipe(self, recipe) -> None:
        t, d = recipe.task, recipe.data
        if d.dataset:
            raise ValueError(f"data.dataset {d.dataset!r} has no preference pairs or prompts; give data.train "
                             f"(a file with {d.prompt_column!r} and the reward's columns)")
        check_reference_choice(recipe)
        if not t.reward:
            raise ValueError("task.reward: grpo needs a reward: a Python function 'file.py:name' or 'module:name', "
                             "or a reward-model run directory")
        if t.reference == "precomputed":
            raise ValueError("task.reference: precomputed does not apply to grpo (its completions are sampled "
                             "during training); use auto or copy")
        if t.reference == "none" and t.preference_beta:
            raise ValueError("task.reference: none leaves grpo's KL penalty without a reference; set task.beta: 0 "
                             "or use auto / copy")

    def configured(self, recipe) -> "GRPOTask":
        t = recipe.task
        return GRPOTask(num_generations=t.num_generations, max_new_tokens=t.max_new_tokens, temperature=t.temperature,
                        beta=t.preference_beta)

    def reference_needed(self, recipe) -> bool:
        return recipe.task.preference_beta > 0

    def default_beta(self, task_spec) -> float:
        return 0.04  # the KL penalty's weight (Shao et al.)

    def bind(self, model, tokenizer, reward=None) -> None:
        from ..data.causal import stop_ids
        self.reward, self.tokenizer, self.stop_ids = reward, tokenizer, stop_ids(tokenizer, model)

    def describe_objective(self, recipe) -> str:
        t = recipe.task
        return (f"grpo ({t.num_generations} completions per prompt at temperature {t.temperature:g}, KL weight "
                f"{t.preference_beta:g}); reward: {t.reward}")

    def read_file(self, spec, path, notes=None, with_labels: bool = True, fmt=None):
        from ..data.prompts import read_prompt_examples
        return read_prompt_examples(path, spec.format, spec.prompt_column)

    def inputs(self, recipe, run_dir, data=None, texts=None, text_pairs=None, images=None, with_labels=True) -> list:
        if data is None:
            raise DataError([f"{run_dir} is a grpo policy: evaluate it on a file of prompts (mean reward "
                             "of sampled completions), or generate with `tuneforge generate`"])
        return self.read_file(recipe.data, data)

    def encode(self, recipe, tokenizer, examples, space):
        from ..data.prompts import encode_prompts
        return encode_prompts(tokenizer, examples, recipe.model.max_length, recipe.data.chat_template)

    def prompt_format(self, recipe, tokenizer, first) -> str:
        chat = isinstance(first.prompt, list)
        templated = bool(getattr(tokenizer, "chat_template", None)) and (chat or recipe.data.chat_template)
        return "chat-template" if templated else "plain"

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        """Prompts alone: the logits predicting each prompt token after the first."""
        from ..data.collate import CausalLMSplit
        from ..engine.evaluate import run_target_logits
        prompts = CausalLMSplit(split.prompt_ids, [list(ids) for ids in split.prompt_ids])
        return run_target_logits(model, prompts, batch_size, pad_id)

    def num_outputs(self, num_labels: int) -> int:
        return 0

    def make_metrics(self, num_labels: int = 0, threshold: float = 0.5) -> GRPOMetrics:
        return GRPOMetrics()

    def _pad_id(self) -> int:
        if self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        return self.stop_ids[0] if self.stop_ids else 0

    @torch.no_grad()
    def sample(self, model, prompt_ids: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
        """G completions per prompt (prompt by prompt, in order): token ids with the stop token that ended each
        (if any), and whether one did. Drawn from the policy itself: the model's own generation settings
        (repetition penalty, minimum length, banned tokens, ...) are overridden, so the samples' log-probs are the
        policy's."""
        pad, device = self._pad_id(), _device(model)
        width = max(len(p) for p in prompt_ids)
        # Left padding: every prompt ends where generation starts.
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        with eval_mode(model):
            out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True,
                                 temperature=self.temperature, top_p=1.0, top_k=0, min_p=None, typical_p=1.0,
                                 repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, min_length=0,
                                 suppress_tokens=None, begin_suppress_tokens=None, bad_words_ids=None,
                                 max_new_tokens=self.max_new_tokens, num_return_sequences=self.num_generations,
                                 eos_token_id=self.stop_ids or None, pad_token_id=pad)
        completions, stopped = [], []
        stops = set(self.stop_ids)
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in stops), None)
            completions.append(row[: end + 1] if end is not None else row)
            stopped.append(end is not None)
        return completions, torch.tensor(stopped)

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        from ..data.prompts import extras_by_column

        prompts, examples, g = batch["prompt_ids"], batch["examples"], self.num_generations
        device = _device(model)
        if evaluating:  # the same draws at every evaluation (of the same batches), and training's RNG untouched
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(EVAL_SEED)
                completions, stopped = self.sample(model, prompts)
        else:
            completions, stopped = self.sample(model, prompts)
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        rewards = call_reward(self.reward, [e.prompt for e in examples for _ in range(g)], texts,
                              extras_by_column(examples, g)).to(device)
        advantages = group_advantages(rewards, g)

        # Prompt + completion rows, right-padded (positions need no help, whatever the adapter).
        rows = [prompts[i // g] + c for i, c in enumerate(completions)]
        starts = [len(prompts[i // g]) for i in range(len(completions))]
        width = max(len(r) for r in rows)
        pad = self._pad_id()
        inputs = {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device),
                  "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device),
                  "use_cache": False}
        logits = model(**inputs).logits[:, -width:]  # prompt tuning's virtual positions come first: dropped
        logps, mask = completion_logps(logits, inputs["input_ids"], starts, [len(c) for c in completions],
                                       self.temperature)
        ref_logps, kl = None, None
        if self.reference is not None and (self.beta or evaluating):
            ref_logits = self.reference.logits(model, inputs)[:, -width:]
            ref_logps = completion_logps(ref_logits, inputs["input_ids"], starts, [len(c) for c in completions],
                                         self.temperature)[0]
            if evaluating:
                kl = (float((k3_kl(logps, ref_logps) * mask).sum()), int(mask.sum()))
        per_completion = grpo_token_loss(logps, mask, advantages, ref_logps, self.beta)
        loss = per_completion.view(-1, g).mean(1).sum()
        outputs = {"rewards": rewards, "group_std": rewards.view(-1, g).std(1, unbiased=True),
                   "tokens": torch.tensor([len(c) for c in completions]), "stopped": stopped, "kl": kl}
        return loss, outputs


def _device(model) -> torch.device:
    return next(model.parameters()).device


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, starts: list[int], lengths: list[int],
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each completion token under the temperature-scaled distribution it was sampled from, mask),
    both completions x longest completion. Only the completion positions are normalized, row by row, so no
    vocabulary-wide copy of the whole batch is made."""
    longest = max(lengths)
    mask = torch.zeros(len(lengths), longest, dtype=torch.bool, device=logits.device)
    rows = []
    for i, (start, n) in enumerate(zip(starts, lengths)):
        if n == 0:
            rows.append(logits.new_zeros(longest, dtype=torch.float32))
            continue
        scores = logits[i, start - 1:start - 1 + n].float() / temperature  # position t predicts token t + 1
        targets = input_ids[i, start:start + n]
        row = scores.gather(1, targets.unsqueeze(1)).squeeze(1) - scores.logsumexp(-1)
        rows.append(torch.cat([row, row.new_zeros(longest - n)]))
        mask[i, :n] = True
    return torch.stack(rows), mask
