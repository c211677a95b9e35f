"""What the tasks whose model is a causal language model share (causal-lm, preference, grpo): the model keeps its
own pre-trained head, batches are padded with EOS when the tokenizer has no pad token, saved models reopen as
causal LMs, and PEFT wraps them as CAUSAL_LM."""
from __future__ import annotations

from typing import Optional

import torch

from ..data.dataset import LabelSpace
from .base import Task


class LanguageModelTask(Task):
    generative = True
    named_labels = False
    peft_task_type = "CAUSAL_LM"
    problem_type = "causal_lm"

    def num_outputs(self, num_labels: int) -> int:
        return 0

    def load_model(self, recipe, space: LabelSpace, head_seed: int, load_kwargs=None):
        from ..models.loading import load_for_causal_lm

        m = recipe.model
        return load_for_causal_lm(m.name, head_seed, m.trust_remote_code, m.pretrained, load_kwargs)

    def model_skeleton(self, recipe, space: LabelSpace, tokenizer, config):
        from transformers import AutoModelForCausalLM

        if tokenizer.pad_token is None:  # as the loader does: batches need a pad id
            tokenizer.pad_token = tokenizer.eos_token
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)

    def open_saved(self, model_dir):
        from ..models.loading import load_causal_run_model

        model, tokenizer = load_causal_run_model(model_dir)
        return model, tokenizer, []

    def use_error(self, run_dir, action: str) -> Optional[str]:
        if action == "predict":
            return f"{run_dir} is a {self.name} model: generate with `tuneforge generate`"
        return None

    def tokenizer_warnings(self, recipe, tokenizer, first) -> list[str]:
        prompted = getattr(first, "prompt", None) is not None and getattr(first, "messages", None) is None
        if not (recipe.data.chat_template and prompted) or getattr(tokenizer, "chat_template", None):
            return []
        return [f"data.chat_template is true, but the tokenizer of {recipe.model.name!r} has no chat template: "
                "prompt/completion rows are rendered as plain text (the prompt, a new line, the completion, end of "
                "text), and `tuneforge generate` renders prompts the same way. Set data.chat_template: false to "
                "say so, or train a model whose tokenizer has a template"]

    def prompt_format(self, recipe, tokenizer, first) -> str:
        """How the first training row's prompt was rendered ('chat-template' or 'plain'), so generation renders
        prompts the same way."""
        templated = bool(getattr(tokenizer, "chat_template", None)) and (
            first.messages is not None or (first.prompt is not None and recipe.data.chat_template))
        return "chat-template" if templated else "plain"
