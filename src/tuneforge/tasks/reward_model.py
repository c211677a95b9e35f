"""A reward model: a scalar head trained with the Bradley-Terry loss on preference pairs, so the chosen
response scores higher; its scores then drive RL (GRPO's reward) or rank responses (`tuneforge score`).

A batch holds the chosen rows of its pairs, then their rejected rows, so one forward scores both."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..objectives.preference import bradley_terry_loss
from .pairs import PairsTask
from .preference import pair_inputs



class RewardMetrics:
    """Pairwise accuracy (the chosen response scores higher) and the mean reward margin."""

    def __init__(self):
        self.chosen: list[torch.Tensor] = []
        self.rejected: list[torch.Tensor] = []

    def update(self, outputs, labels=None) -> None:
        chosen, rejected = outputs
        self.chosen.append(chosen.detach().float().cpu())
        self.rejected.append(rejected.detach().float().cpu())

    def merge(self, other: "RewardMetrics") -> None:
        self.chosen.extend(other.chosen)
        self.rejected.extend(other.rejected)

    def compute(self) -> dict[str, float]:
        if not self.chosen:
            return {"accuracy": float("nan"), "margin": float("nan"), "chosen_reward": float("nan"),
                    "rejected_reward": float("nan")}
        c, r = torch.cat(self.chosen), torch.cat(self.rejected)
        return {"accuracy": float((c > r).float().mean()), "margin": float((c - r).mean()),
                "chosen_reward": float(c.mean()), "rejected_reward": float(r.mean())}


@dataclass(frozen=True)
class RewardModelTask(PairsTask):
    name: str = "reward-model"
    problem_type: str = "regression"  # one unbounded score: pipelines return it as is
    default_metric: str = "loss"  # continuous: pairwise accuracy ties early and would keep an early model

    def num_outputs(self, num_labels: int) -> int:
        return 1

    def make_metrics(self, num_labels: int = 1, threshold: float = 0.5) -> RewardMetrics:
        return RewardMetrics()

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        rewards = model(**pair_inputs(batch)).logits.float().squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        return bradley_terry_loss(chosen, rejected).sum(), (chosen, rejected)


    peft_task_type = "SEQ_CLS"
    scores_responses = True
    keys = ("data.chat_template", "data.chosen_column", "data.rejected_column", "data.drop_invalid_pairs",
            "task.disable_dropout")

    def check_recipe(self, recipe) -> None:
        super().check_recipe(recipe)
        if recipe.method.name == "prompt":
            raise ValueError("method 'prompt' cannot train a reward model: PEFT feeds the model input embeddings, so a "
                             "decoder's score head cannot find each row's last token; use lora, dora, ia3 or a freezing "
                             "method")

    def encode(self, recipe, tokenizer, examples, space):
        from ..data.preference import encode_reward_pairs
        return encode_reward_pairs(tokenizer, examples, recipe.model.max_length, recipe.data.chat_template)

    def load_model(self, recipe, space, head_seed: int, load_kwargs=None):
        from ..models.loading import load_for_classification

        m = recipe.model
        return load_for_classification(m.name, 1, self.problem_type, {0: "reward"}, head_seed, m.trust_remote_code,
                                       m.pretrained, load_kwargs)

    def model_skeleton(self, recipe, space, tokenizer, config):
        from transformers import AutoModelForSequenceClassification

        config.num_labels = 1
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config,
                                                                  trust_remote_code=recipe.model.trust_remote_code)

    def open_saved(self, model_dir):
        from ..models.loading import load_run_model

        model, tokenizer = load_run_model(model_dir)
        return model, tokenizer, [model.config.id2label[i] for i in range(len(model.config.id2label))]

    def other_uses(self) -> str:
        return " or score responses with `tuneforge score`"

    def use_error(self, run_dir, action: str) -> Optional[str]:
        if action == "predict":
            return f"{run_dir} is a reward-model model: score (prompt, response) pairs with `tuneforge score`"
        return None

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        """Each pair is two rows: both rewards (n x 2)."""
        from ..engine.evaluate import run_pair_rewards
        return run_pair_rewards(model, split, batch_size, pad_id)
