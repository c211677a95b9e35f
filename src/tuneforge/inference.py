"""Use a finished run: evaluate it on a labelled file, or predict labels for a file or texts."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .adapters import adapter_kind, load_bottleneck_state, read_adapter_method
from .adapters.bottleneck import CONFIG_NAME as BOTTLENECK_CONFIG
from .models.sources import resolve_model_path
from .data.dataset import LabelSpace
from .engine.evaluate import run_evaluation
from .errors import DataError, RunDirError
from .models import load_for_recipe
from .recipe import Recipe
from .runs import (OpenRun, adapter_name, load_base_for, open_run, peft_name, read_run,  # noqa: F401
                   require_run, require_safetensors, run_labels)
from .tasks import task_for


def check_output_file(path: str | Path, option: str = "--output") -> Path:
    """A file the command will write, checked before any model loads: not a folder, in a folder that exists and
    can be written."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{option} {str(path)!r} is a folder; give a file path, e.g. {path / 'predictions.jsonl'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise RunDirError(f"{option} {str(path)!r}: the folder {str(parent)!r} does not exist; create it first "
                          f"(mkdir -p {parent}) or give a path in an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RunDirError(f"{option} {str(path)!r}: no permission to write there; give a path you can write")
    return path


def evaluate(run_dir: str | Path, data: str | Path, batch_size: Optional[int] = None,
             adapter: Optional[str] = None, device: Optional[str] = None,
             columns: Optional[dict[str, str]] = None) -> dict[str, float]:
    """Metrics of a finished run on a labelled file with the run's columns (`device`: as training.device; default:
    the run's own setting; `columns`: the file's column names where they differ, e.g. {"label_column": "y"})."""
    return Predictor(run_dir, adapter, device=device).evaluate(data, batch_size, columns=columns)


def predict(run_dir: str | Path, data: str | Path | None = None, texts: Sequence[str] | None = None,
            text_pairs: Sequence[str] | None = None, batch_size: Optional[int] = None,
            adapter: Optional[str] = None, images: Sequence[str | Path] | None = None,
            device: Optional[str] = None, columns: Optional[dict[str, str]] = None) -> list[dict]:
    """Predictions for a file (labels not needed), for texts, or for images (files or folders): label, score
    (and all scores). `adapter`: another adapter run (or its adapter folder) on the same base model to predict with;
    `columns`: the file's column names where they differ from the run's, e.g. {"text_column": "sentence"}."""
    return Predictor(run_dir, adapter, device=device).predict(data, texts, text_pairs, batch_size, images=images,
                                                              columns=columns)


def blank_texts(texts: Sequence[str] | None, name: str) -> list[str]:
    """A problem for each empty or whitespace-only text (training refuses them too), by its position (1-based)."""
    return [f"{name} #{i} of {len(texts)} is {'empty' if not t else 'only whitespace'} ({t!r}); give the text itself "
            "(training refuses empty texts too)" for i, t in enumerate(texts or [], 1) if not str(t).strip()]


# The recipe's data keys naming the columns a file to predict on is read by (predict --text-column and the like),
# and those a labelled file adds for evaluate.
PREDICT_COLUMNS = ("text_column", "text_pair_column", "tokens_column", "question_column", "context_column",
                   "image_column")
EVALUATE_COLUMNS = PREDICT_COLUMNS + ("label_column", "tags_column", "answer_column")


@dataclass
class _AdapterEntry:
    recipe: Recipe
    space: LabelSpace
    folder: Path                   # resolved adapter folder: what identifies the adapter
    method: str
    peft_name: str                 # its name inside the PEFT model
    bottleneck: Optional[dict] = None  # bottleneck adapters: their config
    state: Optional[dict] = None   # bottleneck adapters: their weights, copied in on switching


class Predictor:
    """A finished run ready to predict. Adapters trained on the same base model can be added and switched
    between without loading the base again: PEFT keeps each adapter (and its head) beside the others and
    activates one; bottleneck adapters' weights are copied into the one set of adapter modules."""

    def __init__(self, run_dir: str | Path, adapter: Optional[str | Path] = None, device: Optional[str] = None):
        """`adapter`: another adapter (see add_adapter) to load and make active at once; `device`: where to compute
        (as training.device; default: the run's training.device)."""
        self.run = open_run(run_dir, device)
        self.runtime = self.run.runtime
        self.adapters: dict[str, _AdapterEntry] = {}
        self.active: Optional[str] = None
        if self.run.adapter_dir is not None:
            name = adapter_name(self.run.run_dir)
            self.adapters[name] = self._entry(self.run.recipe, self.run.space, self.run.adapter_dir)
            self.active = name
        if adapter:
            self.use(self.add_adapter(adapter))

    @property
    def recipe(self) -> Recipe:
        return self.adapters[self.active].recipe if self.active else self.run.recipe

    @property
    def space(self) -> LabelSpace:
        return self.adapters[self.active].space if self.active else self.run.space

    def _entry(self, recipe, space, folder) -> _AdapterEntry:
        method = read_adapter_method(folder)
        entry = _AdapterEntry(recipe, space, folder.resolve(), method, peft_name(len(self.adapters)))
        if method == "bottleneck":
            entry.bottleneck = json.loads((folder / BOTTLENECK_CONFIG).read_text())
            entry.state = load_bottleneck_state(folder)
        return entry

    def resolve(self, name_or_dir: str | Path) -> tuple[Path, Path]:
        """(run directory, adapter folder) of an adapter given as a run directory, an adapter folder, or the
        name of a run directory beside this run's."""
        candidates = [Path(name_or_dir), self.run.run_dir.parent / str(name_or_dir)]
        for c in candidates:
            if adapter_kind(c / "adapter"):
                require_safetensors(c / "adapter", "adapter")
                return c, c / "adapter"
            if adapter_kind(c) and (c.parent / "recipe.yaml").exists():
                require_safetensors(c, "adapter")
                return c.parent, c
        raise RunDirError(f"adapter {str(name_or_dir)!r}: not an adapter run directory, an adapter folder, or the name "
                          f"of a run beside {self.run.run_dir} (looked in {', '.join(str(c) for c in candidates)})")

    def add_adapter(self, name_or_dir: str | Path) -> str:
        """Load another adapter onto this run's base model; returns its name (its run folder's name, with a
        number added when another loaded adapter has that name)."""
        if self.run.adapter_dir is None:
            raise RunDirError(f"{self.run.run_dir} holds a fully fine-tuned model, not an adapter; adapters are "
                              "added to an adapter run's base model")
        run_dir, folder = self.resolve(name_or_dir)
        for known, entry in self.adapters.items():
            if entry.folder == folder.resolve():
                return known
        name, n = adapter_name(run_dir), 2
        while name in self.adapters:
            name, n = f"{adapter_name(run_dir)}-{n}", n + 1
        _, recipe = read_run(run_dir)
        space = run_labels(run_dir, recipe)
        mine = self.adapters[next(iter(self.adapters))]
        problems = []
        if resolve_model_path(recipe.model.name) != resolve_model_path(mine.recipe.model.name):
            problems.append(f"its base model is {recipe.model.name!r}, this run's is {mine.recipe.model.name!r}")
        cut = lambda r: (r.model.keep_layers, r.model.keep_every)  # noqa: E731
        if cut(recipe) != cut(mine.recipe):
            problems.append(f"its base keeps blocks {cut(recipe)} (model.keep_layers, keep_every), this run's "
                            f"{cut(mine.recipe)}")
        method = read_adapter_method(folder)
        if method != mine.method:
            problems.append(f"it is a {method} adapter and this run's is {mine.method}; one base holds one kind")
        if recipe.task_kind.num_outputs(len(space.names)) != mine.recipe.task_kind.num_outputs(len(mine.space.names)):
            problems.append(f"its head has {len(space.names) or 1} output(s) and this run's "
                            f"{len(mine.space.names) or 1}")
        if problems:
            raise RunDirError(f"adapter {str(name_or_dir)!r} cannot share {self.run.run_dir}'s base: "
                              + "; ".join(problems) + ". Predict with it on its own: tuneforge predict " + str(run_dir))
        entry = self._entry(recipe, space, folder)
        if entry.method == "bottleneck":
            layout = ("targets", "bottleneck_size", "non_linearity", "modules_to_save")
            differ = [k for k in layout if entry.bottleneck.get(k) != mine.bottleneck.get(k)]
            if differ or set(entry.state) != set(mine.state):
                raise RunDirError(f"adapter {str(name_or_dir)!r}: its bottleneck layout differs from this run's "
                                  f"({', '.join(differ) or 'weights'}); predict with it on its own")
        else:
            self.run.model.load_adapter(folder, adapter_name=entry.peft_name)
            self.run.model.to(self.runtime.device)
        self.adapters[name] = entry
        return name

    def use(self, name: str) -> None:
        """Make adapter `name` the active one."""
        if name not in self.adapters:
            raise RunDirError(f"no adapter named {name!r}; loaded: {', '.join(self.adapters)}")
        entry = self.adapters[name]
        if entry.method == "bottleneck":
            own = dict(self.run.model.named_parameters())
            with torch.no_grad():
                for k, v in entry.state.items():
                    own[k].copy_(v)
        else:
            self.run.model.set_adapter(entry.peft_name)
        self.run.model.eval()
        self.active = name

    def _examples(self, data, texts, text_pairs, with_labels: bool, images=None):
        return self.recipe.task_kind.inputs(self.recipe, self.run.run_dir, data, texts, text_pairs, images, with_labels)

    def _pad_id(self) -> int:
        return getattr(self.run.tokenizer, "pad_token_id", None) or 0

    def logits(self, examples, batch_size: Optional[int] = None) -> torch.Tensor:
        """The model's outputs on `examples` as one tensor (what a merged model must reproduce)."""
        split = self.recipe.task_kind.encode(self.recipe, self.run.tokenizer, examples, self.space)
        return self.recipe.task_kind.logits(self.run.model, split, batch_size or self.recipe.training.eval_batch_size,
                                            self._pad_id(), self.runtime)

    def _read_as(self, columns: Optional[dict[str, str]], allowed: tuple[str, ...]) -> Recipe:
        """The recipe, reading a file's columns under the names `columns` gives (data.text_column and the like)."""
        unknown = sorted(set(columns or {}) - set(allowed))
        if unknown:
            raise ValueError(f"columns: {', '.join(unknown)} are not columns read here ({', '.join(allowed)})")
        if not columns:
            return self.recipe
        return self.recipe.model_copy(update={"data": self.recipe.data.model_copy(update=columns)})

    def evaluate(self, data: str | Path, batch_size: Optional[int] = None,
                 columns: Optional[dict[str, str]] = None) -> dict[str, float]:
        recipe, space, kind = self.recipe, self.space, self.recipe.task_kind
        refused = kind.use_error(self.run.run_dir, "evaluate")
        if refused:
            raise DataError([refused])
        examples = kind.inputs(self._read_as(columns, EVALUATE_COLUMNS), self.run.run_dir, data, None, None, None,
                               True)
        problems: list[str] = []
        if kind.named_labels:
            kind.check_labels(examples, space, problems)
        if problems:
            raise DataError(problems)
        split = kind.encode(recipe, self.run.tokenizer, examples, space)
        return run_evaluation(self.run.model, split, self._task(), len(space.names), recipe.task.threshold,
                              batch_size or recipe.training.eval_batch_size, self._pad_id(), self.runtime)

    def _task(self):
        """The run's task; a policy's reference is its network with the adapter disabled, or for a whole-network
        run the base model it started from."""
        task = task_for(self.recipe)
        if task.uses_reward:
            from .rewards import load_reward
            task.bind(self.run.model, self.run.tokenizer, load_reward(self.recipe.task.reward))
        if task.has_reference and task.reference is None:
            from .tasks.preference import AdapterReference, CopyReference

            if self.active is not None:
                task.reference = AdapterReference()
            elif task.reference_needed(self.recipe):
                base = load_for_recipe(self.recipe, task, self.space, 0).model.to(self.runtime.device)  # cut alike
                task.reference = CopyReference(base)
        return task

    def predict(self, data: str | Path | None = None, texts: Sequence[str] | None = None,
                text_pairs: Sequence[str] | None = None, batch_size: Optional[int] = None,
                images: Sequence[str | Path] | None = None, columns: Optional[dict[str, str]] = None) -> list[dict]:
        """Predictions for a file, texts, or (image models) images: files or folders of them. `columns`: the
        file's column names where they differ from the run's recipe (data.text_column and the like)."""
        kind = self.recipe.task_kind
        refused = kind.use_error(self.run.run_dir, "predict")
        if refused:
            raise DataError([refused])
        problems = blank_texts(texts, "texts") + blank_texts(text_pairs, "text_pairs")
        if problems:
            raise DataError(problems)
        examples = kind.inputs(self._read_as(columns, PREDICT_COLUMNS), self.run.run_dir, data, texts, text_pairs,
                               images, False)
        split = kind.encode(self.recipe, self.run.tokenizer, examples, self.space)
        return kind.predictions(self.run.model, split, examples, self.space, self.recipe,
                                batch_size or self.recipe.training.eval_batch_size, self._pad_id(), self.runtime)


def write_predictions(records: list[dict], path: str | Path) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
