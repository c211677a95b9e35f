"""Positions of logits against labels."""
from __future__ import annotations

import torch


def align_to_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Prompt tuning puts its virtual tokens before the input, so the output has that many positions more than
    the labels: the last positions are the input's."""
    return logits[:, -labels.shape[1]:] if logits.shape[1] > labels.shape[1] else logits
