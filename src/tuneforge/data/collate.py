"""Splits ready for the loop. Text: tokenized once, padded per batch to the batch's longest row (dynamic
padding). Images: decoded and preprocessed batch by batch (augmented when training).

Both kinds answer the same three questions the loop and evaluation ask: len(split), split.lengths (for
length-sorted evaluation batches) and split.batch(indices, pad_id, augment) -> model inputs and labels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .clip import PAIR_CHARS_PER_TOKEN, clip_texts
from .dataset import TextExample


@dataclass
class EncodedSplit:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor | None
    truncated: int  # rows longer than max_length, cut to fit
    teacher_logits: torch.Tensor | None = None  # distillation with cached teacher outputs: one row per example

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict[str, torch.Tensor]:
        return collate(self, indices, pad_id)

    def count(self, indices: Sequence[int], augment=None) -> int:
        """What a loss sum over these rows is divided by: one per example."""
        return len(indices)


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

    def count(self, indices: Sequence[int], augment=None) -> int:
        return len(indices)

    def batch(self, indices: Sequence[int], pad_id: int = 0, augment: tuple[int, int] | None = None):
        """`augment`: (seed, epoch) for training batches; None gives the deterministic evaluation view."""
        from .image_transforms import rng_for

        rows = [self.examples[i] for i in indices]
        rngs = [rng_for(augment[0], augment[1], i) for i in indices] if augment is not None else None
        batch = {"pixel_values": self.processing(rows, rngs)}
        if self.labels is not None:
            batch["labels"] = self.labels[torch.as_tensor(list(indices), dtype=torch.long)]
        return batch


@dataclass
class CausalLMSplit:
    """Token rows with their labels (-100: no loss); packed rows also carry restarting position ids."""
    input_ids: list[list[int]]
    token_labels: list[list[int]]
    position_ids: list[list[int]] | None = None
    truncated: int = 0
    dropped: list = None                     # sources of examples left without targets (not trained on)
    examples: int = 0                        # examples before packing

    def __post_init__(self):
        self.dropped = self.dropped or []
        # Targets per row: the first position is never predicted (nothing before it).
        self.targets = [sum(t != -100 for t in row[1:]) for row in self.token_labels]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def count(self, indices: Sequence[int], augment=None) -> int:
        """Loss sums are divided by target tokens, so accumulated steps weigh every token alike."""
        return sum(self.targets[i] for i in indices)

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict:
        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        batch = {"input_ids": pad_rows(rows, width, pad_id),
                 "labels": pad_rows([self.token_labels[i] for i in indices], width, -100),
                 # With a key/value cache transformers would not isolate packed examples; training needs none.
                 "use_cache": False}
        if self.position_ids is not None:
            # Packed: no attention mask, so transformers isolates examples by their restarting positions; the
            # padding becomes one more segment of its own, without loss.
            batch["position_ids"] = torch.tensor([self.position_ids[i] + list(range(width - len(self.position_ids[i])))
                                                  for i in indices], dtype=torch.long)
        else:
            batch["attention_mask"] = pad_rows([[1] * len(r) for r in rows], width, 0)
        return batch


def encode_causal_split(tokenizer, examples: Sequence, max_length: int, chat_template: bool = True,
                        train_on: str = "assistant", packing: bool = False) -> CausalLMSplit:
    """Causal-LM examples tokenized with their label masks; packed into rows of max_length tokens when asked."""
    from .causal import encode_causal, pack

    split = encode_causal(tokenizer, examples, max_length, chat_template, train_on)
    if packing:
        rows = pack(split.rows, max_length)
        return CausalLMSplit([r["input_ids"] for r in rows], [r["labels"] for r in rows],
                             [r["position_ids"] for r in rows], split.truncated, split.dropped, len(split.rows))
    return CausalLMSplit([r.input_ids for r in split.rows], [r.labels for r in split.rows], None, split.truncated,
                         split.dropped, len(split.rows))


def encode_texts(tokenizer, examples: Sequence[TextExample], max_length: int,
                 labels: torch.Tensor | None = None) -> EncodedSplit:
    """Single texts or text pairs tokenized once (padded per batch later), with the rows' label tensor."""
    # A huge cell is cut in characters first (clip.py): tokenizing it whole would cost seconds per megabyte.
    pairs = None
    if not examples or examples[0].text_pair is None:
        texts, cut = clip_texts(tokenizer, [ex.text for ex in examples], max_length)
    else:
        texts, cut = clip_texts(tokenizer, [ex.text for ex in examples], max_length, PAIR_CHARS_PER_TOKEN)
        pairs, cut_pairs = clip_texts(tokenizer, [ex.text_pair for ex in examples], max_length, PAIR_CHARS_PER_TOKEN)
        cut |= cut_pairs
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    # Users should know what was cut. Only rows that reached the limit can have been; re-tokenize just those.
    at_limit = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) == max_length and i not in cut]
    truncated = len(cut)
    if at_limit:
        full = tokenizer([texts[i] for i in at_limit], [pairs[i] for i in at_limit] if pairs else None)["input_ids"]
        truncated += sum(len(ids) > max_length for ids in full)
    return EncodedSplit(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"), labels=labels,
                        truncated=truncated)


def pad_rows(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    """Token rows right-padded with `value` to `width`, as one long tensor."""
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(split: EncodedSplit, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    rows = [split.input_ids[i] for i in indices]
    width = max(len(r) for r in rows)
    batch = {"input_ids": pad_rows(rows, width, pad_id), "attention_mask": pad_rows([[1] * len(r) for r in rows], width, 0)}
    if split.token_type_ids is not None:
        batch["token_type_ids"] = pad_rows([split.token_type_ids[i] for i in indices], width, 0)
    if split.labels is not None:
        batch["labels"] = split.labels[torch.as_tensor(list(indices), dtype=torch.long)]
    if split.teacher_logits is not None:
        batch["teacher_logits"] = split.teacher_logits[torch.as_tensor(list(indices), dtype=torch.long)]
    return batch
