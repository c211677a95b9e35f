"""Evaluation reduced batch by batch; batches sorted by length so little is spent on padding.

In several processes each rank evaluates every world-size-th batch and the metrics' counts and sums are
combined (`merge`), never the logits: the result is the one a single process computes."""
from __future__ import annotations

from typing import Optional

import torch

from ..data.split import Split
from ..objectives.tokens import align_to_labels
from .parallel import padding, shard
from .runtime import CPU, Runtime, device_of


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def length_batches(split, batch_size: int) -> list[list[int]]:
    """The split's rows in batches of similar length (shortest first)."""
    lengths = split.lengths
    order = sorted(range(len(split)), key=lambda i: lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def run_evaluation(model, split: Split, task, num_labels: int, threshold: float, batch_size: int,
                   pad_id: int, runtime: Runtime = CPU) -> dict[str, float]:
    was_training = model.training
    model.eval()
    metrics = task.metrics_for(split, num_labels, threshold)
    loss_sum = torch.zeros((), dtype=torch.float64, device=runtime.device)
    n = 0
    batches = length_batches(split, batch_size)
    mine = shard(batches, runtime)
    if runtime.fsdp:  # every forward of a sharded model gathers weights with all ranks: as many forwards on each
        for _ in range(padding(len(mine), len(batches), runtime)):
            with runtime.autocast():
                task.batch_loss(model, runtime.to_device(split.batch(batches[0], pad_id)), evaluating=True)
    for indices in mine:
        batch = runtime.to_device(split.batch(indices, pad_id))
        with runtime.autocast():
            batch_loss, outputs = task.batch_loss(model, batch, evaluating=True)
        loss_sum += batch_loss.detach().double()
        n += split.count(indices)
        metrics.update(outputs.float() if isinstance(outputs, torch.Tensor) else outputs, batch.get("labels"))
    model.train(was_training)
    loss_sum, n = float(loss_sum), n
    if runtime.distributed:  # each rank's counts and sums, combined in rank order on every rank
        parts = runtime.gather((metrics, loss_sum, n))
        metrics = parts[0][0]
        for other, _, _ in parts[1:]:
            metrics.merge(other)
        loss_sum, n = sum(p[1] for p in parts), sum(p[2] for p in parts)
    return {"loss": loss_sum / max(n, 1), **metrics.compute()}


@torch.no_grad()
def run_prediction(model, split: Split, batch_size: int, pad_id: int,
                   runtime: Optional[Runtime] = None) -> torch.Tensor:
    """Logits for every row, in the split's order (on the CPU; computed on the runtime's device, by default the
    model's, in fp32)."""
    runtime = _runtime(runtime, model)
    model.eval()
    out = [None] * len(split)
    for idx in length_batches(split, batch_size):
        batch = runtime.to_device(split.batch(idx, pad_id))
        with runtime.autocast():
            logits = model(**model_inputs(batch)).logits.float().cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return torch.stack(out) if out else torch.empty(0)


def _runtime(runtime: Optional[Runtime], model) -> Runtime:
    return runtime if runtime is not None else Runtime(device_of(model))


@torch.no_grad()
def run_target_logits(model, split, batch_size: int, pad_id: int) -> torch.Tensor:
    """A causal LM's logits at the positions that predict target tokens, all rows concatenated: what a merged
    model must reproduce (a vocabulary-wide row per target, not per position, so memory stays small)."""
    model.eval()
    runtime = _runtime(None, model)
    out = []
    for start in range(0, len(split), batch_size):
        batch = runtime.to_device(split.batch(list(range(start, min(start + batch_size, len(split)))), pad_id))
        logits = align_to_labels(model(**model_inputs(batch)).logits.float(), batch["labels"])
        out.append(logits[:, :-1][batch["labels"][:, 1:] != -100].cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def run_pair_rewards(model, split, batch_size: int, pad_id: int) -> torch.Tensor:
    """A reward model's scores of every pair's chosen and rejected inputs (n x 2)."""
    model.eval()
    runtime = _runtime(None, model)
    out = []
    for start in range(0, len(split), batch_size):
        batch = runtime.to_device(split.batch(list(range(start, min(start + batch_size, len(split)))), pad_id))
        rewards = model(**model_inputs(batch)).logits.float().squeeze(-1).cpu()
        out.append(torch.stack(rewards.chunk(2), 1))
    return torch.cat(out) if out else torch.empty(0, 2)
