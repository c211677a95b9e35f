"""COSINE self-training as a second stage of a weak-supervision run: the ordinary loop, with a task whose loss is
the COSINE objective (objectives/cosine.py) and a callback that refreshes the pseudo-labels of every row, labelled
or not, with the current model every `update_every` steps (the paper's teacher update period T3)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.collate import EncodedSplit, collate
from ..engine.evaluate import model_inputs
from ..objectives.cosine import confidence, cosine_loss, sharpen
from ..tasks.metrics import ClassificationMetrics


@dataclass
class PseudoLabelSplit:
    """Every row of self-training, tokenized; each batch carries the rows' current pseudo-labels as `labels`."""
    rows: EncodedSplit
    targets: torch.Tensor  # (n, C): the teacher's predicted probabilities, replaced at each refresh
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        return self.rows.lengths

    def count(self, indices: Sequence[int], augment=None) -> int:
        return len(indices)

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict:
        batch = collate(self.rows, indices, pad_id)
        batch["labels"] = self.targets[torch.as_tensor(list(indices), dtype=torch.long)]
        return batch


def sentence_features(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The encoder's representation of each row: the first token's ([CLS]) for encoders, the last real token's for
    decoders (whose classification head reads that one)."""
    if pooling == "cls":
        return hidden[:, 0]
    last = attention_mask.sum(1) - 1
    return hidden[torch.arange(hidden.shape[0]), last]


@dataclass
class CosineTask:
    """Training batches: the COSINE loss against the teacher's predictions of the batch's rows. Evaluation: plain
    cross-entropy against gold labels, like the classification task."""
    threshold: float = 0.6
    contrastive_weight: float = 1.0
    margin: float = 1.0
    confidence_weight: float = 0.1
    pooling: str = "cls"
    power: float = 2.0
    confidence_from: str = "prediction"
    pairs: str = "permutation"
    distance: str = "rms"
    agreement: str = "prediction"
    frequency: Optional[torch.Tensor] = None  # the classes' soft frequencies over every row (balance "all")
    name: str = "classification"
    problem_type: str = "single_label_classification"
    default_metric: str = "accuracy"
    last_terms: dict = field(default_factory=dict)

    def make_metrics(self, k: int, threshold: float):
        return ClassificationMetrics(k)

    def metrics_for(self, split, k: int, threshold: float):
        return ClassificationMetrics(k)

    def num_outputs(self, num_labels: int) -> int:
        return num_labels

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        inputs = model_inputs(batch)
        if evaluating:
            logits = model(**inputs).logits
            return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), logits
        want_features = self.contrastive_weight > 0
        out = model(**inputs, output_hidden_states=want_features)
        features = sentence_features(out.hidden_states[-1], batch["attention_mask"], self.pooling) if want_features \
            else out.logits
        frequency = None if self.frequency is None else self.frequency.to(out.logits.device)
        terms = cosine_loss(out.logits, features, batch["labels"], self.threshold, self.contrastive_weight,
                            self.margin, self.confidence_weight, self.power, frequency, self.confidence_from,
                            self.pairs, self.distance, self.agreement)
        self.last_terms = {k: v.detach() for k, v in terms.items()}  # tensors: read back only when looked at
        # The loop divides by the batch's rows; the COSINE terms are means already.
        return terms["loss"] * len(batch["labels"]), out.logits


@torch.no_grad()
def predict_probs(model, split: EncodedSplit, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
    """Class probabilities of every row, in the split's order (model in eval mode: the teacher has no dropout)."""
    was_training = model.training
    model.eval()
    lengths = split.lengths
    order = sorted(range(len(split)), key=lambda i: lengths[i])
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        with runtime.autocast():
            probs = model(**model_inputs(runtime.to_device(collate(split, idx, pad_id)))).logits.float().softmax(-1).cpu()
        if out is None:
            out = torch.empty(len(split), probs.shape[-1])
        out[torch.as_tensor(idx)] = probs
    model.train(was_training)
    return out


class RefreshPseudoLabels:
    """Every `every` steps (and before the first), the current model (the teacher) predicts every row; those
    probabilities are the targets until the next refresh (sharpened per batch, or over every row with balance
    "all"). Records how many rows pass the confidence threshold and, where gold labels of training rows are known,
    how often the pseudo-labels are right (sharpened over every row: per batch they vary with the batch)."""

    def __init__(self, split: PseudoLabelSplit, task: CosineTask, every: int, balance: str, batch_size: int,
                 pad_id: int, runtime, gold: Optional[np.ndarray] = None):
        self.split, self.task, self.every, self.balance = split, task, every, balance
        self.batch_size, self.pad_id, self.runtime, self.gold = batch_size, pad_id, runtime, gold
        self.history: list[dict] = []

    def refresh(self, loop) -> None:
        # The training modes first: they build the frozen-prefix cache, which the first refresh (before the loop's
        # first epoch) would otherwise miss, computing the frozen blocks over every row once more.
        loop.set_train_mode()
        probs = predict_probs(loop.model, self.split.rows, self.batch_size, self.pad_id, self.runtime)
        self.split.targets = probs
        frequency = probs.sum(0)
        self.task.frequency = frequency if self.balance == "all" else None
        targets = sharpen(probs, self.task.power, frequency)
        scored = probs if self.task.confidence_from == "prediction" else targets
        confident = confidence(scored) > self.task.threshold
        record = {"step": loop.state.global_step, "confident": round(float(confident.float().mean()), 4)}
        if self.gold is not None:
            known = torch.as_tensor(self.gold >= 0)
            gold = torch.as_tensor(self.gold)
            hard = targets.argmax(-1)
            if known.any():
                record["pseudo_label_accuracy"] = round(float((hard[known] == gold[known]).float().mean()), 4)
            kept = known & confident
            if kept.any():
                record["confident_accuracy"] = round(float((hard[kept] == gold[kept]).float().mean()), 4)
        self.history.append(record)
        loop.set_train_mode()

    def on_train_start(self, loop):
        self.refresh(loop)

    def on_step_end(self, loop):
        s = loop.state
        if s.global_step % self.every == 0 and s.global_step < loop.total_steps:
            self.refresh(loop)


def self_training_schedule(rows: int, steps: int, cfg, warmup_steps: int = 0):
    """The run's training settings for self-training: `steps` optimizer steps over `rows` rows, `warmup_steps` of
    warm-up, no early stopping (the paper trains for a fixed T2 steps; the best validation step is kept)."""
    per_epoch = math.ceil(math.ceil(rows / cfg.batch_size) / cfg.grad_accum)
    return cfg.model_copy(update={"epochs": max(1, math.ceil(steps / per_epoch)), "max_steps": steps,
                                  "early_stopping": None, "warmup_steps": warmup_steps})


def run_self_training(*, recipe, model, rows: EncodedSplit, validation, pooling: str, optimizer, set_train_mode,
                      saved_names, run_dir, num_labels: int, pad_id: int, data_seed: int, console, callbacks: list,
                      gold: Optional[np.ndarray] = None, best_so_far: Optional[float] = None, runtime=None):
    """Stage two of a weak-supervision run, on `rows` (every training row, labelled or not), through the loop every
    training uses (training.prepare_loop). `best_so_far`: the first stage's best validation metric, which a step
    must beat to be kept. Returns (loop state, the pseudo-label refresh history, the path of the best weights, or
    None when no step beat `best_so_far`)."""
    from ..engine.loop import LoopState
    from ..engine.runtime import CPU
    from ..training import best_weights, prepare_loop

    st, t = recipe.weak.self_training, recipe.training
    runtime = runtime or CPU
    cfg = self_training_schedule(len(rows), st.steps, t, st.warmup_steps)
    split = PseudoLabelSplit(rows, torch.zeros(len(rows), num_labels), rows.truncated)
    task = CosineTask(st.threshold, st.contrastive_weight, st.margin, st.confidence_weight, pooling, st.power,
                      st.confidence_from, st.pairs, st.distance, st.agreement)
    refresh = RefreshPseudoLabels(split, task, st.update_every, st.balance, t.eval_batch_size, pad_id, runtime, gold)
    best_path = best_weights(run_dir)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)  # from an interrupted earlier attempt: this stage starts over
    runtime.barrier()
    loop = prepare_loop(model=model, optimizer=optimizer, task=task, train=split, validation=validation, cfg=cfg,
                        run_dir=run_dir, runtime=runtime, console=console, num_labels=num_labels, threshold=0.5,
                        pad_id=pad_id, data_seed=data_seed, saved_names=saved_names, set_train_mode=set_train_mode,
                        first=[refresh], callbacks=callbacks, checkpoints=False)
    loop.state = LoopState(best_metric=best_so_far)
    # Self-training writes no checkpoints: a resumed run finishes the first stage from its checkpoint, then runs
    # this stage again from its start. Seeding dropout here makes that rerun the same as an uninterrupted one.
    torch.manual_seed(t.seed + 1 + runtime.rank)
    loop.run()
    kept = runtime.gather(best_path.exists())[0]  # rank 0's disk decides for every rank
    return loop.state, refresh.history, best_path if kept else None
