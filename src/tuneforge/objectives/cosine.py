"""COSINE self-training (Yu et al., NAACL 2021, "Fine-Tuning Pre-trained Language Model with Weak Supervision: A
Contrastive-Regularized Self-Training Approach"), term by term as the paper writes it.

Every few steps the current model labels every row (the teacher's predictions f); then, per batch:
- soft pseudo-labels, sharpened and balanced across classes:   y~_ij = (f_ij^2 / F_j) / sum_j' (f_ij'^2 / F_j'),
  F_j = sum_i f_ij over all rows labelled;
- confidence of a pseudo-label:                                  w_i = 1 - H(y~_i) / log C;
- only confident rows train:                                      selected = { i : w_i > xi };
- classification loss on them:       L_c = 1/|sel| sum_{i in sel} w_i KL(y~_i || f(x_i));
- contrastive regularizer on their encoder features v:
      R_1 = 1/|sel|^2 sum_{i,j in sel} W_ij d_ij^2 + (1 - W_ij) max(0, gamma - d_ij)^2,
      W_ij = 1 when the pseudo-labels' argmax agree, d_ij = ||v_i - v_j||^2 / dim (scaled Euclidean distance);
- confidence regularizer, against over-confident predictions:   R_2 = 1/|sel| sum_{i in sel} KL(u || f(x_i)), u uniform;
- total: L_c + lambda_1 R_1 + lambda_2 R_2.
The paper sums R_1 over pairs; the mean over pairs keeps its weight independent of the batch size.
"""
from __future__ import annotations

import math

import torch


def sharpen(probs: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Soft pseudo-labels from predicted probabilities (n, C): raised to `power`, divided by each class's soft
    frequency over the rows given (so a class the model over-predicts is damped), renormalized per row."""
    frequency = probs.sum(0).clamp_min(1e-12)
    scores = probs.pow(power) / frequency
    return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)


def confidence(targets: torch.Tensor) -> torch.Tensor:
    """w = 1 - H(y)/log C: 1 for a one-hot pseudo-label, 0 for the uniform one."""
    classes = targets.shape[-1]
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(-1)
    return 1.0 - entropy / math.log(classes)


def classification_loss(log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                        selected: torch.Tensor) -> torch.Tensor:
    """L_c: the confidence-weighted KL(target || prediction), averaged over the selected rows (0 when none)."""
    if not selected.any():
        return log_probs.sum() * 0.0
    t, lp = targets[selected], log_probs[selected]
    kl = (t * (t.clamp_min(1e-12).log() - lp)).sum(-1)
    return (weights[selected] * kl).mean()


def scaled_distances(features: torch.Tensor) -> torch.Tensor:
    """d_ij = ||v_i - v_j||^2 / dim, for every pair of rows."""
    diff = features.unsqueeze(1) - features.unsqueeze(0)
    return diff.pow(2).sum(-1) / features.shape[-1]


def contrastive_regularizer(features: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor,
                            margin: float = 1.0) -> torch.Tensor:
    """R_1 over every ordered pair of selected rows: rows with the same pseudo-label are pulled together, rows with
    different ones pushed at least `margin` apart."""
    if selected.sum() < 2:
        return features.sum() * 0.0
    v, classes = features[selected].float(), targets[selected].argmax(-1)
    same = (classes.unsqueeze(1) == classes.unsqueeze(0)).float()
    d = scaled_distances(v)
    pair_loss = same * d.pow(2) + (1 - same) * (margin - d).clamp_min(0).pow(2)
    return pair_loss.mean()


def confidence_regularizer(log_probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """R_2 = mean over selected rows of KL(u || f(x)) = -log C - mean_j log f_j(x)."""
    if not selected.any():
        return log_probs.sum() * 0.0
    lp = log_probs[selected]
    return (-math.log(lp.shape[-1]) - lp.mean(-1)).mean()


def cosine_loss(logits: torch.Tensor, features: torch.Tensor, targets: torch.Tensor, threshold: float,
                contrastive_weight: float, margin: float, confidence_weight: float) -> dict[str, torch.Tensor]:
    """The COSINE objective of one batch from the student's logits and features and the teacher's pseudo-labels
    `targets`; returns the total and each term (for logging)."""
    log_probs = torch.log_softmax(logits.float(), -1)
    weights = confidence(targets)
    selected = weights > threshold
    terms = {"classification": classification_loss(log_probs, targets, weights, selected),
             "contrastive": contrastive_regularizer(features, targets, selected, margin) if contrastive_weight
             else log_probs.sum() * 0.0,
             "confidence": confidence_regularizer(log_probs, selected)}
    total = terms["classification"] + contrastive_weight * terms["contrastive"] + confidence_weight * terms["confidence"]
    return {"loss": total, **terms, "selected": selected.sum()}
