"""Tokenize once, pad per batch to the batch's longest row (dynamic padding)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .dataset import LabelSpace, TextExample


@dataclass
class EncodedSplit:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor | None
    truncated: int  # rows longer than max_length, cut to fit

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_labels(task: str, examples: Sequence[TextExample], space: LabelSpace) -> torch.Tensor | None:
    if not examples or examples[0].label is None:
        return None
    if task == "regression":
        return torch.tensor([ex.label for ex in examples], dtype=torch.float32)
    ids = space.label2id
    if task == "multi-label":
        out = torch.zeros(len(examples), len(space.names), dtype=torch.float32)
        for i, ex in enumerate(examples):
            for name in ex.label:
                out[i, ids[name]] = 1.0
        return out
    return torch.tensor([ids[ex.label] for ex in examples], dtype=torch.long)


def encode(tokenizer, examples: Sequence[TextExample], max_length: int, task: str, space: LabelSpace) -> EncodedSplit:
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    # Users should know what was cut. Only rows that reached the limit can have been; re-tokenize just those.
    at_limit = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) == max_length]
    truncated = 0
    if at_limit:
        full = tokenizer([texts[i] for i in at_limit], [pairs[i] for i in at_limit] if pairs else None)["input_ids"]
        truncated = sum(len(ids) > max_length for ids in full)
    return EncodedSplit(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        labels=encode_labels(task, examples, space),
        truncated=truncated,
    )


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    batch = {"input_ids": _pad(rows, width, pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], width, 0)}
    if split.token_type_ids is not None:
        batch["token_type_ids"] = _pad([split.token_type_ids[i] for i in indices], width, 0)
    if split.labels is not None:
        batch["labels"] = split.labels[torch.as_tensor(list(indices), dtype=torch.long)]
    return batch
