"""Preference objectives on (prompt, chosen, rejected) pairs: the Bradley-Terry reward-model loss, DPO
(sigmoid), IPO, and the reference-free SimPO and ORPO.

Everything is a function of per-sequence log-probabilities summed over response tokens (and the number of
those tokens, for the length-normalized IPO, SimPO and ORPO), so each loss can be checked by hand on a few
numbers. `sequence_logprobs` turns a causal LM's logits and masked labels into those sums. Losses are per
pair (no reduction): the training loop sums them and divides by the pairs of the accumulated step.

References: Rafailov et al. 2023 (DPO), Azar et al. 2023 (IPO), Meng et al. 2024 (SimPO), Hong et al. 2024
(ORPO), Bradley and Terry 1952.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token) over response tokens, number of those tokens) per row. Position t predicts token
    t + 1; labels of -100 (prompt, padding) do not count."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Reward model: -log sigmoid(r_chosen - r_rejected) per pair."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO: -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]) per pair; with
    label smoothing e (conservative DPO), (1 - e) of that plus e of the same with the pair swapped."""
    z = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
             beta: float) -> torch.Tensor:
    """IPO: (h - 1 / (2 beta))^2 per pair, h the difference of the two responses' log-likelihood ratios, each
    averaged over its tokens: it regresses the margin to a fixed target instead of pushing it without bound. The
    per-token average keeps beta meaningful whatever the lengths (the form TRL uses, which IPO's authors
    confirmed their reported results correspond to)."""
    h = (policy_chosen - ref_chosen) / chosen_tokens - (policy_rejected - ref_rejected) / rejected_tokens
    return (h - 1 / (2 * beta)) ** 2


def simpo_loss(policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, beta: float,
               gamma: float) -> torch.Tensor:
    """SimPO (reference-free): -log sigmoid(beta * (mean token log-prob of y_w - that of y_l) - gamma)."""
    z = beta * (policy_chosen / chosen_tokens - policy_rejected / rejected_tokens) - gamma
    return -F.logsigmoid(z)


def orpo_loss(policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (reference-free): the chosen response's mean token NLL plus lam * -log sigmoid(log odds(y_w) -
    log odds(y_l)), with odds(y) = P / (1 - P) and P the mean-token likelihood, per pair. Returns (loss, odds-ratio
    term)."""
    mean_w, mean_l = policy_chosen / chosen_tokens, policy_rejected / rejected_tokens
    log_odds = lambda m: m - torch.log1p(-torch.exp(m).clamp(max=1 - 1e-7))  # noqa: E731
    ratio = -F.logsigmoid(log_odds(mean_w) - log_odds(mean_l))
    return -mean_w + lam * ratio, ratio


@dataclass
class PreferenceStats:
    """What each evaluation reports: implied rewards beta * log(pi / ref), how often the chosen one wins, margin."""
    chosen_reward: float
    rejected_reward: float
    margin: float
    accuracy: float


def preference_stats(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> PreferenceStats:
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return PreferenceStats(float(chosen.mean()), float(rejected.mean()), float((chosen - rejected).mean()),
                           float((chosen > rejected).float().mean()))
