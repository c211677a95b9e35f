"""`merge(run_dir)`: fold a LoRA / DoRA / (IA)^3 adapter into the base weights, checked before anything is written.

The merged model's outputs are compared with the adapter model's on held-out inputs (the run's validation
data, else its test data, else a file the user gives); when they differ beyond float tolerance the merge is
refused and the measured difference reported. A merge that silently changes the model is never written.

A QLoRA run's base is 4-bit or 8-bit: its weights are dequantized first (bitsandbytes, through PEFT), the adapter
is folded into those full-precision weights, and the check compares with the dequantized adapter model. How far the
merged model is from the quantized model that was trained (its compute dtype rounds differently) is reported too.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from . import runlock
from .adapters import MERGEABLE, adapter_kind, read_adapter_method
from .data.splits import load_examples
from .errors import RunDirError, TuneforgeError
from .inference import Predictor, require_run


class MergeError(TuneforgeError):
    pass


MERGED_MARKER = "merged_from.json"  # written into every merged model folder; only such folders are replaced


def _check_out_dir(out_dir: Path, run_dir: Path, overwrite: bool) -> None:
    """The merged model gets a folder of its own: never the run's own files, a folder holding runs, or a folder
    tuneforge did not write."""
    from .rundir import RUN_MARKER

    out, run = out_dir.resolve(), run_dir.resolve()
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out_dir} is a file; give a folder")
    if out == run or out in run.parents:
        raise RunDirError(f"--out {out_dir} holds the run itself; give a folder of its own (default: RUN_DIR/merged)")
    if run in out.parents and out.relative_to(run).parts[0] != "merged":
        raise RunDirError(f"--out {out_dir} is inside the run's own files; use RUN_DIR/merged or a folder elsewhere")
    if out.exists() and any(out.iterdir()):
        if any(out.rglob(RUN_MARKER)):
            raise RunDirError(f"--out {out_dir} holds tuneforge runs; give a folder of its own")
        if not (out / MERGED_MARKER).exists():
            raise RunDirError(f"--out {out_dir} is not empty and is not a merged model tuneforge wrote; nothing in it "
                              "is touched, even with --overwrite. Give another folder")
        if not overwrite:
            raise RunDirError(f"{out_dir} holds an earlier merge; pass --overwrite to replace it, or --out another folder")


@dataclass
class MergeReport:
    out_dir: str
    method: str
    examples: int
    inputs: str
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    quantized_max_abs_diff: Optional[float] = None  # QLoRA: merged model against the quantized adapter model

    def to_json(self) -> dict:
        return asdict(self)


def _held_out(predictor: Predictor, data: Optional[str | Path], n: int):
    recipe = predictor.recipe
    if data is not None:
        examples = predictor._examples(data, None, None, with_labels=False)
        return examples[:n], str(data)
    try:
        splits, _, origin = load_examples(recipe.data, recipe.task_kind)
    except TuneforgeError as e:
        raise MergeError(f"could not read the run's data to check the merge ({e}); give inputs with --data FILE") from None
    for name in ("validation", "test"):
        if splits.get(name):
            return splits[name][:n], f"{name} split ({origin.get(name, name)})"
    return splits["train"][:n], "train split (the run has no held-out split)"


def _merge_and_unload(model):
    """PEFT's merge, with the trained head copies put in place first: PEFT's (IA)^3 unloading assumes every
    saved module has a `weight` and fails on a BERT pooler."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.base_model.model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = model.base_model.model.get_submodule(parent_name) if parent_name else model.base_model.model
            setattr(parent, child, module.modules_to_save[module.active_adapters[0]])
    return model.merge_and_unload(safe_merge=True)


@runlock.in_scope  # the output folder is locked from its check until the merged model is written
def merge(run_dir: str | Path, out: Optional[str | Path] = None, *, overwrite: bool = False,
          data: Optional[str | Path] = None, examples: int = 64, atol: float = 1e-4, rtol: float = 1e-4,
          console=None, device: Optional[str] = None) -> MergeReport:
    """Write RUN_DIR/merged (or `out`): a standalone Hugging Face model with the adapter folded in.

    Refuses (MergeError, nothing written) when the merged model's logits differ from the adapter model's by
    more than atol + rtol * max|logit| on `examples` held-out inputs.
    """
    from .report import console as default_console
    from .rundir import save_model

    console = console or default_console()
    if examples < 1:
        raise MergeError(f"examples: {examples}; the merge is checked on at least 1 input (default 64)")
    if not (atol >= 0 and rtol >= 0) or max(atol, rtol) == float("inf"):
        raise MergeError(f"atol {atol}, rtol {rtol}: tolerances are finite numbers of 0 or more (default 1e-4)")
    run_dir = require_run(run_dir)  # a run, its weights safetensors: before anything loads
    adapter_dir = run_dir / "adapter"
    if not adapter_kind(adapter_dir):
        raise RunDirError(f"{run_dir} is a full-model run (method {_method_of(run_dir)!r}), not an adapter run: its "
                          f"model/ folder ({run_dir / 'model'}) already is a standalone Hugging Face model, with "
                          "nothing to merge; use it as it is. merge folds a lora, dora or ia3 adapter into its base")
    method = read_adapter_method(adapter_dir)
    if method not in MERGEABLE:
        why = {"bottleneck": "its adapters hold a non-linearity between two projections, so no weight matrix equals them",
               "prefix": "its learned keys and values are extra attention positions, not a change to any weight",
               "prompt": "its soft prompt is extra input embeddings, not a change to any weight"}.get(method, "")
        raise MergeError(f"{run_dir}: a {method} adapter cannot be merged: {why}. Use it as it is "
                         f"(tuneforge predict {run_dir}); merge works for {', '.join(MERGEABLE)}")
    out_dir = Path(out) if out else run_dir / "merged"
    runlock.refuse_if_locked(run_dir)  # a run still training is merged once it has finished
    runlock.refuse_if_locked(out_dir)
    _check_out_dir(out_dir, run_dir, overwrite)
    # The run too, for the whole merge: a `train --overwrite` of it must not empty it under the merge.
    runlock.acquire(run_dir, "a merge of its adapter")
    runlock.acquire(out_dir, "a merged model")

    predictor = Predictor(run_dir, device=device)
    inputs, described = _held_out(predictor, data, examples)
    if not inputs:
        raise MergeError("no inputs to check the merge on; give a file with --data")
    trained = None
    with torch.no_grad():
        before = predictor.logits(inputs).float()
        if predictor.recipe.model.quantization:
            trained, before = before, None
            predictor.run.model = dequantized_adapter_model(predictor)
            before = predictor.logits(inputs).float()
        merged = _merge_and_unload(predictor.run.model)
        merged.eval()
        predictor.run.model = merged
        after = predictor.logits(inputs).float()
    diff = float((after - before).abs().max())
    scale = float(before.abs().max())
    tolerance = atol + rtol * scale
    report = MergeReport(out_dir=str(out_dir), method=method, examples=len(inputs), inputs=described,
                         max_abs_diff=diff, max_abs_logit=scale, tolerance=tolerance,
                         quantized_max_abs_diff=float((after - trained).abs().max()) if trained is not None else None)
    if not diff <= tolerance:  # also catches NaN
        raise MergeError(f"merged model's outputs differ from the adapter model's by {diff:.3g} (largest absolute "
                         f"logit difference over {len(inputs)} inputs from the {described}), above the tolerance "
                         f"{tolerance:.3g}; nothing was written")
    # The marker is written inside the folder before it takes its name: a kill never leaves a merged folder that a
    # later merge --overwrite would refuse as foreign.
    save_model(merged, predictor.run.tokenizer, out_dir,
               files={MERGED_MARKER: json.dumps({"run_dir": str(run_dir.resolve()), **report.to_json()}, indent=1)})
    console.print(f"merged {method} adapter into {out_dir}: outputs match the adapter model's within "
                  f"{diff:.2e} (tolerance {tolerance:.2e}) on {len(inputs)} inputs from the {described}")
    if trained is not None:
        console.print(f"  base dequantized from {predictor.recipe.model.quantization} first; against the quantized "
                      f"model that was trained, the largest logit difference is {report.quantized_max_abs_diff:.3g}")
    return report


def _method_of(run_dir: Path) -> str:
    """The method.name a run's recipe.yaml names (for messages; '?' when it cannot be read)."""
    import yaml

    try:
        return str(yaml.safe_load((run_dir / "recipe.yaml").read_text())["method"]["name"])
    except Exception:  # noqa: BLE001 - only a message's detail
        return "?"


def dequantized_adapter_model(predictor: Predictor):
    """The run's adapter on a full-precision copy of its quantized base: every 4-bit / 8-bit weight dequantized
    (what the adapter was trained against), everything else as loaded."""
    from peft.utils.integrations import dequantize_module_weight

    from .adapters import attach_saved_adapter
    from .runs import load_base_for

    recipe = predictor.recipe
    plain = recipe.model_copy(update={"model": recipe.model.model_copy(update={"quantization": None})})
    base = load_base_for(plain, predictor.space, predictor.runtime).model.to(predictor.runtime.device)
    own = dict(base.named_modules())
    copied = 0
    for name, module in predictor.run.model.named_modules():
        if type(module).__name__ not in ("Linear4bit", "Linear8bitLt") or not hasattr(module.weight, "dtype"):
            continue
        if not hasattr(module, "in_features") or hasattr(module, "base_layer"):
            continue  # PEFT's wrapper of a quantized layer: its base_layer is the quantized one
        target = own[name.removeprefix("base_model.model.").removesuffix(".base_layer")]
        target.weight.data.copy_(dequantize_module_weight(module).to(target.weight.dtype))
        copied += 1
    if not copied:
        raise MergeError(f"{predictor.run.run_dir}: model.quantization is {recipe.model.quantization!r} but no "
                         "quantized layer was found to dequantize")
    model = attach_saved_adapter(base, predictor.run.adapter_dir)
    model.eval()
    return model
