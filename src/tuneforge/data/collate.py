"""Splits ready for the loop. Text: tokenized once, padded per batch to the batch's longest row (dynamic
padding). Images: decoded and preprocessed batch by batch (augmented when training).

Both kinds answer the same three questions the loop and evaluation ask: len(split), split.lengths (for
length-sorted evaluation batches) and split.batch(indices, pad_id, augment) -> model inputs and labels."""
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

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict[str, torch.Tensor]:
        return collate(self, indices, pad_id)


@dataclass
class ImageSplit:
    examples: list                 # ImageExample
    processing: object             # ImageProcessing
    labels: torch.Tensor | None
    truncated: int = 0             # nothing is cut from images; kept so reports treat both kinds alike

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def lengths(self) -> list[int]:
        return [1] * len(self.examples)

    def batch(self, indices: Sequence[int], pad_id: int = 0, augment: tuple[int, int] | None = None):
        """`augment`: (seed, epoch) for training batches; None gives the deterministic evaluation view."""
        from .image_transforms import rng_for

        rows = [self.examples[i] for i in indices]
        rngs = [rng_for(augment[0], augment[1], i) for i in indices] if augment is not None else None
        batch = {"pixel_values": self.processing(rows, rngs)}
        if self.labels is not None:
            batch["labels"] = self.labels[torch.as_tensor(list(indices), dtype=torch.long)]
        return batch


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


def encode(tokenizer, examples: Sequence[TextExample], max_length: int, task: str, space: LabelSpace):
    """Text examples tokenized (an EncodedSplit); image examples wrapped with their preprocessing (an ImageSplit,
    `tokenizer` being the run's ImageProcessing)."""
    if task == "image-classification":
        return ImageSplit(list(examples), tokenizer, encode_labels("classification", examples, space))
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
