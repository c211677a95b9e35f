"""COSINE self-training (Yu et al., NAACL 2021, "Fine-Tuning Pre-trained Language Model with Weak Supervision: A
Contrastive-Regularized Self-Training Approach"), term by term, as the authors' released code computes it
(github.com/yueyu1030/COSINE, trainer.py and utils.py), with the paper's wording kept where the two differ as
options.

Every few steps the current model labels every row: the teacher's predicted probabilities p. Then, per batch:
- soft pseudo-labels, sharpened and balanced across classes:   y~_ij = (p_ij^2 / F_j) / sum_j' (p_ij'^2 / F_j'),
  F_j = sum_i p_ij over the batch (the authors; `balance="all"`: over every row labelled at the refresh);
- confidence of a row:           w_i = 1 - H(p_i) / log C, of the teacher's prediction (the authors;
  `confidence_from="pseudo_label"`: of y~_i, which sharpening makes more confident);
- only confident rows train:     selected = { i : w_i > xi };
- classification loss:           L_c = 1/|sel| sum_{i in sel} w_i KL(y~_i || f(x_i));
- contrastive regularizer on the encoder features v of the selected rows, W_ij = 1 when rows i and j are of the
  same class (the student's predicted class, as the authors; `agreement="pseudo_label"`: the pseudo-labels'):
      pairs (i, pi(i)) for one random permutation pi of the selected rows (the authors; `pairs="all"`: every
      ordered pair), with d_ij = sqrt(||v_i - v_j||^2 / dim) (the authors' default; `distance="squared"`: the
      paper's d_ij = ||v_i - v_j||^2 / dim; `distance="cosine"`: 1 - cos(v_i, v_j), the authors' AGNews script) and
      R_1 = 1/(2 |pairs|) sum W_ij d_ij^2 + (1 - W_ij) max(0, gamma - d_ij)^2.
  The features are the student's, so R_1 trains the encoder; the released code takes the teacher's, whose
  parameters are frozen, which makes its R_1 a constant (`contrastive_weight` 0 is that objective);
- confidence regularizer:        R_2 = 1/|sel| sum_{i in sel} KL(u || f(x_i)), u uniform (the paper). The authors'
  code sums -log f over the classes, C times this: lambda_2 C here reproduces it. At that weight the student's
  best answer to a one-hot pseudo-label of weight 1 is f = (1 + lambda_2) / (1 + C lambda_2) on its class,
  whose confidence (0.37 for C = 6, lambda_2 = 0.1) is below the threshold: each refresh selects fewer rows
  until none trains (measured on TREC: no row confident after the first refresh);
- total: L_c + lambda_1 R_1 + lambda_2 R_2.
The authors sum L_c and R_2 over the batch; the means here keep the weights independent of the batch size.
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def sharpen(probs: torch.Tensor, power: float = 2.0, frequency: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Soft pseudo-labels from predicted probabilities (n, C): raised to `power`, divided by each class's soft
    frequency F (by default over the rows given; pass `frequency` for F over a larger set), renormalized per row:
    a class the model over-predicts is damped."""
    frequency = probs.sum(0) if frequency is None else frequency
    scores = probs.pow(power) / frequency.clamp_min(1e-12)
    return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)


def confidence(targets: torch.Tensor) -> torch.Tensor:
    """w = 1 - H(y)/log C: 1 for a one-hot distribution, 0 for the uniform one."""
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


def scaled_distances(v: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """||v - other||^2 / dim over the last axis (broadcast: v (n, 1, dim) against other (1, n, dim) gives every
    pair)."""
    return (v - other).pow(2).sum(-1) / v.shape[-1]


def contrastive_regularizer(features: torch.Tensor, classes: torch.Tensor, selected: torch.Tensor,
                            margin: float = 1.0, pairs: str = "permutation", distance: str = "rms",
                            permutation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """R_1 over pairs of selected rows: rows of the same class (`classes`, one per row) are pulled together, rows of
    different classes pushed at least `margin` apart. `pairs`: "permutation" pairs each selected row with one other
    drawn by a random permutation (`permutation`, of the selected rows, to fix it), "all" with every selected row.
    `distance`: "rms" sqrt(||v_i - v_j||^2 / dim), "squared" ||v_i - v_j||^2 / dim, "cosine" 1 - cos(v_i, v_j)."""
    if selected.sum() < 2:
        return features.sum() * 0.0
    v, c = features[selected].float(), classes[selected]
    if pairs == "all":
        same = (c.unsqueeze(1) == c.unsqueeze(0)).float()
        other = v.unsqueeze(0)
        v = v.unsqueeze(1)
    else:
        index = torch.randperm(len(v), device=v.device) if permutation is None else permutation
        same = (c == c[index]).float()
        other = v[index]
    if distance == "cosine":
        d = 1 - torch.nn.functional.cosine_similarity(v, other, dim=-1, eps=1e-8)
    else:
        squared = scaled_distances(v, other)
        # The square root's gradient is infinite at 0 (a row paired with itself): the epsilon keeps it finite.
        d = (squared + 1e-9).sqrt() if distance == "rms" else squared
    pair_loss = same * d.pow(2) + (1 - same) * (margin - d).clamp_min(0).pow(2)
    return pair_loss.mean() / 2


def confidence_regularizer(log_probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """R_2 = mean over selected rows of KL(u || f(x)) = -mean_j log f_j(x) - log C, u uniform."""
    if not selected.any():
        return log_probs.sum() * 0.0
    lp = log_probs[selected]
    return (-lp.mean(-1) - math.log(lp.shape[-1])).mean()


def cosine_loss(logits: torch.Tensor, features: torch.Tensor, teacher_probs: torch.Tensor, threshold: float,
                contrastive_weight: float, margin: float, confidence_weight: float, power: float = 2.0,
                frequency: Optional[torch.Tensor] = None, confidence_from: str = "prediction",
                pairs: str = "permutation", distance: str = "rms", agreement: str = "prediction") -> dict:
    """The COSINE objective of one batch from the student's logits and features and the teacher's predicted
    probabilities of the same rows; `frequency`: the classes' soft frequencies over every row (None: over this
    batch). Returns the total and each term (for logging)."""
    log_probs = torch.log_softmax(logits.float(), -1)
    targets = sharpen(teacher_probs, power, frequency)
    weights = confidence(teacher_probs if confidence_from == "prediction" else targets)
    selected = weights > threshold
    if contrastive_weight:
        classes = (logits if agreement == "prediction" else targets).detach().argmax(-1)
        contrastive = contrastive_regularizer(features, classes, selected, margin, pairs, distance)
    else:
        contrastive = log_probs.sum() * 0.0
    terms = {"classification": classification_loss(log_probs, targets, weights, selected),
             "contrastive": contrastive,
             "confidence": confidence_regularizer(log_probs, selected)}
    total = terms["classification"] + contrastive_weight * terms["contrastive"] + confidence_weight * terms["confidence"]
    return {"loss": total, **terms, "selected": selected.sum()}
