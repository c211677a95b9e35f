"""Masked language modelling: continued pre-training of an encoder on unlabeled text (DAPT / TAPT), the
network a task then starts from."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import RecipeError
from ..objectives.tokens import align_to_labels
from .base import Task
from .metrics import CausalLMMetrics


class MaskedLMTask(Task):
    name = "masked-lm"
    problem_type = "masked_lm"
    default_metric = "loss"
    named_labels = False
    peft_task_type = None
    trained_by_adapters = False
    keys = ("task.mlm_probability",)

    def columns(self, spec):
        return ("text" if spec.dataset else spec.text_column), None, None

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        from ..data.masked import read_text_rows
        return read_text_rows(path, spec.format, self.columns(spec)[0])

    def encode(self, recipe, tokenizer, examples, space):
        from ..data.masked import encode_masked
        return encode_masked(tokenizer, examples, recipe.model.max_length, recipe.task.mlm_probability)

    def num_outputs(self, num_labels: int) -> int:
        return 0

    def load_model(self, recipe, space, head_seed: int, load_kwargs=None):
        from ..models.loading import load_for_masked_lm
        return load_for_masked_lm(recipe.model.name, head_seed, recipe.model.trust_remote_code, load_kwargs)

    def model_skeleton(self, recipe, space, tokenizer, config):
        from transformers import AutoModelForMaskedLM

        if tokenizer.mask_token is None:
            raise RecipeError([f"model.name {recipe.model.name!r}: its tokenizer has no mask token, so it cannot "
                               "be trained as a masked LM; decoders continue pre-training with task.type causal-lm"])
        with torch.device("meta"):
            return AutoModelForMaskedLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)

    def saved_extras(self, model, loaded) -> dict:
        """Weights saved beside the adapted ones: the source's pooler, so a task fine-tuned from the adapted model
        starts from the same pooler as one fine-tuned from the source."""
        from ..models.loading import base_weights_missing_from
        return base_weights_missing_from(model, loaded.path)

    def use_error(self, run_dir, action: str) -> Optional[str]:
        return (f"{run_dir}: a masked-lm run adapts an encoder; it predicts no labels. Fine-tune it on a "
                f"task (model.name: {run_dir}), or continue its pre-training")

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        """Vocabulary logits at the chosen positions only (about 15% of them): the output layer over a 30k-word
        vocabulary costs as much as a small encoder, and the other positions have no loss."""
        labels = batch["labels"]
        chosen = labels != -100
        decoder = model.get_output_embeddings()
        # The output layer's input, (batch, positions, width), cut to the chosen positions before the projection.
        handle = decoder.register_forward_pre_hook(lambda module, args: (args[0][chosen],))
        try:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        finally:
            handle.remove()
        return F.cross_entropy(logits.float(), labels[chosen], reduction="sum"), logits

    @staticmethod
    def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The logits at a chosen position predict the token that was there; -100 elsewhere.
        logits = align_to_labels(logits, labels)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")

    def make_metrics(self, num_labels: int = 0, threshold: float = 0.5):
        return CausalLMMetrics(shift=False)
