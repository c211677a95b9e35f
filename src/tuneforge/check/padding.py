"""The layout check: how rows are laid out in a batch never changes what the model computes for them.

- Packed rows (causal-lm `data.packing`): a packed batch against the same examples unpacked and padded, loss sum
  and gradient (attention must stay within each example: position ids that restart per example).
- Padded rows (every other task, and with `training.group_by_length`, which only changes which rows meet): a
  batch padded to its longest row against the same batch padded further, loss sum and gradient (padding must be
  masked out everywhere).

Computed on the model as the recipe builds it (method, adapters), in eval mode (no dropout masks) and fp32."""
from __future__ import annotations

import torch

from .probes import ProbeDone

LAYOUT_RTOL = 1e-3  # of the largest gradient: the same sums in another layout (see the accumulation check)
ROWS = 8
EXTRA_PADDING = 16
IGNORE = -100


def _loss_and_grads(loop, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model = loop.model
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    loss, _ = loop.task.batch_loss(model, {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                           for k, v in batch.items()})
    loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


def unpacked(batch: dict, pad_id: int) -> dict:
    """The examples of a packed batch (cut where position_ids restart at 0), each its own row, right-padded."""
    rows = []
    for ids, labels, positions in zip(batch["input_ids"], batch["labels"], batch["position_ids"]):
        starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:]):
            if (labels[a:b] != IGNORE).any() or (ids[a:b] != pad_id).any():
                rows.append((ids[a:b], labels[a:b]))
    width = max(len(r[0]) for r in rows)
    out = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
           "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long)}
    for i, (ids, labels) in enumerate(rows):
        out["input_ids"][i, :len(ids)] = ids
        out["attention_mask"][i, :len(ids)] = 1
        out["labels"][i, :len(ids)] = labels
    return out


def padded_further(batch: dict, pad_id: int, extra: int = EXTRA_PADDING) -> dict:
    """The batch with `extra` more padding positions on every row: token tensors [rows, length] are extended with
    pad ids, a zero attention mask, zero token types and ignored labels."""
    if "input_ids" not in batch or batch["input_ids"].dim() != 2:
        return {}
    rows, length = batch["input_ids"].shape
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE}
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == (rows, length) and k in fill:
            out[k] = torch.cat([v, torch.full((rows, extra), fill[k], dtype=v.dtype)], dim=1)
        elif isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == (rows, length):
            return {}  # a per-token tensor this check does not know how to pad: no comparison
        else:
            out[k] = v
    return out


class LayoutProbe:
    """At train start, on the first rows: the packed or padded batch against its other layout; then the run ends."""

    def __init__(self):
        self.kind, self.loss_diff, self.grad_diff, self.grad_scale, self.where, self.rows = None, 0.0, 0.0, 0.0, "", 0

    def on_train_start(self, loop) -> None:
        split = loop.train_split
        batch = split.batch(list(range(min(ROWS, len(split)))), loop.pad_id)
        packed = "position_ids" in batch and bool((batch["position_ids"][:, 1:] == 0).any())
        other = unpacked(batch, loop.pad_id) if packed else padded_further(batch, loop.pad_id)
        if not other:
            raise ProbeDone
        self.kind, self.rows = ("packed" if packed else "padded"), int(batch["input_ids"].shape[0])
        was_training = loop.model.training
        loop.model.eval()
        try:
            (loss_a, grads_a), (loss_b, grads_b) = _loss_and_grads(loop, batch), _loss_and_grads(loop, other)
        finally:
            loop.model.train(was_training)
        self.loss_diff = abs(loss_a - loss_b) / max(abs(loss_b), 1e-12)
        for name, g in grads_b.items():
            diff = float((grads_a[name] - g).abs().max()) if g.numel() else 0.0
            self.grad_scale = max(self.grad_scale, float(g.abs().max()) if g.numel() else 0.0)
            if not diff <= self.grad_diff:
                self.grad_diff, self.where = diff, name
        raise ProbeDone
