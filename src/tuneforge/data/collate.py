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
    # A second pass without truncation only to count what was cut: users should know.
    full = tokenizer(texts, pairs, truncation=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    return EncodedSplit(
        input_ids=enc["input_ids"],
        token_type_ids=enc.get("token_type_ids"),
        labels=encode_labels(task, examples, space),
        truncated=truncated,
    )


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        input_ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention[j, : len(r)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if split.token_type_ids is not None:
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(indices):
            t = split.token_type_ids[i]
            tt[j, : len(t)] = torch.tensor(t, dtype=torch.long)
        batch["token_type_ids"] = tt
    if split.labels is not None:
        batch["labels"] = split.labels[torch.as_tensor(list(indices), dtype=torch.long)]
    return batch
