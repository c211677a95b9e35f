"""The optional stages of a run (adapt, distill, weak) plug into `fine_tune` through one small interface: each
hook is called at its point of the pipeline with the run's context, and does nothing unless the stage needs it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class RunContext:
    """What a run has made so far, filled in as its pipeline goes; stages read and change it."""
    recipe: object
    runtime: object
    console: object
    run_dir: Path
    task: object                              # the task (a stage may wrap it: distillation)
    train_entry: Callable                     # fine_tune itself, for a stage that runs a run of its own (adapt)
    resume: bool = False
    overwrite: bool = False
    callbacks: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # warnings printed once the run directory is prepared
    model_recipe: object = None               # the recipe the model is loaded by (adapt: from the adapted model)
    keep: tuple = ()                          # run-directory folders of earlier stages, kept when the run restarts
    splits: dict = field(default_factory=dict)
    space: object = None
    origin: dict = field(default_factory=dict)
    loaded: object = None                     # models.loading.LoadedModel
    model: object = None
    tokenizer: object = None
    groups: object = None
    plan: object = None
    saved_names: Optional[list] = None
    optimizer: object = None
    prompt_format: Optional[str] = None       # how prompts were rendered in training (tasks that generate)
    reference_note: Optional[list] = None     # the precomputed reference's line of the start report
    encoded: dict = field(default_factory=dict)
    pad_id: int = 0
    data_seed: int = 0
    set_train_mode: Optional[Callable] = None
    loop: object = None
    train_seconds: float = 0.0
    steps: int = 0
    best_step: Optional[int] = None
    metrics: dict = field(default_factory=dict)  # split -> metrics, once measured
    stored: int = 0                           # bytes of the saved weights


class Stage:
    """A stage: `key` is its recipe section; the hooks run in this order."""
    key: str = ""
    folders: tuple[str, ...] = ()  # run-directory folders it owns (kept when the task stage starts over)
    validate_first: bool = False   # the whole recipe is validated before the run starts (a stage that runs first)

    def __init__(self, recipe):
        self.recipe = recipe

    def before(self, ctx: RunContext) -> None:
        """Before the task's data and model load (adapt: the continued pre-training stage runs here)."""

    def load_data(self, recipe, notes: list):
        """(splits, label space, origin) when the stage provides the task's data (weak labels), else None."""
        return None

    def with_model(self, ctx: RunContext) -> None:
        """Once the model is loaded, before the method is applied (distill: the teacher, the objective)."""

    def with_encoded(self, ctx: RunContext) -> None:
        """Once the splits are encoded (weak: soft targets; distill: transfer rows, cached teacher outputs)."""

    def report(self, ctx: RunContext) -> list[str]:
        """Lines printed with the run's start report."""
        return []

    def after_training(self, ctx: RunContext) -> None:
        """After the task's training and before the final evaluation (weak: COSINE self-training)."""

    def summary(self, ctx: RunContext) -> dict:
        """Entries of summary.json, once the model is saved."""
        return {}

    def validate(self, recipe, space, tokenizer, model, kept, blocks_before) -> dict:
        """What `tuneforge validate` reports of the stage, having checked what can be checked without training."""
        return {}
