"""What a task is: everything in tuneforge that depends on the task, asked of one object.

A task module defines one subclass and the registry (`tasks/__init__.py`) names it. The rest of tuneforge asks
the task instead of comparing its name: which recipe keys it reads and what it checks, how a file's rows are
read and validated, how examples are encoded into a split (`data/split.py`), which model and head it loads and
how a saved one reopens, PEFT's task type, the loss of a batch and the metrics, and what a prediction is.

`batch_loss(model, batch)` returns the loss *summed* over the batch's examples (causal LM: target tokens;
preference: pairs; tagging: labelled words) and what the metrics read; the loop divides by the count of the
whole accumulated step (`split.count`), so accumulating 4x8 equals one batch of 32.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.dataset import LabelSpace
from ..errors import DataError


class Task:
    name: str = ""
    problem_type: str = ""            # the transformers config value, so pipelines post-process correctly
    default_metric: str = "loss"
    generative: bool = False          # its model is a causal LM that writes text (sample prompts, `generate`)
    named_labels: bool = True         # rows carry label names, from which the label space is built
    stratify: bool = False            # validation / test carved from train per class
    peft_task_type: Optional[str] = "SEQ_CLS"  # None: a plain PeftModel (no PEFT task type fits)
    # Recipe keys ("section.key") only this task (and others naming them) reads: set for another task they are errors.
    keys: tuple[str, ...] = ()
    # Stages that may run with it.
    adaptable: bool = False           # adapt: continued pre-training before the task
    distillable: bool = False         # distill: a teacher's outputs as targets
    weakly_supervised: bool = False   # weak: labels from rules or a weak-label column
    transfer_set: bool = False        # distill.unlabeled: single texts the teacher labels
    quantizable: bool = True          # model.quantization: a transformers text model
    images: bool = False              # reads images (packaged image data sets, image methods)
    trained_by_adapters: bool = True  # an adapter (and the head) may be all that trains
    has_reference: bool = False       # a policy compared to a reference network (task.reference)
    uses_reward: bool = False         # scored by task.reward while it trains and evaluates
    scores_responses: bool = False    # a finished run scores (prompt, response) pairs (`tuneforge score`)
    samples: bool = False             # samples completions while it trains (task.max_new_tokens each)

    # ------------------------------------------------------------ recipe

    def check_recipe(self, recipe) -> None:
        """Checks of the recipe that depend on this task; raise ValueError with the key, the value and the fix."""

    def configured(self, recipe) -> "Task":
        """This task with the recipe's settings (loss, beta, ...); most tasks have none."""
        return self

    # ------------------------------------------------------------ data

    def columns(self, spec) -> tuple[str, Optional[str], str]:
        """(text, second text, label) columns of the recipe's data."""
        if spec.dataset:
            return "text", None, "label"
        return spec.text_column, spec.text_pair_column, spec.label_column

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True) -> list:
        """One file's rows as validated examples; raise DataError naming every bad row."""
        raise NotImplementedError

    def label_space(self, train: Sequence, declared: Optional[list[str]]) -> LabelSpace:
        return LabelSpace([])

    def check_labels(self, examples: Sequence, space: LabelSpace, problems: list[str]) -> None:
        """Append a problem for each example whose label is not in `space`."""

    def stratum(self, example):
        """What stratified carving groups by (stratify: True)."""
        return example.label

    def encode(self, recipe, tokenizer, examples: Sequence, space: LabelSpace):
        """Examples as a split the loop, evaluation and prediction read (data/split.py)."""
        raise NotImplementedError

    # ------------------------------------------------------------ model

    def num_outputs(self, num_labels: int) -> int:
        return num_labels

    def load_model(self, recipe, space: LabelSpace, head_seed: int, load_kwargs=None):
        """The recipe's pre-trained model with this task's head (a models.loading.LoadedModel)."""
        raise NotImplementedError

    def model_skeleton(self, recipe, space: LabelSpace, tokenizer, config):
        """The model's structure on the meta device (no weights read), for `validate`; None: load it for real."""
        return None

    def open_saved(self, model_dir):
        """(model, tokenizer, label names) of a finished run's saved model folder."""
        raise NotImplementedError

    def saved_extras(self, model, loaded) -> dict:
        """Tensors saved beside the trained model's own (see MaskedLMTask)."""
        return {}

    def saved_labels(self, names: list[str]) -> list[str]:
        """A run's label space from its summary's labels."""
        return list(names)

    # ------------------------------------------------------------ loss and metrics

    def loss_sum(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss summed over the batch's examples (or target tokens), from the model's logits."""
        raise NotImplementedError

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        """(loss summed over the batch, what the metrics read: the logits)."""
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return self.loss_sum(logits, batch["labels"]), logits

    def make_metrics(self, num_labels: int, threshold: float = 0.5):
        raise NotImplementedError

    def bind(self, model, tokenizer, reward=None) -> None:
        """What the task needs of the model once it exists (GRPO: the tokenizer, stop tokens and reward)."""

    def default_beta(self, task_spec) -> float:
        """task.beta's value when the recipe leaves it out (tasks that read it)."""
        return 0.0

    def reference_needed(self, recipe) -> bool:
        """Whether the loss compares to a reference network (has_reference tasks)."""
        return False

    def prompt_format(self, recipe, tokenizer, first) -> Optional[str]:
        """How prompts were rendered in training ('chat-template' or 'plain'; None: the task has no prompts)."""
        return None

    def tokenizer_warnings(self, recipe, tokenizer, first) -> list[str]:
        """What the tokenizer changes about how the rows are read (`first`: the first training example)."""
        return []

    def metrics_for(self, split, num_labels: int, threshold: float = 0.5):
        """The metrics of an evaluation of `split`: those that decode per example need the split itself."""
        return self.make_metrics(num_labels, threshold)

    def metric_names(self, space: LabelSpace, threshold: float = 0.5) -> list[str]:
        """The names of the metrics an evaluation reports (besides the loss)."""
        return list(self.make_metrics(max(len(space.names), 1), threshold).compute())

    # ------------------------------------------------------------ a run

    def start_training(self, model, train: Sequence, run_dir: Path, resumed: bool, is_main: bool) -> list[str]:
        """Before the first step, or the first of a resumed run (before its checkpoint loads): what the task sets up
        from the training split (regression: the targets' statistics, kept in the run folder by rank 0). Returns
        lines for the start report."""
        return []

    def saving(self, model, state: Optional[dict] = None):
        """A context around the save of the finished model (`state`: the weights gathered from a sharded one):
        what the task folds into the saved weights and takes back after (regression: its targets' units)."""
        return contextlib.nullcontext()

    def run_summary(self, metrics: dict) -> dict:
        """Entries of a finished run's summary.json; a "warnings" list is also printed."""
        return {}

    # ------------------------------------------------------------ use

    def use_error(self, run_dir, action: str) -> Optional[str]:
        """Why a finished run of this task cannot `action` ('evaluate', 'predict'), or None."""
        return None

    def inputs(self, recipe, run_dir, data=None, texts=None, text_pairs=None, images=None, with_labels=True) -> list:
        """What a finished run is asked about: a file's rows, or texts given directly."""
        if images is not None:
            raise DataError([f"{run_dir} is a {self.name} model of texts; give texts (--text) or a "
                             "file (--data), not images"])
        if (data is None) == (texts is None):
            raise ValueError("give either data (a file) or texts")
        if data is not None:
            return self.read_file(recipe.data, data, with_labels=with_labels, fmt="auto")
        return self.given_examples(recipe, texts, text_pairs)

    def given_examples(self, recipe, texts, text_pairs) -> list:
        """Examples from texts given on the command line or in Python (no file)."""
        raise DataError([f"a {self.name} model predicts from a file; give --data"])

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        """The model's outputs over `split` as one tensor: what a merged model must reproduce."""
        from ..engine.evaluate import run_prediction
        return run_prediction(model, split, batch_size, pad_id, runtime)

    def predictions(self, model, split, examples: Sequence, space: LabelSpace, recipe, batch_size: int, pad_id: int,
                    runtime) -> list[dict]:
        """One record per example."""
        outputs = self.logits(model, split, batch_size, pad_id, runtime)
        return [self.record(ex, row, space, recipe) for ex, row in zip(examples, outputs)]

    def record(self, example, output, space: LabelSpace, recipe) -> dict:
        raise NotImplementedError


def owned_keys(tasks: dict[str, Task]) -> dict[str, tuple[str, ...]]:
    """Each task-owned recipe key -> the names of the tasks that read it, in registry order."""
    owners: dict[str, list[str]] = {}
    for name, task in tasks.items():
        for key in task.keys:
            owners.setdefault(key, []).append(name)
    return {k: tuple(v) for k, v in owners.items()}
