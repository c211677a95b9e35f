"""Distillation terms. Each returns a *sum* (over rows, or over target tokens for causal LMs), like every task
loss here, so the loop's division by the step's examples (tokens) makes it a mean."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def soft_target_kl_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * sum over rows of KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al., 2015).

    The T^2 keeps the term's gradients the same size as the hard-label loss's when T changes: softening by T
    shrinks the soft targets' gradients by 1/T^2."""
    t = float(temperature)
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    return t * t * kl.sum()


def hidden_cosine_sum(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                      weights: torch.Tensor) -> torch.Tensor:
    """Sum over positions of weight * mean over matched layers of (1 - cosine(student, teacher)).

    `weights` (batch x positions) says what each position counts: 1 / (row length) for classification (each row
    then counts once), 1 at target tokens for causal LMs, 0 at padding."""
    per_layer = [1 - F.cosine_similarity(s.float(), t.float(), dim=-1) for s, t in zip(student_states, teacher_states)]
    return (torch.stack(per_layer).mean(0) * weights).sum()


def layer_map(student_blocks: int, teacher_blocks: int, kept: Optional[list[int]] = None) -> list[int]:
    """For each student block, the teacher block whose output it matches (indices into hidden_states, where 0 is
    the embeddings' output and k the k-th block's). The last block always matches the teacher's last: decoders
    return that one after their final norm, so only last and last compare alike. A student cut from a model as
    deep as the teacher matches its other kept blocks to the same teacher blocks; any other student is spread
    evenly (student block j <- teacher block round((j+1) Lt / Ls), never the embeddings)."""
    if kept is not None and len(kept) == student_blocks and max(kept) < teacher_blocks:
        mapped = [k + 1 for k in kept]
    else:
        mapped = [max(1, round((j + 1) * teacher_blocks / student_blocks)) for j in range(student_blocks)]
    mapped[-1] = teacher_blocks
    return mapped
