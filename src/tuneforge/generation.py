"""Text generation with a causal-LM run: the prompt rendered with the chat template when the model has one,
tokens streamed as they come, generation ended by the model's end-of-sequence / end-of-turn token."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .data.causal import PLAIN_SEPARATOR, stop_ids
from .errors import RunDirError


@dataclass
class GenerationOptions:
    max_new_tokens: int = 128
    temperature: float = 0.0      # 0: greedy
    top_p: float = 1.0
    top_k: int = 0                # 0: no top-k cut
    seed: int = 0
    chat_template: Optional[bool] = None  # prompt as a user turn (tokenizer's template); None: as the run was trained


def prompt_ids(tokenizer, prompt: str, chat_template: Optional[bool] = True) -> torch.Tensor:
    """The prompt as the model saw prompts in training: a user turn plus the assistant's header, or plain text."""
    if chat_template is not False and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


@torch.no_grad()
def generate_ids(model, tokenizer, prompt: str, options: GenerationOptions, streamer=None) -> list[int]:
    """The new tokens (the EOS that ended generation included, when one did)."""
    from .engine.runtime import device_of

    ids = prompt_ids(tokenizer, prompt, options.chat_template).to(device_of(model))
    sampling = options.temperature > 0
    # Every token that ends a reply: EOS, the template's end-of-turn token, the model's configured ones.
    kwargs = {"do_sample": sampling, "max_new_tokens": options.max_new_tokens, "eos_token_id": stop_ids(tokenizer, model),
              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    if sampling:
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
        torch.manual_seed(options.seed)
    else:  # greedy: no sampling settings, so transformers does not warn about unused ones
        kwargs.update(temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
    finally:
        model.train(was_training)
    return out[0, ids.shape[1]:].tolist()


def decode(tokenizer, new_ids: list[int]) -> str:
    """The reply's text, without the separator a plain-text completion starts with (data/causal.py)."""
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    return text[len(PLAIN_SEPARATOR):] if text.startswith(PLAIN_SEPARATOR) else text


class Generator:
    """A finished causal-LM run (full model, or base + adapter) ready to generate."""

    def __init__(self, run_dir: str | Path, device: Optional[str] = None):
        from .runs import open_run

        self.run = open_run(run_dir, device)
        if not self.run.recipe.task_kind.generative:
            raise RunDirError(f"{run_dir} is a {self.run.recipe.task.type} model; generation needs a causal-lm or "
                              "preference run")

    def prompt_format(self) -> str:
        summary = self.run.run_dir / "summary.json"
        fmt = json.loads(summary.read_text()).get("prompt_format") if summary.exists() else None
        return fmt or ("chat-template" if self.run.recipe.data.chat_template else "plain")

    def __call__(self, prompt: str, options: Optional[GenerationOptions] = None, stream: bool = False) -> str:
        from transformers import TextStreamer

        options = options or GenerationOptions()
        if options.chat_template is None:  # as in training: see run summary's prompt_format
            options = replace(options, chat_template=self.prompt_format() == "chat-template")
        streamer = TextStreamer(self.run.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        return decode(self.run.tokenizer, generate_ids(self.run.model, self.run.tokenizer, prompt, options, streamer))


def generate(run_dir: str | Path, prompt: str, options: Optional[GenerationOptions] = None, stream: bool = False,
             device: Optional[str] = None) -> str:
    """Generate a reply to `prompt` with a finished causal-LM run."""
    return Generator(run_dir, device)(prompt, options, stream)


class SampleGenerations:
    """At each evaluation, greedy replies to a few fixed prompts, appended to RUN_DIR/samples.jsonl: what the
    model writes as training goes, beside its loss."""

    def __init__(self, tokenizer, prompts: list[str], path: Path, max_new_tokens: int, chat_template: bool):
        self.tokenizer, self.prompts, self.path = tokenizer, prompts, path
        self.options = GenerationOptions(max_new_tokens=max_new_tokens, chat_template=chat_template)
        self.stops: set[int] = set()

    def on_train_start(self, loop):
        from .engine.callbacks import truncate_jsonl

        if loop.state.global_step == 0:
            self.path.unlink(missing_ok=True)
            self._write(loop, step=0)  # before any training: the base model's replies
        else:  # resumed: replies written after the checkpoint are written again
            truncate_jsonl(self.path, loop.state.global_step)

    def on_evaluate(self, loop, metrics):
        self._write(loop, loop.state.global_step)

    def _write(self, loop, step: int) -> None:
        self.stops = self.stops or set(stop_ids(self.tokenizer, loop.model))
        with open(self.path, "a") as f:
            for prompt in self.prompts:
                new = generate_ids(loop.model, self.tokenizer, prompt, self.options)
                ended = bool(new) and new[-1] in self.stops
                f.write(json.dumps({"step": step, "prompt": prompt, "output": decode(self.tokenizer, new),
                                    "tokens": len(new), "ended": ended}) + "\n")
