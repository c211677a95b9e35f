"""Standardized regression targets: a model trained on (target - mean) / std of the training split, whose outputs
are nonetheless in the targets' own units at every moment, and whose saved folder gives those units by itself.

How: the head's output layer (the one linear layer with a single output) keeps its raw output z in training-space
units, and a forward hook maps it to std * z + mean. The loss is the MSE in the targets' units divided by std², which
is exactly the MSE of z against the standardized target; so the optimizer sees a unit-scale problem whatever the
targets' scale (Adam's steps are about lr in each weight, so a 0-5 target otherwise needs a few times the steps just
to reach the scale), while evaluation, prediction and anything else that reads the model's logits read real units.
At save, the map is folded into the layer itself (weight * std, bias * std + mean), which is what any Hugging Face
tool then loads; checkpoints keep the raw weights, which the hook maps again on resume.

A head without a bias (the `score` layer of causal-LM classifiers, `Linear(bias=False)` in transformers) has no place
for the mean: such a head is trained on target / std (scaled, not centred), so that its saved folder still needs no
tuneforge code. Where no single output layer can be found, the targets are used as they are, and the run says so.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

FILE = "targets.json"   # in the run folder: the statistics a resumed run must train with
CONFIG_KEYS = ("tuneforge_target_mean", "tuneforge_target_std")  # in the model's config.json, for its readers
# Predictions whose spread on held-out rows is under this share of the training targets' std are "about one value".
# A least-squares fit's predictions have std = |r| * std(target), so under 0.1 the model explains at most about 1%
# of the variance, or is a shrunk, under-trained one: either way worth a look, while a model that ranks rows even
# moderately well (r ≥ 0.3 or so) stays well above it.
COLLAPSE_RATIO = 0.1


@dataclass
class TargetScaling:
    mean: float            # of the training split's targets
    std: float             # population std (ddof 0) of the same
    rows: int
    shift: float           # what the hook adds: the mean, or 0.0 for a head without a bias
    scale: float           # what the hook multiplies by: the std (1.0 where the targets do not vary)
    layer: str             # the head's output layer, by module name

    def to_json(self) -> dict:
        return asdict(self)


def statistics(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) in float64."""
    t = torch.tensor(list(values), dtype=torch.float64)
    if len(t) == 0:
        return 0.0, 0.0
    return float(t.mean()), float(t.std(unbiased=False)) if len(t) > 1 else 0.0


def safe_scale(mean: float, std: float) -> float:
    """The std, or 1.0 where the targets do not vary (beyond float32's resolution at their size)."""
    return std if math.isfinite(std) and std > 1e-7 * max(abs(mean), 1e-30) and std > 0 else 1.0


def output_layer(model) -> tuple[Optional[str], Optional[torch.nn.Linear], str]:
    """(name, module, why not) of the linear layer that produces a regression model's single output. Under PEFT the
    trained copy of the head counts, not the frozen original it keeps beside it."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == 1 and "original_module" not in name.split(".")]
    if len(found) == 1:
        return found[0][0], found[0][1], ""
    what = "none" if not found else f"{len(found)} ({', '.join(n for n, _ in found[:3])})"
    return None, None, f"the model has {what} linear layer(s) with one output, so its head's output layer is unknown"


def base_config(model):
    """The transformers config of the model (of PEFT's base model for an adapter)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


class Standardizer:
    """The training-time map of one model's output layer (install / remove), and its folding into saved weights."""

    def __init__(self, scaling: TargetScaling, module: torch.nn.Linear):
        self.scaling, self.module, self.handle = scaling, module, None

    def install(self) -> None:
        s = self.scaling

        def to_target_units(_module, _inputs, output):
            # In float32 whatever the autocast: a bf16 output cannot resolve a large mean's neighbourhood.
            return output.float() * s.scale + s.shift
        self.handle = self.module.register_forward_hook(to_target_units)

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def folded(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        """(weight, bias) of the layer with the map folded in."""
        s = self.scaling
        w = weight.detach() * s.scale
        b = None if bias is None else bias.detach() * s.scale + s.shift
        return w.to(weight.dtype), None if b is None else b.to(bias.dtype)

    @contextlib.contextmanager
    def folded_for_saving(self, state: Optional[dict] = None):
        """The layer (or, for a sharded model, the gathered `state`) with the map folded in and the hook off while
        the block runs; the training-time weights and hook come back after."""
        if state is not None:
            # The gathered state names the layer as the model does; the live module is left alone.
            keys = [k for k in state if k.rsplit(".", 1)[0] == self.scaling.layer]
            saved = {k: state[k] for k in keys}
            w, b = self.folded(state[f"{self.scaling.layer}.weight"], state.get(f"{self.scaling.layer}.bias"))
            state[f"{self.scaling.layer}.weight"] = w
            if b is not None:
                state[f"{self.scaling.layer}.bias"] = b
            try:
                yield
            finally:
                state.update(saved)
            return
        m = self.module
        weight, bias = m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()
        w, b = self.folded(m.weight, m.bias)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)
        self.remove()
        try:
            yield
        finally:
            with torch.no_grad():
                m.weight.copy_(weight)
                if bias is not None:
                    m.bias.copy_(bias)
            self.install()


def fit(model, targets: Sequence[float], standardize: bool) -> tuple[Optional[TargetScaling], float, float, str]:
    """(scaling or None, mean, std, why none) for a model about to train on `targets` (the training split's)."""
    mean, std = statistics(targets)
    if not standardize:
        return None, mean, std, "task.standardize_targets: false"
    name, module, why = output_layer(model)
    if module is None:
        return None, mean, std, why
    shift = mean if module.bias is not None else 0.0
    return TargetScaling(mean, std, len(targets), shift, safe_scale(mean, std), name), mean, std, ""


def read_stored(run_dir: Path) -> Optional[TargetScaling]:
    file = Path(run_dir) / FILE
    if not file.exists():
        return None
    return TargetScaling(**json.loads(file.read_text()))


def store(run_dir: Path, scaling: TargetScaling) -> None:
    file = Path(run_dir) / FILE
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(scaling.to_json(), indent=1))
    os.replace(tmp, file)  # a crash never leaves half a file that a resume would read


def set_config(model, scaling: Optional[TargetScaling]) -> None:
    """The statistics in the model's config (saved in config.json), or none there: a model fine-tuned again from
    a saved one must not carry the earlier run's."""
    config = base_config(model)
    for key in CONFIG_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    if scaling is not None:
        config.tuneforge_target_mean, config.tuneforge_target_std = scaling.mean, scaling.std


def report_line(scaling: Optional[TargetScaling], why: str) -> list[str]:
    if scaling is None:
        return [f"  targets as they are (not standardized): {why}"] if why and "standardize_targets" not in why else []
    s = scaling
    if s.shift == 0.0 and s.mean != 0.0:
        how = (f"divided by their std {s.scale:.4g} for training (mean {s.mean:.4g} not removed: the head's "
               f"{s.layer} has no bias to hold it)")
    else:
        how = f"standardized for training: mean {s.mean:.4g}, std {s.std:.4g}"
    return [f"  targets {how}, from {s.rows} training row(s); {s.layer} maps outputs back, and the saved model gives "
            "the targets' units"]


def collapse_warning(metrics: dict, mean: float, std: float, standardized: bool = True) -> Optional[str]:
    """A warning when the held-out predictions barely vary next to the training targets' std, else None."""
    for split in ("validation", "test"):
        m = metrics.get(split) or {}
        if "pred_std" in m:
            break
    else:
        return None
    if not std > 0 or m["pred_std"] >= COLLAPSE_RATIO * std:
        return None
    return (f"regression: the model predicts about the same value for every row (on {split}: mean "
            f"{m['pred_mean']:.4g}, std {m['pred_std']:.3g}, which is {m['pred_std'] / std:.1%} of the training "
            f"targets' std {std:.4g}; their mean is {mean:.4g}). Try more training.epochs or a higher training.lr"
            + ("" if standardized else ", set task.standardize_targets: true")
            + ", and check that data.label_column holds the target")
