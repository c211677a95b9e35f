"""Causal language modelling: instruction tuning on prompt/completion or chat rows, or plain text; the loss is
next-token cross-entropy on the target tokens (the completion, the assistant turns, or all)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..data.collate import encode_causal_split
from ..errors import DataError
from ..objectives.tokens import align_to_labels
from .language_model import LanguageModelTask
from .metrics import CausalLMMetrics


class CausalLMTask(LanguageModelTask):
    name = "causal-lm"
    default_metric = "loss"
    adaptable = True
    distillable = True
    keys = ("task.sample_prompts", "data.chat_template", "data.packing", "data.train_on")

    def check_recipe(self, recipe) -> None:
        if recipe.data.packing and recipe.method.name in ("prefix", "prompt"):
            raise ValueError(f"data.packing cannot isolate packed examples under method {recipe.method.name!r} (PEFT "
                             "replaces the restarting position ids, or adds a key/value cache, that isolation relies on); "
                             "turn packing off or choose another method")

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        from ..data.causal import read_causal_examples

        return read_causal_examples(path, spec.format, spec.text_column, spec.prompt_column, spec.completion_column,
                                    spec.messages_column, spec.train_on)

    def encode(self, recipe, tokenizer, examples, space):
        d = recipe.data
        return encode_causal_split(tokenizer, examples, recipe.model.max_length, d.chat_template, d.train_on, d.packing)

    @staticmethod
    def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Position t predicts token t + 1; -100 marks positions without loss (prompt, user turns, padding).
        logits = align_to_labels(logits, labels)
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100,
                               reduction="sum")

    def make_metrics(self, num_labels: int = 0, threshold: float = 0.5):
        return CausalLMMetrics()

    def inputs(self, recipe, run_dir, data=None, texts=None, text_pairs=None, images=None, with_labels=True) -> list:
        if data is None:
            raise DataError([f"{run_dir} is a language model: evaluate it on a file of its kind of rows "
                             "(loss, perplexity); it writes text with `tuneforge generate`, not predictions"])
        return self.read_file(recipe.data, data)

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        """Rows of different lengths: the logits where targets are predicted."""
        from ..engine.evaluate import run_target_logits
        return run_target_logits(model, split, batch_size, pad_id)
