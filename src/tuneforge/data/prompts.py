"""Prompt rows for online training (GRPO): a prompt (text, or chat messages ending with a user turn) and any
other columns, which go to the reward function with it (e.g. the reference answer)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Union

from ..errors import DataError
from .preference import text_or_messages


RESERVED = {"prompts", "completions"}  # the reward function's own arguments


@dataclass
class PromptExample:
    prompt: Union[str, list]
    extras: dict = field(default_factory=dict)
    source: str = ""


def _plain(value):
    """A cell as a plain Python value for the reward function (NaN from an empty CSV cell becomes None)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_prompt_examples(path, fmt: str, prompt_col: str) -> list[PromptExample]:
    from .readers import read_table

    df = read_table(path, fmt)
    if prompt_col not in df.columns:
        raise DataError([f"{path}: no column {prompt_col!r} (columns are: {', '.join(map(str, df.columns))}); "
                         "set data.prompt_column"])
    problems: list[str] = []
    out = []
    for i, row in enumerate(df.to_dict("records"), start=1):
        where = f"{path} row {i}"
        prompt = text_or_messages(row[prompt_col], f"{where}, column {prompt_col!r}", problems)
        if prompt is None:
            continue
        if isinstance(prompt, list) and prompt[-1]["role"] != "user":
            problems.append(f"{where}, column {prompt_col!r}: a chat prompt must end with a user turn")
            continue
        extras = {str(k): _plain(v) for k, v in row.items() if k != prompt_col}
        clash = sorted(RESERVED & set(extras))
        if clash:
            raise DataError([f"{path}: column(s) {', '.join(map(repr, clash))} would clash with the reward function's "
                             "own arguments (prompts, completions); rename them"])
        out.append(PromptExample(prompt, extras, where))
    if problems:
        raise DataError(problems)
    if not out:
        raise DataError([f"{path}: no prompts"])
    return out


def render_prompt(tokenizer, prompt: Union[str, list], use_chat_template: bool = True) -> list[int]:
    """The prompt's token ids as generation sees them: a user turn plus the assistant header with the chat
    template, else the plain text (with the tokenizer's BOS)."""
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, list) and not templated:
        raise DataError(["chat prompts need a tokenizer with a chat template (and data.chat_template: true)"])
    if templated:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if ids and ids[-1] == tokenizer.eos_token_id:  # tokenizers that append EOS: the prompt does not end the text
        ids = ids[:-1]
    return ids


@dataclass
class PromptSplit:
    """Prompt token ids (cut to max_length from the left, keeping the end that generation continues), their
    texts and extra columns for the reward function."""
    prompt_ids: list[list[int]]
    examples: list[PromptExample]
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(p) for p in self.prompt_ids]

    def count(self, indices: Sequence[int], augment=None) -> int:
        """Loss sums are over prompts (each the mean over its group of completions)."""
        return len(indices)

    def batch(self, indices: Sequence[int], pad_id: int = 0, augment=None) -> dict:
        return {"prompt_ids": [self.prompt_ids[i] for i in indices], "examples": [self.examples[i] for i in indices]}


def encode_prompts(tokenizer, examples: Sequence[PromptExample], max_length: int,
                   use_chat_template: bool = True) -> PromptSplit:
    ids, cut = [], 0
    for example in examples:
        row = render_prompt(tokenizer, example.prompt, use_chat_template)
        if len(row) > max_length:
            row, cut = row[-max_length:], cut + 1
        ids.append(row)
    return PromptSplit(ids, list(examples), cut)


def extras_by_column(examples: Sequence[PromptExample], repeat: int) -> dict[str, list]:
    """Each extra column as a list, every value repeated `repeat` times (once per completion)."""
    columns: dict[str, list] = {}
    for e in examples:
        for k in e.extras:
            columns.setdefault(k, [])
    for k in columns:
        columns[k] = [e.extras.get(k) for e in examples for _ in range(repeat)]
    return columns
