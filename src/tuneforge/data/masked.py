"""Masked-language-model data: plain text rows, tokenized once, masked afresh each epoch (dynamic masking, as
RoBERTa) by transformers' DataCollatorForLanguageModeling: of the tokens chosen (mlm_probability, special tokens
never), 80% become the mask token, 10% a random token and 10% stay, and only they have a loss.

A row's mask is drawn from a generator seeded by (data seed, epoch, row), so it does not depend on batch
composition or on dropout's RNG: a resumed run masks exactly as an uninterrupted one, and validation rows are
masked the same way at every evaluation, so their losses compare."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import DataError
from .dataset import TextExample

EVALUATION_SEED = 20_200_513  # masks of validation and test rows: one fixed draw


def read_text_rows(path, fmt: str, text_col: str) -> list[TextExample]:
    """The text column of one file; other columns (labels included) are ignored. Problems name file, row, column."""
    from .dataset import is_missing
    from .readers import read_table

    df = read_table(path, fmt)
    if text_col not in df.columns:
        raise DataError([f"{path}: no {text_col!r} column (columns are: {', '.join(map(str, df.columns))}); set "
                         "data.text_column"])
    problems, rows = [], []
    for i, value in enumerate(df[text_col].tolist(), start=1):
        if is_missing(value) or not isinstance(value, str) or not value.strip():
            problems.append(f"{path} row {i}, column {text_col!r}: expected text, got {value!r}")
            continue
        rows.append(TextExample(text=value, source=f"{path} row {i}"))
    if problems:
        raise DataError(problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []))
    if not rows:
        raise DataError([f"{path}: no rows"])
    return rows


def _row_seed(seed: int, epoch: int, row: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + row) % (2 ** 63)


@dataclass
class MaskedLMSplit:
    input_ids: list[list[int]]
    special: list[list[int]]     # 1 where a token is never chosen (CLS, SEP, ...)
    collator: object             # DataCollatorForLanguageModeling: the masking rule
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def masked(self, row: int, augment=None) -> tuple[list[int], list[int]]:
        """(inputs, labels) of one row: labels are -100 except at the chosen tokens."""
        seed, epoch = augment if augment is not None else (EVALUATION_SEED, 0)
        self.collator.generator = torch.Generator().manual_seed(_row_seed(seed, epoch, row))
        ids = torch.tensor([self.input_ids[row]], dtype=torch.long)
        special = torch.tensor([self.special[row]], dtype=torch.bool)
        inputs, labels = self.collator.torch_mask_tokens(ids, special)
        return inputs[0].tolist(), labels[0].tolist()

    def count(self, indices: Sequence[int], augment=None) -> int:
        """Loss sums are divided by the chosen tokens of the whole step."""
        return sum(sum(t != -100 for t in self.masked(i, augment)[1]) for i in indices)

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict:
        rows = [self.masked(i, augment) for i in indices]
        width = max(len(r[0]) for r in rows)
        pad = lambda seqs, value: torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)  # noqa: E731
        return {"input_ids": pad([r[0] for r in rows], pad_id), "labels": pad([r[1] for r in rows], -100),
                "attention_mask": pad([[1] * len(r[0]) for r in rows], 0)}


def encode_masked(tokenizer, examples: Sequence[TextExample], max_length: int, mlm_probability: float) -> MaskedLMSplit:
    from transformers import DataCollatorForLanguageModeling

    from .clip import clip_texts

    texts, cut = clip_texts(tokenizer, [ex.text for ex in examples], max_length)  # a huge cell: cut in characters
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    at_limit = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) == max_length and i not in cut]
    truncated = len(cut) + (sum(len(ids) > max_length for ids in tokenizer([texts[i] for i in at_limit])["input_ids"])
                            if at_limit else 0)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=mlm_probability)
    return MaskedLMSplit(enc["input_ids"], enc["special_tokens_mask"], collator, truncated)
