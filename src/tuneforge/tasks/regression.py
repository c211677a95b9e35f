"""Regression: one number per row, mean squared error, Pearson / Spearman.

With task.standardize_targets (the default) the model trains on standardized targets while its outputs stay in the
targets' units (tasks/targets.py); the training loss is then the MSE of standardized targets (1.0: predicting the
mean), and evaluation's loss and metrics are in the targets' units."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.dataset import LabelSpace, parse_number
from . import targets as standard
from .metrics import RegressionMetrics
from .sequence import SequenceTask


class RegressionTask(SequenceTask):
    name = "regression"
    problem_type = "regression"
    default_metric = "mse"
    stratify = False
    named_labels = False  # targets are numbers: no label space
    standardize = False   # set from the recipe by `configured`
    scaling: Optional[standard.TargetScaling] = None      # once training starts, when the targets are standardized
    target_stats: Optional[tuple[float, float, int]] = None  # (mean, std, rows) of the training targets
    _standardizer: Optional[standard.Standardizer] = None

    def configured(self, recipe) -> "RegressionTask":
        task = copy.copy(self)  # a run's own: it holds that run's statistics
        task.standardize = recipe.task.standardize_targets
        return task

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

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        loss = self.loss_sum(logits, batch["labels"])
        if self.scaling is not None and not evaluating:
            # The outputs are std * z + mean: this is the MSE of z against (target - mean) / std.
            loss = loss / self.scaling.scale ** 2
        return loss, logits

    def make_metrics(self, num_labels: int, threshold: float = 0.5):
        return RegressionMetrics()

    def predicted(self, output: torch.Tensor, space: LabelSpace, recipe) -> dict:
        return {"score": float(output[0])}

    # ------------------------------------------------------------ the run's targets

    def start_training(self, model, train: Sequence, run_dir: Path, resumed: bool, is_main: bool) -> list[str]:
        targets = [ex.label for ex in train]
        scaling, mean, std, why = standard.fit(model, targets, self.standardize)
        if resumed and self.standardize:
            # The checkpoint's head was trained under the statistics the run started with: those, not today's data's.
            scaling = standard.read_stored(run_dir)
            if scaling is None:
                why = f"the run being resumed kept no {standard.FILE} (it trained on the targets as they are)"
        elif scaling is not None and is_main:
            standard.store(run_dir, scaling)
        self.target_stats = (mean, std, len(targets)) if scaling is None else (scaling.mean, scaling.std, scaling.rows)
        self.scaling = scaling
        standard.set_config(model, scaling)
        if scaling is not None:
            self._standardizer = standard.Standardizer(scaling, model.get_submodule(scaling.layer))
            self._standardizer.install()
        return standard.report_line(scaling, why)

    def saving(self, model, state: Optional[dict] = None):
        if self._standardizer is None:
            return contextlib.nullcontext()
        return self._standardizer.folded_for_saving(state)

    def run_summary(self, metrics: dict) -> dict:
        if self.target_stats is None:
            return {}
        mean, std, rows = self.target_stats
        entry = {"standardized": self.scaling is not None, "mean": mean, "std": std, "rows": rows}
        if self.scaling is not None:
            entry.update(shift=self.scaling.shift, scale=self.scaling.scale, layer=self.scaling.layer)
        warning = standard.collapse_warning(metrics, mean, std, self.scaling is not None)
        return {"targets": entry, **({"warnings": [warning]} if warning else {})}
