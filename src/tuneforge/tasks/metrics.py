"""Metrics reduced batch by batch: nothing holds all logits of a large evaluation set.

Classification keeps a confusion matrix; multi-label keeps per-label counts; regression keeps running sums
(plus one float pair per example for Spearman's rank correlation, which needs ranks of the whole set).
`merge(other)` adds another shard's counts: how several processes' evaluations become one.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..objectives.tokens import align_to_labels  # noqa: F401  (metrics read logits aligned to labels)


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)


class ClassificationMetrics:
    def __init__(self, num_classes: int):
        self.k = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)  # rows: truth, cols: predicted

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred = logits.argmax(-1).cpu().numpy()
        true = labels.cpu().numpy()
        np.add.at(self.confusion, (true, pred), 1)

    def merge(self, other: "ClassificationMetrics") -> None:
        self.confusion += other.confusion

    def compute(self) -> dict[str, float]:
        c = self.confusion.astype(np.float64)
        n = c.sum()
        tp = np.diag(c)
        support, predicted = c.sum(1), c.sum(0)
        precision = _safe_div(tp, predicted)
        recall = _safe_div(tp, support)
        f1 = _safe_div(2 * precision * recall, precision + recall)
        present = (support + predicted) > 0  # labels neither present nor predicted do not dilute macro scores
        accuracy = tp.sum() / n if n else 0.0
        # Multi-class Matthews correlation (Gorodkin's R_K), which equals the binary MCC for two classes.
        cov_tp = tp.sum() * n - (support * predicted).sum()
        denom = math.sqrt(max(n * n - (predicted ** 2).sum(), 0.0)) * math.sqrt(max(n * n - (support ** 2).sum(), 0.0))
        out = {
            "accuracy": float(accuracy),
            "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
            "f1_micro": float(accuracy),  # single-label: micro P = micro R = micro F1 = accuracy
            "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
            "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
            "mcc": float(cov_tp / denom) if denom else 0.0,
        }
        if self.k == 2:  # binary: the positive class is id 1
            out.update(f1=float(f1[1]), precision=float(precision[1]), recall=float(recall[1]))
        return out


class MultiLabelMetrics:
    def __init__(self, num_labels: int, threshold: float = 0.5):
        self.threshold = threshold
        self.tp = np.zeros(num_labels)
        self.fp = np.zeros(num_labels)
        self.fn = np.zeros(num_labels)
        self.tn = np.zeros(num_labels)
        self.exact = 0
        self.n = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        pred = (torch.sigmoid(logits.float()) > self.threshold).cpu().numpy()
        true = labels.cpu().numpy() > 0.5
        self.tp += (pred & true).sum(0)
        self.fp += (pred & ~true).sum(0)
        self.fn += (~pred & true).sum(0)
        self.tn += (~pred & ~true).sum(0)
        self.exact += int((pred == true).all(1).sum())
        self.n += len(true)

    def merge(self, other: "MultiLabelMetrics") -> None:
        for name in ("tp", "fp", "fn", "tn", "exact", "n"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def compute(self) -> dict[str, float]:
        precision = _safe_div(self.tp, self.tp + self.fp)
        recall = _safe_div(self.tp, self.tp + self.fn)
        f1 = _safe_div(2 * precision * recall, precision + recall)
        tp, fp, fn, tn = self.tp.sum(), self.fp.sum(), self.fn.sum(), self.tn.sum()
        mp = tp / (tp + fp) if tp + fp else 0.0
        mr = tp / (tp + fn) if tp + fn else 0.0
        denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return {
            "accuracy": self.exact / self.n if self.n else 0.0,  # exact match (subset accuracy)
            "f1_macro": float(f1.mean()),
            "f1_micro": float(2 * mp * mr / (mp + mr)) if mp + mr else 0.0,
            "precision_micro": float(mp),
            "recall_micro": float(mr),
            "mcc": float((tp * tn - fp * fn) / denom) if denom else 0.0,  # over all (row, label) decisions
        }


class RegressionMetrics:
    def __init__(self):
        self.n = 0
        self.sums = np.zeros(6)  # x, y, xx, yy, xy, |x-y|
        self.sq_err = 0.0
        self.pairs: list[np.ndarray] = []

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        x = logits.float().reshape(-1).cpu().double().numpy()
        y = labels.float().reshape(-1).cpu().double().numpy()
        self.n += len(x)
        self.sums += [x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum(), np.abs(x - y).sum()]
        self.sq_err += float(((x - y) ** 2).sum())
        self.pairs.append(np.stack([x, y], 1).astype(np.float32))

    def merge(self, other: "RegressionMetrics") -> None:
        self.n += other.n
        self.sums = self.sums + other.sums
        self.sq_err += other.sq_err
        self.pairs.extend(other.pairs)

    def compute(self) -> dict[str, float]:
        from scipy.stats import spearmanr

        n = self.n
        if n == 0:
            return {"mse": 0.0, "mae": 0.0, "pearson": 0.0, "spearman": 0.0, "pred_mean": 0.0, "pred_std": 0.0}
        sx, sy, sxx, syy, sxy, sabs = self.sums
        cov = sxy - sx * sy / n
        vx, vy = sxx - sx * sx / n, syy - sy * sy / n
        pearson = cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0
        xy = np.concatenate(self.pairs)
        spearman = float(spearmanr(xy[:, 0], xy[:, 1]).statistic) if n > 1 and vx > 0 and vy > 0 else 0.0
        # The predictions' own mean and spread: a model that predicts about one value shows it here first.
        return {"mse": self.sq_err / n, "mae": float(sabs / n), "pearson": float(pearson),
                "spearman": 0.0 if math.isnan(spearman) else spearman, "pred_mean": float(sx / n),
                "pred_std": math.sqrt(max(vx, 0.0) / n)}


class CausalLMMetrics:
    """Per-token loss over target positions (labels other than -100), its perplexity, and token accuracy (the
    share of targets the model ranks first). Logits at position t predict the token at t + 1 (causal), or the
    token at t itself (masked LM: `shift=False`)."""

    def __init__(self, shift: bool = True):
        self.loss_sum, self.tokens, self.correct, self.shift = 0.0, 0, 0, shift

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.dim() == 3:  # (a masked LM's are 2-D already: logits at its chosen positions only, in order)
            logits = align_to_labels(logits, labels)
            if self.shift:
                logits, labels = logits[:, :-1], labels[:, 1:]
        keep = labels != -100
        if not keep.any():
            return
        chosen, targets = (logits if logits.dim() == 2 else logits[keep]).float(), labels[keep]
        self.loss_sum += float(torch.nn.functional.cross_entropy(chosen, targets, reduction="sum"))
        self.tokens += int(keep.sum())
        self.correct += int((chosen.argmax(-1) == targets).sum())

    def merge(self, other: "CausalLMMetrics") -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens
        self.correct += other.correct

    def compute(self) -> dict[str, float]:
        if not self.tokens:  # nothing was scored: no number can stand for it (never a perfect 1.0)
            return {"perplexity": float("nan"), "token_accuracy": float("nan"), "target_tokens": 0.0}
        return {"perplexity": math.exp(min(self.loss_sum / self.tokens, 700.0)), "token_accuracy": self.correct / self.tokens,
                "target_tokens": float(self.tokens)}
