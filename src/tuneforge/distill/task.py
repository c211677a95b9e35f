"""The distillation objective as a task the loop can run: training batches get
alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * task loss [+ hidden_weight * hidden-state matching];
evaluation is the plain task's, so validation metrics (and the best step) measure the student on the labels."""
from __future__ import annotations

from typing import Optional

import torch

from ..objectives.tokens import align_to_labels
from .loss import hidden_cosine_sum, soft_target_kl_sum


class DistillationTask:
    def __init__(self, base, teacher, alpha: float, temperature: float, hidden_weight: float = 0.0,
                 layers: Optional[list[int]] = None, causal: bool = False):
        self.base, self.teacher = base, teacher
        self.alpha, self.temperature, self.hidden_weight = alpha, temperature, hidden_weight
        self.layers = layers        # teacher hidden-state index matched by each student block
        self.causal = causal

    def __getattr__(self, name):  # name, problem_type, make_metrics, default_metric, num_outputs: the task's
        return getattr(self.base, name)

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        if evaluating:
            batch = {k: v for k, v in batch.items() if k != "teacher_logits"}
            return self.base.batch_loss(model, batch, evaluating=True)
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        hidden = self.hidden_weight > 0
        out = model(**inputs, **({"output_hidden_states": True} if hidden else {}))
        logits = out.logits
        task_sum = self.base.loss_sum(logits, labels)
        if "teacher_logits" in batch:  # cached (validation refuses a cache together with hidden-state matching)
            teacher_logits, teacher_states = batch["teacher_logits"], None
        else:
            teacher_logits, teacher_states = self.teacher.outputs(inputs, hidden)
        if self.causal:
            # Token-level: the distributions that predict each target token (position t predicts t + 1).
            targets = labels[:, 1:] != -100
            student = align_to_labels(logits, labels)[:, :-1][targets]
            teacher = align_to_labels(teacher_logits, labels)[:, :-1][targets]
            width = min(student.shape[-1], teacher.shape[-1])  # embedding matrices padded past the shared vocabulary
            kd_sum = soft_target_kl_sum(student[:, :width], teacher[:, :width], self.temperature)
        else:
            kd_sum = soft_target_kl_sum(logits, teacher_logits, self.temperature)
        loss = self.alpha * kd_sum + (1 - self.alpha) * task_sum
        if hidden:
            loss = loss + self.hidden_weight * self._hidden_sum(out.hidden_states, teacher_states, batch, labels)
        return loss, logits

    def _hidden_sum(self, student_states, teacher_states, batch, labels):
        student = list(student_states[1:])  # block outputs (index 0: the embeddings')
        teacher = [teacher_states[k] for k in self.layers]
        length = student[0].shape[1]
        if self.causal:
            weights = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
            weights[:, :-1] = (labels[:, 1:] != -100).float()  # the positions whose outputs predict targets
        else:
            mask = batch.get("attention_mask", torch.ones(labels.shape[0], length, device=labels.device)).float()
            weights = mask / mask.sum(1, keepdim=True)
        return hidden_cosine_sum(student, teacher, weights[:, -length:])
