"""Preference losses against values worked by hand from their formulas."""
import math

import pytest
import torch

from tuneforge.objectives.preference import (bradley_terry_loss, dpo_loss, ipo_loss, orpo_loss, preference_stats,
                                             sequence_logprobs, simpo_loss)

t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_sequence_logprobs_sum_only_response_tokens():
    # Uniform logits over 4 tokens: every token has log-probability -log 4. Labels: prompt (-100), then 3 targets.
    logits = torch.zeros(1, 5, 4)
    labels = torch.tensor([[-100, -100, 2, 1, 3]])
    total, count = sequence_logprobs(logits, labels)
    assert count.tolist() == [3] and total.item() == pytest.approx(-3 * math.log(4))
    # A peaked distribution: logit 2 at the target, 0 elsewhere: log p = 2 - log(e^2 + 3).
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 2.0
    total, count = sequence_logprobs(logits, torch.tensor([[-100, 1, -100]]))
    assert count.tolist() == [1] and total.item() == pytest.approx(2 - math.log(math.exp(2) + 3))


def test_bradley_terry():
    loss = bradley_terry_loss(t(1.0, 0.0), t(0.0, 2.0))
    assert loss.tolist() == pytest.approx([-math.log(sigmoid(1.0)), -math.log(sigmoid(-2.0))])


def test_dpo_and_its_label_smoothing():
    # pi_w = -2, ref_w = -3, pi_l = -4, ref_l = -3, beta 0.1: z = 0.1 * ((1) - (-1)) = 0.2
    loss = dpo_loss(t(-2.0), t(-4.0), t(-3.0), t(-3.0), beta=0.1)
    assert loss.item() == pytest.approx(-math.log(sigmoid(0.2)))  # 0.5981...
    smoothed = dpo_loss(t(-2.0), t(-4.0), t(-3.0), t(-3.0), beta=0.1, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(-0.9 * math.log(sigmoid(0.2)) - 0.1 * math.log(sigmoid(-0.2)))
    # Equal policy and reference: z = 0, loss log 2, whatever beta.
    assert dpo_loss(t(-5.0), t(-7.0), t(-5.0), t(-7.0), beta=3.0).item() == pytest.approx(math.log(2))


def test_ipo():
    # One token each: h = (-2 + 3) - (-4 + 3) = 2; beta 0.25: target 1 / (2 * 0.25) = 2, so the loss is 0;
    # beta 0.5: (2 - 1)^2 = 1.
    one = t(1.0)
    assert ipo_loss(t(-2.0), t(-4.0), t(-3.0), t(-3.0), one, one, beta=0.25).item() == pytest.approx(0.0)
    assert ipo_loss(t(-2.0), t(-4.0), t(-3.0), t(-3.0), one, one, beta=0.5).item() == pytest.approx(1.0)
    # Per-token ratios: chosen gains 4 over 2 tokens (2 each), rejected loses 3 over 3 tokens (-1 each): h = 3;
    # beta 0.5: (3 - 1)^2 = 4.
    assert ipo_loss(t(-6.0), t(-9.0), t(-10.0), t(-6.0), t(2.0), t(3.0), beta=0.5).item() == pytest.approx(4.0)


def test_simpo_normalizes_by_length_and_subtracts_the_margin():
    # chosen: -6 over 3 tokens (-2 each); rejected: -12 over 4 tokens (-3 each); beta 2, gamma 0.5:
    # z = 2 * (-2 - (-3)) - 0.5 = 1.5
    loss = simpo_loss(t(-6.0), t(-12.0), t(3.0), t(4.0), beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(-math.log(sigmoid(1.5)))


def test_orpo():
    # mean token log-probs: chosen log 0.5 (P = 0.5, odds 1), rejected log 0.2 (P = 0.2, odds 0.25)
    w, l = math.log(0.5), math.log(0.2)
    loss, ratio = orpo_loss(t(2 * w), t(3 * l), t(2.0), t(3.0), lam=0.1)
    expected_ratio = -math.log(sigmoid(math.log(1.0) - math.log(0.25)))  # -log sigmoid(log 4) = log(1.25)
    assert ratio.item() == pytest.approx(expected_ratio) and expected_ratio == pytest.approx(math.log(1.25))
    assert loss.item() == pytest.approx(-w + 0.1 * expected_ratio)


def test_preference_stats():
    s = preference_stats(t(-2.0, -5.0), t(-4.0, -4.0), t(-3.0, -3.0), t(-3.0, -3.0), beta=0.5)
    # chosen rewards 0.5 * (1, -2) = (0.5, -1); rejected 0.5 * (-1, -1) = (-0.5, -0.5)
    assert (s.chosen_reward, s.rejected_reward) == pytest.approx((-0.25, -0.5))
    assert s.margin == pytest.approx(0.25) and s.accuracy == 0.5
