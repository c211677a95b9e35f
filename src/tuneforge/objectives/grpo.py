"""GRPO (Shao et al. 2024, DeepSeekMath): policy-gradient tuning from G sampled completions per prompt, each
completion's advantage its reward standardized within its group, a KL penalty towards the reference.

With one optimizer step per batch of samples (the completions are drawn from the policy being updated), the
clipped importance ratio of the paper equals 1 and its gradient is the advantage times the gradient of the
completion's log-probability; `grpo_token_loss` keeps that form (exp(logp - logp.detach()) is 1 with the
right gradient) so the value and the gradient are those of the paper's objective.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), groups being consecutive runs of `group_size`. A group
    whose completions all scored the same gets advantage 0: nothing to learn from it."""
    grouped = rewards.view(-1, group_size)
    mean, std = grouped.mean(1, keepdim=True), grouped.std(1, keepdim=True, unbiased=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy (Schulman's k3):
    exp(ref - logp) - (ref - logp) - 1, never negative, unbiased."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def grpo_token_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                    ref_logps: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """Per completion: the mean over its tokens of -(ratio * advantage) + beta * k3 KL, with ratio =
    exp(logp - logp.detach()) (1, with the policy gradient). `logps`, `ref_logps`, `mask`: completions x tokens."""
    ratio = torch.exp(logps - logps.detach())
    per_token = -ratio * advantages.unsqueeze(1)
    if ref_logps is not None and beta:
        per_token = per_token + beta * k3_kl(logps, ref_logps)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
