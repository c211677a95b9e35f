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


def test_frequency_over_all_rows_equals_sharpening_them_together():
    rows = torch.tensor([[0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    # balance "all": a batch of rows 0 and 1 sharpened with F over the four rows, the same as all four at once.
    torch.testing.assert_close(sharpen(rows[:2], frequency=rows.sum(0)), sharpen(rows)[:2])
    # balance "batch" (the authors'): F over the batch only, F = (0.8, 1.2) as worked above -> 0.7714, not 0.7059.
    assert sharpen(rows[:2])[0, 0].item() == pytest.approx(0.771428, abs=1e-5)
    # F over the four rows = (2.0, 2.0): row 0 becomes 0.36 / (0.36 + 0.16) = 0.6923.
    assert sharpen(rows)[0, 0].item() == pytest.approx(0.36 / 0.52, abs=1e-5)


def test_contrastive_regularizer_on_random_pairs_with_rms_distance():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    classes = torch.tensor([0, 0, 1])
    everyone = torch.tensor([True, True, True])
    pairs = torch.tensor([1, 2, 0])  # (0,1) alike, (1,2) and (2,0) not
    # d = sqrt(||v_i - v_j||^2 / 2): d01 = sqrt(0.5), d12 = sqrt(2.5) = 1.5811, d20 = sqrt(2) = 1.4142.
    # Margin 1: the unlike pairs are beyond it; the like pair costs d^2 = 0.5. Over 3 pairs, halved: 0.5 / 6.
    assert contrastive_regularizer(features, classes, everyone, 1.0, permutation=pairs).item() == \
        pytest.approx(0.5 / 6, rel=1e-6)
    # Margin 2: (2 - 1.58114)^2 = 0.175444 and (2 - 1.41421)^2 = 0.343146 join in.
    expected = (0.5 + (2 - math.sqrt(2.5)) ** 2 + (2 - math.sqrt(2)) ** 2) / 6
    assert contrastive_regularizer(features, classes, everyone, 2.0, permutation=pairs).item() == \
        pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.169765, abs=1e-6)
    # Without a fixed permutation, one is drawn: the value is one of the possible pairings, and finite even when a
    # row is paired with itself (the square root's gradient at 0).
    x = features.clone().requires_grad_()
    value = contrastive_regularizer(x, classes, everyone, 2.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
    assert contrastive_regularizer(features, classes, torch.tensor([True, False, False])).item() == 0.0


def test_contrastive_regularizer_over_every_pair_with_the_papers_distance():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    # d_ij = ||v_i - v_j||^2 / 2: d01 = 0.5, d02 = 2.0, d12 = (1 + 4) / 2 = 2.5.
    torch.testing.assert_close(scaled_distances(features.unsqueeze(1), features.unsqueeze(0)),
                               torch.tensor([[0, 0.5, 2.0], [0.5, 0, 2.5], [2.0, 2.5, 0]]))
    classes = torch.tensor([0, 0, 1])
    everyone = torch.tensor([True, True, True])

    def r1(margin, selected=everyone):
        return contrastive_regularizer(features, classes, selected, margin, pairs="all", distance="squared").item()

    # Same class (0,1): d^2 = 0.25; different (0,2): max(0, 1 - 2)^2 = 0; (1,2): max(0, 1 - 2.5)^2 = 0.
    # Ordered pairs over 3 x 3 (the diagonal is 0): 2 * 0.25 / 9, halved.
    assert r1(1.0) == pytest.approx(0.5 / 18)
    # With margin 3, the different-class pairs are inside it: (3 - 2)^2 = 1 and (3 - 2.5)^2 = 0.25, twice each.
    assert r1(3.0) == pytest.approx((0.5 + 2 + 0.5) / 18)
    # Only selected rows pair up.
    assert r1(3.0, torch.tensor([True, False, True])) == pytest.approx(2 * 1.0 / 8)


def test_contrastive_regularizer_with_the_cosine_distance():
    features = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    classes = torch.tensor([0, 0, 1])
    everyone = torch.tensor([True, True, True])
    # Pairs (0,1), (1,2), (2,0). d = 1 - cos: (0,1) 1 - 1/sqrt2 = 0.292893 (same class: d^2 = 0.085786);
    # (1,2) 1 - 1/sqrt2 = 0.292893 (different: (1 - d)^2 = 0.5); (2,0) 1 - 0 = 1 (different: 0).
    value = contrastive_regularizer(features, classes, everyone, 1.0, distance="cosine",
                                    permutation=torch.tensor([1, 2, 0]))
    d = 1 - 1 / math.sqrt(2)
    assert value.item() == pytest.approx((d ** 2 + (1 - d) ** 2 + 0.0) / 3 / 2, rel=1e-5)
    # The scale of a feature does not matter to the cosine distance.
    assert contrastive_regularizer(features * 7, classes, everyone, 1.0, distance="cosine",
                                   permutation=torch.tensor([1, 2, 0])).item() == pytest.approx(value.item(), rel=1e-5)


def test_confidence_regularizer():
    log_probs = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    # Per row KL(u || f) = sum_j 1/C log((1/C) / f_j): [.5,.5] -> 0;
    # [.9,.1] -> 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1) = -0.293893 + 0.804719 = 0.510826.
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl == pytest.approx(0.510826, abs=1e-6)
    both = torch.tensor([True, True])
    assert confidence_regularizer(log_probs, both).item() == pytest.approx(kl / 2, rel=1e-5)
    assert confidence_regularizer(log_probs, torch.tensor([False, True])).item() == pytest.approx(kl, rel=1e-5)


def test_confidence_regularizer_weight_sets_the_students_optimum():
    # min_f w KL(y || f) + lambda KL(u || f) has f_j = (w y_j + lambda / C) / (w + lambda): for a one-hot y, w = 1,
    # lambda = 0.1, C = 6: f = 1.0167/1.1 = 0.9242 on the class (confidence 0.78, above the 0.6 threshold).
    logits = torch.zeros(1, 6, requires_grad=True)
    y, lam = torch.nn.functional.one_hot(torch.tensor([2]), 6).float(), 0.1
    opt = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12)
    selected = torch.tensor([True])

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(logits, -1)
        loss = classification_loss(lp, y, torch.ones(1), selected) + lam * confidence_regularizer(lp, selected)
        loss.backward()
        return loss
    opt.step(closure)
    f = torch.softmax(logits, -1)[0]
    assert f[2].item() == pytest.approx((1 + lam / 6) / (1 + lam), abs=1e-4)
    assert confidence(f.detach()).item() == pytest.approx(0.7818, abs=1e-3)


def test_confidence_is_the_teachers_not_the_sharpened_labels():
    logits = torch.zeros(3, 2)
    teacher = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.1, 0.9]])
    # Row 1's prediction [.6,.4] has w = 1 - 0.6730/0.6931 = 0.0290. Sharpened over the batch (F = (1.65, 1.35)):
    # .36/1.65 = .2182, .16/1.35 = .1185 -> [.6480, .3520], w = 0.0642. A threshold of 0.05 lets it in only when the
    # confidence is of the sharpened label.
    assert confidence(teacher)[1].item() == pytest.approx(0.0290, abs=1e-4)
    assert confidence(sharpen(teacher))[1].item() == pytest.approx(0.0642, abs=1e-4)
    common = dict(threshold=0.05, contrastive_weight=0.0, margin=1.0, confidence_weight=0.1)
    assert cosine_loss(logits, logits, teacher, **common)["selected"].item() == 2
    assert cosine_loss(logits, logits, teacher, confidence_from="pseudo_label", **common)["selected"].item() == 3


def test_cosine_loss_combines_the_terms_on_confident_rows_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9]])
    torch.manual_seed(0)
    out = cosine_loss(logits, features, teacher, threshold=0.3, contrastive_weight=2.0, margin=3.0,
                      confidence_weight=0.1, pairs="all")
    w = confidence(teacher)
    selected = w > 0.3
    assert selected.tolist() == [True, False, True] and out["selected"].item() == 2
    log_probs = torch.log_softmax(logits, -1)
    student_classes = logits.argmax(-1)  # the authors' agreement: the student's predicted classes
    expected = classification_loss(log_probs, sharpen(teacher), w, selected) + \
        2.0 * contrastive_regularizer(features, student_classes, selected, 3.0, pairs="all") + \
        0.1 * confidence_regularizer(log_probs, selected)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert logits.grad[1].abs().sum() == 0          # the unconfident row does not train
    assert features.grad[0].abs().sum() > 0          # the contrastive term reaches the student's features
