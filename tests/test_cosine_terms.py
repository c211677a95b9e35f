"""Each COSINE term (objectives/cosine.py) against values worked by hand."""
from __future__ import annotations

import math

import pytest
import torch

from tuneforge.objectives.cosine import (classification_loss, confidence, confidence_regularizer, contrastive_regularizer,
                                         cosine_loss, scaled_distances, sharpen)


def test_sharpened_pseudo_labels():
    probs = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    # Soft frequencies F = (0.8, 1.2). Row 1: 0.36/0.8 = 0.45, 0.16/1.2 = 0.1333 -> 0.45/0.5833 = 0.7714.
    # Row 2: 0.04/0.8 = 0.05, 0.64/1.2 = 0.5333 -> 0.05/0.5833 = 0.0857.
    expected = torch.tensor([[0.45 / (0.45 + 0.16 / 1.2), (0.16 / 1.2) / (0.45 + 0.16 / 1.2)],
                             [0.05 / (0.05 + 0.64 / 1.2), (0.64 / 1.2) / (0.05 + 0.64 / 1.2)]])
    torch.testing.assert_close(sharpen(probs), expected)
    assert sharpen(probs)[0, 0].item() == pytest.approx(0.771428, abs=1e-5)
    # The frequency division damps an over-predicted class: equal rows stay where they are, however confident.
    torch.testing.assert_close(sharpen(torch.tensor([[0.9, 0.1], [0.9, 0.1]])), torch.tensor([[0.9, 0.1], [0.9, 0.1]]),
                               atol=1e-6, rtol=0)


def test_confidence_weights():
    w = confidence(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.75, 0.25]]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623 nats
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, 1 - h / math.log(2)]))
    assert w[2].item() == pytest.approx(0.18872, abs=1e-5)


def test_classification_loss_weights_and_selects():
    log_probs = torch.log(torch.tensor([[0.8, 0.2], [0.5, 0.5], [0.3, 0.7]]))
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    weights = confidence(targets)
    selected = torch.tensor([True, False, True])
    # Row 1: KL([1,0] || [.8,.2]) = -log 0.8 = 0.22314, weight 1.
    # Row 3: KL([.25,.75] || [.3,.7]) = .25 log(.25/.3) + .75 log(.75/.7) = -0.045580 + 0.051745 = 0.006165, weight 0.18872.
    row3 = 0.25 * math.log(0.25 / 0.3) + 0.75 * math.log(0.75 / 0.7)
    expected = (1.0 * -math.log(0.8) + weights[2].item() * row3) / 2
    assert classification_loss(log_probs, targets, weights, selected).item() == pytest.approx(expected, rel=1e-5)
    assert classification_loss(log_probs, targets, weights, torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_contrastive_regularizer_pulls_alike_and_pushes_apart():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # d_ij = ||v_i - v_j||^2 / 2: d01 = 0.5, d02 = 2.0, d12 = (1 + 4) / 2 = 2.5.
    torch.testing.assert_close(scaled_distances(features), torch.tensor([[0, 0.5, 2.0], [0.5, 0, 2.5], [2.0, 2.5, 0]]))
    targets = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])  # classes 0, 0, 1
    selected = torch.tensor([True, True, True])
    # Same class (0,1): d^2 = 0.25; different (0,2): max(0, 1 - 2)^2 = 0; (1,2): max(0, 1 - 2.5)^2 = 0.
    # Ordered pairs over 3 x 3 (the diagonal is 0): 2 * 0.25 / 9.
    assert contrastive_regularizer(features, targets, selected, margin=1.0).item() == pytest.approx(0.5 / 9)
    # With margin 3, the different-class pairs are inside it: (3 - 2)^2 = 1 and (3 - 2.5)^2 = 0.25, twice each.
    assert contrastive_regularizer(features, targets, selected, margin=3.0).item() == pytest.approx((0.5 + 2 + 0.5) / 9)
    # Only selected rows pair up.
    assert contrastive_regularizer(features, targets, torch.tensor([True, False, True]), margin=3.0).item() == \
        pytest.approx(2 * 1.0 / 4)
    assert contrastive_regularizer(features, targets, torch.tensor([True, False, False])).item() == 0.0


def test_confidence_regularizer():
    log_probs = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    # KL(u || [.5,.5]) = 0; KL(u || [.9,.1]) = .5 log(.5/.9) + .5 log(.5/.1) = 0.510826.
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    both = torch.tensor([True, True])
    assert confidence_regularizer(log_probs, both).item() == pytest.approx(kl / 2, rel=1e-5)
    assert confidence_regularizer(log_probs, torch.tensor([False, True])).item() == pytest.approx(kl, rel=1e-5)


def test_cosine_loss_combines_the_terms_on_confident_rows_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    targets = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9]])
    out = cosine_loss(logits, features, targets, threshold=0.3, contrastive_weight=2.0, margin=3.0, confidence_weight=0.1)
    selected = confidence(targets) > 0.3
    assert selected.tolist() == [True, False, True] and out["selected"].item() == 2
    log_probs = torch.log_softmax(logits, -1)
    w = confidence(targets)
    expected = classification_loss(log_probs, targets, w, selected) + \
        2.0 * contrastive_regularizer(features, targets, selected, 3.0) + 0.1 * confidence_regularizer(log_probs, selected)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert logits.grad[1].abs().sum() == 0          # the unconfident row does not train
    assert features.grad[0].abs().sum() > 0          # the contrastive term reaches the encoder's features
