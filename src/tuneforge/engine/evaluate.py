"""Evaluation reduced batch by batch; batches sorted by length so little is spent on padding."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ..data.collate import EncodedSplit
from ..tasks.metrics import align_to_labels


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def run_evaluation(model, split: EncodedSplit, task, num_labels: int, threshold: float, batch_size: int,
                   pad_id: int, precision: str = "fp32") -> dict[str, float]:
    was_training = model.training
    model.eval()
    metrics = task.make_metrics(num_labels, threshold)
    lengths = split.lengths
    order = sorted(range(len(split)), key=lambda i: lengths[i])
    loss_sum, n = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = split.batch(order[start:start + batch_size], pad_id)
        with autocast(precision):
            batch_loss, outputs = task.batch_loss(model, batch, evaluating=True)
        loss_sum += float(batch_loss)
        n += split.count(order[start:start + batch_size])
        metrics.update(outputs.float() if isinstance(outputs, torch.Tensor) else outputs, batch.get("labels"))
    model.train(was_training)
    return {"loss": loss_sum / max(n, 1), **metrics.compute()}


@torch.no_grad()
def run_prediction(model, split: EncodedSplit, batch_size: int, pad_id: int, precision: str = "fp32") -> torch.Tensor:
    """Logits for every row, in the split's order."""
    model.eval()
    lengths = split.lengths
    order = sorted(range(len(split)), key=lambda i: lengths[i])
    out = [None] * len(split)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = split.batch(idx, pad_id)
        with autocast(precision):
            logits = model(**model_inputs(batch)).logits.float()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return torch.stack(out) if out else torch.empty(0)


@torch.no_grad()
def run_target_logits(model, split, batch_size: int, pad_id: int) -> torch.Tensor:
    """A causal LM's logits at the positions that predict target tokens, all rows concatenated: what a merged
    model must reproduce (a vocabulary-wide row per target, not per position, so memory stays small)."""
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        batch = split.batch(list(range(start, min(start + batch_size, len(split)))), pad_id)
        logits = align_to_labels(model(**model_inputs(batch)).logits.float(), batch["labels"])
        out.append(logits[:, :-1][batch["labels"][:, 1:] != -100])
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def run_pair_rewards(model, split, batch_size: int, pad_id: int) -> torch.Tensor:
    """A reward model's scores of every pair's chosen and rejected inputs (n x 2)."""
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        batch = split.batch(list(range(start, min(start + batch_size, len(split)))), pad_id)
        rewards = model(**model_inputs(batch)).logits.float().squeeze(-1)
        out.append(torch.stack(rewards.chunk(2), 1))
    return torch.cat(out) if out else torch.empty(0, 2)
