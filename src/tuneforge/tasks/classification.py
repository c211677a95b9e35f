"""Single-label classification of a text: one class per row, cross-entropy, accuracy / F1 / MCC."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.dataset import parse_class_label
from .metrics import ClassificationMetrics
from .sequence import SequenceTask


class ClassificationTask(SequenceTask):
    name = "classification"
    problem_type = "single_label_classification"
    default_metric = "accuracy"
    distillable = True
    weakly_supervised = True
    transfer_set = True

    def label_parser(self, spec):
        return parse_class_label

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Soft targets (weak supervision's label-model probabilities) are a float matrix; F.cross_entropy takes both.
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    def make_metrics(self, num_labels: int, threshold: float = 0.5):
        return ClassificationMetrics(num_labels)
