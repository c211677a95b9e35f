"""Tasks: what the data looks like, which head, which loss and metrics.

One entry per task in TASKS. A task's `batch_loss(model, batch)` returns the loss *summed* over the batch's
examples (causal LM: target tokens; preference: pairs) and what its metrics read; the loop divides by the
count of the whole accumulated step, so accumulating 4x8 equals one batch of 32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .metrics import CausalLMMetrics, align_to_labels, ClassificationMetrics, MultiLabelMetrics, RegressionMetrics
from .grpo import GRPOTask
from .preference import PreferenceTask, RewardModelTask


@dataclass(frozen=True)
class Task:
    name: str
    problem_type: str  # the transformers config value, so pipelines post-process correctly
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_metrics: Callable[[int, float], object]
    default_metric: str

    def num_outputs(self, num_labels: int) -> int:
        return 1 if self.problem_type == "regression" else num_labels

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        """(loss summed over the batch, what the metrics read: the logits)."""
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return self.loss_sum(logits, batch["labels"]), logits


def _ce_sum(logits, labels):
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def _bce_sum(logits, labels):
    # Summed over labels, then over rows: each row counts once in the normalization by examples.
    return F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")


def _mse_sum(logits, labels):
    return F.mse_loss(logits.float().reshape(-1), labels.reshape(-1), reduction="sum")


def _next_token_ce_sum(logits, labels):
    # Position t predicts token t + 1; -100 marks positions without loss (prompt, user turns, padding).
    logits = align_to_labels(logits, labels)
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                           reduction="sum")


def _masked_token_ce_sum(logits, labels):
    # Masked LM: the logits at a chosen position predict the token that was there; -100 elsewhere.
    logits = align_to_labels(logits, labels)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")


@dataclass(frozen=True)
class MaskedLMTask(Task):
    """Masked LM, computing vocabulary logits at the chosen positions only (about 15% of them): the output
    layer over a 30k-word vocabulary costs as much as a small encoder, and the other positions have no loss."""

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        labels = batch["labels"]
        chosen = labels != -100
        decoder = model.get_output_embeddings()
        # The output layer's input, (batch, positions, width), cut to the chosen positions before the projection.
        handle = decoder.register_forward_pre_hook(lambda module, args: (args[0][chosen],))
        try:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        finally:
            handle.remove()
        return F.cross_entropy(logits.float(), labels[chosen], reduction="sum"), logits


_LOWER_IS_BETTER = {"loss", "mse", "mae", "perplexity", "kl"}


def higher_is_better(metric: str) -> bool:
    return metric not in _LOWER_IS_BETTER


_classification = Task(
    name="classification", problem_type="single_label_classification", loss_sum=_ce_sum,
    make_metrics=lambda k, t: ClassificationMetrics(k), default_metric="accuracy",
)

TASKS: dict[str, Task] = {
    "classification": _classification,
    "pair-classification": _classification,
    "image-classification": _classification,
    "multi-label": Task(
        name="multi-label", problem_type="multi_label_classification", loss_sum=_bce_sum,
        make_metrics=lambda k, t: MultiLabelMetrics(k, t), default_metric="f1_micro",
    ),
    "causal-lm": Task(
        name="causal-lm", problem_type="causal_lm", loss_sum=_next_token_ce_sum,
        make_metrics=lambda k, t: CausalLMMetrics(), default_metric="loss",
    ),
    "masked-lm": MaskedLMTask(
        name="masked-lm", problem_type="masked_lm", loss_sum=_masked_token_ce_sum,
        make_metrics=lambda k, t: CausalLMMetrics(shift=False), default_metric="loss",
    ),
    "regression": Task(
        name="regression", problem_type="regression", loss_sum=_mse_sum,
        make_metrics=lambda k, t: RegressionMetrics(), default_metric="mse",
    ),
    "reward-model": RewardModelTask(),
    "preference": PreferenceTask(),  # configured from the recipe by `task_for`
    "grpo": GRPOTask(),              # likewise
}


def get_task(name: str):
    return TASKS[name]


def task_for(recipe):
    """The recipe's task; a preference or GRPO task with the recipe's settings (reference, reward and tokenizer
    are set later, once the model exists)."""
    t = recipe.task
    if t.type == "grpo":
        return GRPOTask(num_generations=t.num_generations, max_new_tokens=t.max_new_tokens, temperature=t.temperature,
                        beta=t.preference_beta)
    if t.type != "preference":
        return get_task(t.type)
    return PreferenceTask(loss=t.loss, beta=t.preference_beta, label_smoothing=t.label_smoothing, gamma=t.gamma)
