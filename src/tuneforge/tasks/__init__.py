"""Tasks: one module per task, one entry per task in TASKS (the only place that maps a name to a task).

Each task (tasks/base.py) owns what depends on it: its recipe keys and checks, reading and encoding its data, its
model and head, the loss and metrics, and its predictions. The rest of tuneforge asks the task."""
from __future__ import annotations

from .base import Task, owned_keys
from .causal_lm import CausalLMTask
from .classification import ClassificationTask
from .grpo import GRPOTask
from .image_classification import ImageClassificationTask
from .masked_lm import MaskedLMTask
from .multi_label import MultiLabelTask
from .pair_classification import PairClassificationTask
from .preference import PreferenceTask
from .regression import RegressionTask
from .reward_model import RewardModelTask
from .question_answering import QuestionAnsweringTask
from .token_classification import TokenClassificationTask

# In this order recipe messages list the tasks that read a key.
TASKS: dict[str, Task] = {
    "classification": ClassificationTask(),
    "multi-label": MultiLabelTask(),
    "regression": RegressionTask(),
    "pair-classification": PairClassificationTask(),
    "image-classification": ImageClassificationTask(),
    "causal-lm": CausalLMTask(),
    "masked-lm": MaskedLMTask(),
    "preference": PreferenceTask(),  # configured from the recipe by `task_for`
    "grpo": GRPOTask(),              # likewise
    "reward-model": RewardModelTask(),
    "token-classification": TokenClassificationTask(),
    "question-answering": QuestionAnsweringTask(),
}

_LOWER_IS_BETTER = {"loss", "mse", "mae", "perplexity", "kl"}


def higher_is_better(metric: str) -> bool:
    return metric not in _LOWER_IS_BETTER


def get_task(name: str) -> Task:
    return TASKS[name]


def task_for(recipe) -> Task:
    """The recipe's task with the recipe's settings (a preference or GRPO task's reference, reward and tokenizer
    are set later, once the model exists)."""
    return TASKS[recipe.task.type].configured(recipe)


__all__ = ["TASKS", "Task", "get_task", "task_for", "higher_is_better", "owned_keys"]
