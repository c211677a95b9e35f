"""Multi-label classification: any number of labels per row, one sigmoid per label, F1 over labels."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.dataset import LabelSpace, label_set_parser
from ..data.tokens import looks_like_tag_lists
from ..errors import DataError
from .metrics import MultiLabelMetrics
from .sequence import SequenceTask


class MultiLabelTask(SequenceTask):
    name = "multi-label"
    problem_type = "multi_label_classification"
    default_metric = "f1_micro"
    stratify = False
    keys = ("task.threshold",)

    def label_parser(self, spec):
        return label_set_parser(spec.label_separator)

    def read_file(self, spec, path, notes=None, with_labels: bool = True, fmt=None):
        examples = super().read_file(spec, path, notes, with_labels, fmt)
        labels = [ex.label for ex in examples if ex.label]
        if with_labels and looks_like_tag_lists(labels) and any("O" in v for v in labels):
            raise DataError([f"{path}, column {self.columns(spec)[2]!r}: the labels are per-word entity tags (e.g. "
                             f"{labels[0][:4]}); multi-label reads one set of labels per row, which would lose each "
                             "tag's word. Tag words with task.type: token-classification (rows with data.tokens_column "
                             "and data.tags_column lists)"])
        return examples

    def label_values(self, example) -> list[str]:
        return example.label

    def label_space(self, train: Sequence, declared) -> LabelSpace:
        from ..data.dataset import build_label_space
        return build_label_space(train, declared, self.label_values, at_least=1)

    def label_tensor(self, examples: Sequence, space: LabelSpace):
        if not examples or examples[0].label is None:
            return None
        ids = space.label2id
        out = torch.zeros(len(examples), len(space.names), dtype=torch.float32)
        for i, ex in enumerate(examples):
            for name in ex.label:
                out[i, ids[name]] = 1.0
        return out

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Summed over labels, then over rows: each row counts once in the normalization by examples.
        return F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")

    def make_metrics(self, num_labels: int, threshold: float = 0.5):
        return MultiLabelMetrics(num_labels, threshold)

    def predicted(self, output: torch.Tensor, space: LabelSpace, recipe) -> dict:
        probs = torch.sigmoid(output)
        return {"labels": [space.names[i] for i in range(len(probs)) if probs[i] > recipe.task.threshold],
                "scores": {space.names[i]: round(float(p), 6) for i, p in enumerate(probs)}}
