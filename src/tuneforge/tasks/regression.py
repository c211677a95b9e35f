"""Regression: one number per row, mean squared error, Pearson / Spearman."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.dataset import LabelSpace, parse_number
from .metrics import RegressionMetrics
from .sequence import SequenceTask


class RegressionTask(SequenceTask):
    name = "regression"
    problem_type = "regression"
    default_metric = "mse"
    stratify = False
    named_labels = False  # targets are numbers: no label space

    def label_parser(self, spec):
        return parse_number

    def label_tensor(self, examples: Sequence, space: LabelSpace) -> Optional[torch.Tensor]:
        if not examples or examples[0].label is None:
            return None
        return torch.tensor([ex.label for ex in examples], dtype=torch.float32)

    def num_outputs(self, num_labels: int) -> int:
        return 1

    def saved_labels(self, names: list[str]) -> list[str]:
        return []

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().reshape(-1), labels.reshape(-1), reduction="sum")

    def make_metrics(self, num_labels: int, threshold: float = 0.5):
        return RegressionMetrics()

    def predicted(self, output: torch.Tensor, space: LabelSpace, recipe) -> dict:
        return {"score": float(output[0])}
