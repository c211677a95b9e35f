"""Use a finished run: evaluate it on a labelled file, or predict labels for a file or texts."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .adapters import adapter_kind, attach_saved_adapter, load_bottleneck_state, read_adapter_method
from .adapters.bottleneck import CONFIG_NAME as BOTTLENECK_CONFIG
from .assets import resolve_model_path
from .data.collate import encode_for
from .data.dataset import UNLABELLED_TASKS, LabelSpace, TextExample, check_labels, read_examples_from_file
from .engine.evaluate import run_evaluation, run_prediction
from .errors import DataError, RunDirError
from .models import load_for_recipe, load_run_model
from .recipe import GENERATIVE_TASKS, Recipe, load_recipe
from .tasks import get_task, task_for


@dataclass
class OpenRun:
    """A finished run loaded for use: its recipe, model (with its adapter, if any), tokenizer and labels."""
    run_dir: Path
    recipe: Recipe
    model: torch.nn.Module
    tokenizer: object
    space: LabelSpace
    adapter_dir: Optional[Path] = None  # None: a full model in run_dir/model
    runtime: object = None              # where it computes (engine.runtime.Runtime)


def _read_run(run_dir: str | Path) -> tuple[Path, Recipe]:
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").exists():
        raise RunDirError(f"{run_dir}: not a tuneforge run directory (no recipe.yaml)")
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.adapt is not None:  # the task stage started from the adapted model, not model.name
        adapted = run_dir / "adapt" / "model"
        if not (adapted / "config.json").exists():
            raise RunDirError(f"{run_dir}: the run adapted its model first, and the adapted model "
                              f"({adapted}) is missing; train the run again")
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"name": str(adapted)})})
    if recipe.task.type == "masked-lm":
        raise RunDirError(f"{run_dir}: a masked-lm run adapts an encoder; it predicts no labels. Fine-tune it on a "
                          f"task (model.name: {run_dir}), or continue its pre-training")
    return run_dir, recipe


def _run_labels(run_dir: Path, recipe: Recipe) -> LabelSpace:
    if not (run_dir / "summary.json").exists():
        raise RunDirError(f"{run_dir}: the run has not finished (no summary.json); finish it with "
                          "`tuneforge train RECIPE --resume`")
    labels = json.loads((run_dir / "summary.json").read_text()).get("labels") or []
    return LabelSpace(list(labels) if recipe.task.type != "regression" else [])


def load_base_for(recipe: Recipe, space: LabelSpace, runtime=None):
    """The run's base model with a head of the run's shape (its weights come from the adapter); a quantized base
    (model.quantization) is quantized again as in training, on the runtime's device."""
    t = recipe.training
    return load_for_recipe(recipe, get_task(recipe.task.type), space, t.head_seed if t.head_seed is not None else t.seed,
                           runtime)


def _is_image(recipe: Recipe) -> bool:
    return recipe.task.type == "image-classification"


def open_run(run_dir: str | Path, device: Optional[str] = None) -> OpenRun:
    """A finished run's model on its device: `device` (as training.device), else the run's training.device. One
    process: using a run is not data-parallel."""
    from .engine.runtime import runtime_for

    run_dir, recipe = _read_run(run_dir)
    runtime = runtime_for(recipe.training, device=device, distributed=False)
    run = _load_run(run_dir, recipe, runtime)
    run.runtime = runtime
    if not recipe.model.quantization:  # (a quantized base is placed as it loads)
        run.model.to(runtime.device)
    return run


def _load_run(run_dir: Path, recipe: Recipe, runtime) -> OpenRun:
    adapter_dir = run_dir / "adapter"
    if adapter_kind(adapter_dir):
        space = _run_labels(run_dir, recipe)
        loaded = load_base_for(recipe, space, runtime)
        model = attach_saved_adapter(loaded.model, adapter_dir, name=_peft_name(0))
        model.eval()
        return OpenRun(run_dir, recipe, model, loaded.tokenizer, space, adapter_dir)
    if _is_image(recipe):
        from .models.vision import load_image_run_model
        model, tokenizer = load_image_run_model(run_dir / "model")
    elif recipe.task.type in GENERATIVE_TASKS:
        from .models.loading import load_causal_run_model
        model, tokenizer = load_causal_run_model(run_dir / "model")
        return OpenRun(run_dir, recipe, model, tokenizer, LabelSpace([]))
    else:
        model, tokenizer = load_run_model(run_dir / "model")
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    names = [id2label[i] for i in range(len(id2label))] if recipe.task.type != "regression" else []
    return OpenRun(run_dir, recipe, model, tokenizer, LabelSpace(names))


def _adapter_name(run_dir: Path) -> str:
    """An adapter's name: its run folder's name."""
    return run_dir.resolve().name or "adapter"


def _peft_name(index: int) -> str:
    # PEFT adapter names become module keys, and one that is part of a PEFT prefix such as 'lora_' or
    # 'prefix_tuning_' can be mistaken for it when weights load: numbered names avoid both.
    return f"adapter_{index}"


def _columns(recipe: Recipe):
    d = recipe.data
    if d.dataset:
        return "text", None, "label"
    return d.text_column, d.text_pair_column, d.label_column


def evaluate(run_dir: str | Path, data: str | Path, batch_size: Optional[int] = None,
             adapter: Optional[str] = None, device: Optional[str] = None) -> dict[str, float]:
    """Metrics of a finished run on a labelled file with the run's columns (`device`: as training.device; default:
    the run's own setting)."""
    return Predictor(run_dir, adapter, device=device).evaluate(data, batch_size)


def predict(run_dir: str | Path, data: str | Path | None = None, texts: Sequence[str] | None = None,
            text_pairs: Sequence[str] | None = None, batch_size: Optional[int] = None,
            adapter: Optional[str] = None, images: Sequence[str | Path] | None = None,
            device: Optional[str] = None) -> list[dict]:
    """Predictions for a file (labels not needed), for texts, or for images (files or folders): label, score
    (and all scores). `adapter`: another adapter run (or its adapter folder) on the same base model to predict with."""
    return Predictor(run_dir, adapter, device=device).predict(data, texts, text_pairs, batch_size, images=images)


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
            name = _adapter_name(self.run.run_dir)
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
        entry = _AdapterEntry(recipe, space, folder.resolve(), method, _peft_name(len(self.adapters)))
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
                return c, c / "adapter"
            if adapter_kind(c) and (c.parent / "recipe.yaml").exists():
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
        name, n = _adapter_name(run_dir), 2
        while name in self.adapters:
            name, n = f"{_adapter_name(run_dir)}-{n}", n + 1
        _, recipe = _read_run(run_dir)
        space = _run_labels(run_dir, recipe)
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
        if get_task(recipe.task.type).num_outputs(len(space.names)) != \
                get_task(mine.recipe.task.type).num_outputs(len(mine.space.names)):
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
        recipe = self.recipe
        if recipe.task.type == "grpo":
            if data is None:
                raise DataError([f"{self.run.run_dir} is a grpo policy: evaluate it on a file of prompts (mean reward "
                                 "of sampled completions), or generate with `tuneforge generate`"])
            from .data.prompts import read_prompt_examples
            return read_prompt_examples(data, recipe.data.format, recipe.data.prompt_column)
        if recipe.task.type in ("preference", "reward-model"):
            if data is None:
                raise DataError([f"{self.run.run_dir} is a {recipe.task.type} model: evaluate it on a file of "
                                 "preference pairs" + (" or score responses with `tuneforge score`"
                                                       if recipe.task.type == "reward-model" else "")])
            from .data.preference import read_preference_examples
            d = recipe.data
            return read_preference_examples(data, d.format, d.prompt_column, d.chosen_column, d.rejected_column,
                                            d.drop_invalid_pairs, lambda note: print(f"warning: {note}", file=sys.stderr))
        if recipe.task.type == "causal-lm":
            if data is None:
                raise DataError([f"{self.run.run_dir} is a language model: evaluate it on a file of its kind of rows "
                                 "(loss, perplexity); it writes text with `tuneforge generate`, not predictions"])
            from .data.causal import read_causal_examples
            d = recipe.data
            return read_causal_examples(data, d.format, d.text_column, d.prompt_column, d.completion_column,
                                        d.messages_column, d.train_on)
        text_col, pair_col, label_col = _columns(recipe)
        if _is_image(recipe):
            return self._image_examples(data, texts, images, label_col if with_labels else None)
        if images is not None:
            raise DataError([f"{self.run.run_dir} is a {recipe.task.type} model of texts; give texts (--text) or a "
                             "file (--data), not images"])
        if (data is None) == (texts is None):
            raise ValueError("give either data (a file) or texts")
        if data is not None:
            return read_examples_from_file(data, recipe.task.type, text_col, pair_col, label_col if with_labels else None,
                                           recipe.data.label_separator)
        if pair_col and text_pairs is None:
            raise DataError([f"this model reads text pairs; give the second text too (column {pair_col!r})"])
        if not pair_col and text_pairs is not None:
            raise DataError(["this model reads single texts, not pairs; drop the second texts (--text-pair)"])
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise DataError([f"{len(texts)} text(s) but {len(text_pairs)} second text(s); give one --text-pair per --text"])
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        return [TextExample(text=t, text_pair=p, source=f"text {i + 1}") for i, (t, p) in enumerate(zip(texts, pairs))]

    def _image_examples(self, data, texts, images, label_col):
        from .data.images import read_image_examples

        if texts is not None:
            raise DataError([f"{self.run.run_dir} classifies images; give images (--image) or --data, not texts"])
        sources = [data] if data is not None else list(images or [])
        if not sources:
            raise ValueError("give data (a folder, table or arrays) or images")
        fmt = self.recipe.data.format if data is not None and not self.recipe.data.dataset else "auto"
        examples, problems = [], []
        for source in sources:
            try:
                examples.extend(read_image_examples(source, fmt, self.recipe.data.image_column, label_col))
            except DataError as e:
                problems.extend(e.problems)
        if problems:
            raise DataError(problems)
        return examples

    def logits(self, examples, batch_size: Optional[int] = None) -> torch.Tensor:
        split = encode_for(self.recipe, self.run.tokenizer, examples, self.space)
        if self.recipe.task.type == "reward-model":  # each pair is two rows: both rewards
            from .engine.evaluate import run_pair_rewards
            return run_pair_rewards(self.run.model, split, batch_size or self.recipe.training.eval_batch_size,
                                    getattr(self.run.tokenizer, "pad_token_id", None) or 0)
        if self.recipe.task.type == "grpo":  # prompts alone: the logits predicting each prompt token after the first
            from .data.collate import CausalLMSplit
            split = CausalLMSplit(split.prompt_ids, [list(ids) for ids in split.prompt_ids])
        if self.recipe.task.type in GENERATIVE_TASKS:  # rows of different lengths: logits where targets are predicted
            from .engine.evaluate import run_target_logits
            return run_target_logits(self.run.model, split, batch_size or self.recipe.training.eval_batch_size,
                                     getattr(self.run.tokenizer, "pad_token_id", None) or 0)
        return run_prediction(self.run.model, split, batch_size or self.recipe.training.eval_batch_size,
                              getattr(self.run.tokenizer, "pad_token_id", None) or 0, self.runtime)

    def evaluate(self, data: str | Path, batch_size: Optional[int] = None) -> dict[str, float]:
        recipe, space = self.recipe, self.space
        examples = self._examples(data, None, None, with_labels=True)
        problems: list[str] = []
        if recipe.task.type not in UNLABELLED_TASKS:
            check_labels(recipe.task.type, examples, space, problems)
        if problems:
            raise DataError(problems)
        split = encode_for(recipe, self.run.tokenizer, examples, space)
        task = self._task()
        return run_evaluation(self.run.model, split, task, len(space.names), recipe.task.threshold,
                              batch_size or recipe.training.eval_batch_size,
                              getattr(self.run.tokenizer, "pad_token_id", None) or 0, self.runtime)

    def _task(self):
        """The run's task; a preference policy's reference is its network with the adapter disabled, or for a
        whole-network run the base model it started from."""
        task = task_for(self.recipe)
        if self.recipe.task.type == "grpo":
            from .data.causal import stop_ids
            from .tasks.grpo import load_reward
            task.reward, task.tokenizer = load_reward(self.recipe.task.reward), self.run.tokenizer
            task.stop_ids = stop_ids(self.run.tokenizer, self.run.model)
        needs_reference = task.beta > 0 if self.recipe.task.type == "grpo" else not getattr(task, "reference_free", True)
        if self.recipe.task.type in ("preference", "grpo") and task.reference is None:
            from .tasks.preference import AdapterReference, CopyReference

            if self.active is not None:
                task.reference = AdapterReference()
            elif needs_reference:
                from .models.loading import load_for_recipe
                base = load_for_recipe(self.recipe, task, self.space, 0).model.to(self.runtime.device)  # cut alike
                task.reference = CopyReference(base)
        return task

    def predict(self, data: str | Path | None = None, texts: Sequence[str] | None = None,
                text_pairs: Sequence[str] | None = None, batch_size: Optional[int] = None,
                images: Sequence[str | Path] | None = None) -> list[dict]:
        """Predictions for a file, texts, or (image models) images: files or folders of them."""
        if self.recipe.task.type in ("preference", "reward-model", "grpo"):
            what = "generate with `tuneforge generate`" if self.recipe.task.type != "reward-model" else \
                "score (prompt, response) pairs with `tuneforge score`"
            raise DataError([f"{self.run.run_dir} is a {self.recipe.task.type} model: {what}"])
        examples = self._examples(data, texts, text_pairs, with_labels=False, images=images)
        logits = self.logits(examples, batch_size)
        kind, space, threshold = self.recipe.task.type, self.space, self.recipe.task.threshold
        out = []
        for ex, row in zip(examples, logits):
            if kind == "image-classification":
                record = {"image": ex.describe()}
            elif ex.text_pair is None:
                record = {"text": ex.text}
            else:
                record = {"text": ex.text, "text_pair": ex.text_pair}
            if kind == "regression":
                record["score"] = float(row[0])
            elif kind == "multi-label":
                probs = torch.sigmoid(row)
                record["labels"] = [space.names[i] for i in range(len(probs)) if probs[i] > threshold]
                record["scores"] = {space.names[i]: round(float(p), 6) for i, p in enumerate(probs)}
            else:
                probs = torch.softmax(row, -1)
                best = int(probs.argmax())
                record["label"], record["score"] = space.names[best], round(float(probs[best]), 6)
                record["scores"] = {space.names[i]: round(float(p), 6) for i, p in enumerate(probs)}
            out.append(record)
        return out


def write_predictions(records: list[dict], path: str | Path) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
