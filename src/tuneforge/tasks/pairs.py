"""What the tasks trained on preference pairs share (reward-model, preference): reading (prompt, chosen,
rejected) rows, and that a finished run is evaluated on pairs, not asked for labels."""
from __future__ import annotations

import sys
from typing import Optional

from ..errors import DataError
from .base import Task


class PairsTask(Task):
    named_labels = False

    def check_recipe(self, recipe) -> None:
        d = recipe.data
        if d.dataset:
            raise ValueError(f"data.dataset {d.dataset!r} has no preference pairs or prompts; give data.train "
                             f"(a file with {d.prompt_column!r}, {d.chosen_column!r} and {d.rejected_column!r} columns)")

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        from ..data.preference import read_preference_examples

        report = notes.append if notes is not None else None
        return read_preference_examples(path, spec.format, spec.prompt_column, spec.chosen_column,
                                        spec.rejected_column, spec.drop_invalid_pairs, report)

    def inputs(self, recipe, run_dir, data=None, texts=None, text_pairs=None, images=None, with_labels=True) -> list:
        if data is None:
            raise DataError([f"{run_dir} is a {self.name} model: evaluate it on a file of preference pairs"
                             + self.other_uses()])
        notes: list[str] = []
        examples = self.read_file(recipe.data, data, notes)
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        return examples

    def other_uses(self) -> str:
        return ""
