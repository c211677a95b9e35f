"""Open a finished run: its recipe, its model (with its adapter, if any) on a device, tokenizer and labels."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .adapters import adapter_kind, attach_saved_adapter
from .data.dataset import LabelSpace
from .errors import RunDirError
from .models import load_for_recipe
from .recipe import Recipe, load_recipe


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


def require_run(run_dir: str | Path) -> Path:
    """A run folder to use (predict, evaluate, merge, generate, score): it exists, is a tuneforge run, and holds its weights as safetensors
    (tuneforge never unpickles a .bin file: unpickling runs code). Checked before anything loads."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"no run at {str(run_dir)!r}: the folder does not exist; give a finished run's folder (the "
                          "output.dir of its recipe)")
    if not run_dir.is_dir():
        raise RunDirError(f"{str(run_dir)!r} is a file, not a run folder; give the run's output.dir")
    if not (run_dir / "recipe.yaml").exists():
        raise RunDirError(f"{str(run_dir)!r} is not a tuneforge run (no recipe.yaml in it); give the folder a "
                          "finished `tuneforge train` wrote (its output.dir)")
    if adapter_kind(run_dir / "adapter"):
        require_safetensors(run_dir / "adapter", "adapter")
    elif (run_dir / "model").is_dir():
        require_safetensors(run_dir / "model", "model")
    elif not (run_dir / "adapter").exists():
        raise RunDirError(f"{run_dir}: the run holds no model yet (neither model/ nor adapter/); finish it with "
                          "`tuneforge train RECIPE --resume`")
    return run_dir


def require_safetensors(folder: Path, kind: str) -> None:
    """`folder` (a saved model or adapter) holds safetensors weights, not only pickled .bin files."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(folder.glob("adapter_model*.bin" if kind == "adapter" else "pytorch_model*.bin"))
    if pickled:
        convert = ("load it with transformers (AutoModelFor...from_pretrained(folder)) and save it with "
                   "save_pretrained(folder, safe_serialization=True)") if kind == "model" else (
                   "load it with peft (PeftModel.from_pretrained(base, folder)) and save it with "
                   "save_pretrained(folder, safe_serialization=True)")
        raise RunDirError(f"{pickled[0]}: tuneforge loads weights from .safetensors files only and never unpickles a "
                          f".bin file (unpickling can run code). If you trust the file, convert it once: {convert}")
    raise RunDirError(f"{folder}: no weights file (*.safetensors) in the run's {kind}/ folder; the run was copied "
                      "without its weights or did not finish: copy them too, or train the run again")


def read_run(run_dir: str | Path) -> tuple[Path, Recipe]:
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
    refused = recipe.task_kind.use_error(run_dir, "open")
    if refused:
        raise RunDirError(refused)
    return run_dir, recipe


def run_labels(run_dir: Path, recipe: Recipe) -> LabelSpace:
    if not (run_dir / "summary.json").exists():
        raise RunDirError(f"{run_dir}: the run has not finished (no summary.json); finish it with "
                          "`tuneforge train RECIPE --resume`")
    labels = json.loads((run_dir / "summary.json").read_text()).get("labels") or []
    return LabelSpace(recipe.task_kind.saved_labels(list(labels)))


def load_base_for(recipe: Recipe, space: LabelSpace, runtime=None):
    """The run's base model with a head of the run's shape (its weights come from the adapter); a quantized base
    (model.quantization) is quantized again as in training, on the runtime's device."""
    t = recipe.training
    return load_for_recipe(recipe, recipe.task_kind, space, t.head_seed if t.head_seed is not None else t.seed,
                           runtime)


def open_run(run_dir: str | Path, device: Optional[str] = None) -> OpenRun:
    """A finished run's model on its device: `device` (as training.device), else the run's training.device. One
    process: using a run is not data-parallel."""
    from .engine.runtime import runtime_for

    run_dir, recipe = read_run(require_run(run_dir))  # a run, its weights safetensors: before anything loads
    runtime = runtime_for(recipe.training, device=device, distributed=False)
    run = _load_run(run_dir, recipe, runtime)
    run.runtime = runtime
    if not recipe.model.quantization:  # (a quantized base is placed as it loads)
        run.model.to(runtime.device)
    return run


def _load_run(run_dir: Path, recipe: Recipe, runtime) -> OpenRun:
    adapter_dir = run_dir / "adapter"
    if adapter_kind(adapter_dir):
        space = run_labels(run_dir, recipe)
        loaded = load_base_for(recipe, space, runtime)
        model = attach_saved_adapter(loaded.model, adapter_dir, name=peft_name(0))
        model.eval()
        return OpenRun(run_dir, recipe, model, loaded.tokenizer, space, adapter_dir)
    model, tokenizer, names = recipe.task_kind.open_saved(run_dir / "model")
    return OpenRun(run_dir, recipe, model, tokenizer, LabelSpace(names))


def adapter_name(run_dir: Path) -> str:
    """An adapter's name: its run folder's name."""
    return run_dir.resolve().name or "adapter"


def peft_name(index: int) -> str:
    # PEFT adapter names become module keys, and one that is part of a PEFT prefix such as 'lora_' or
    # 'prefix_tuning_' can be mistaken for it when weights load: numbered names avoid both.
    return f"adapter_{index}"
