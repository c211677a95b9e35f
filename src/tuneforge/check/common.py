"""What the checks share: a result row, the recipe as a probe runs it, a probe run, and the largest difference
between two sets of tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..recipe import Recipe, load_recipe
from .probes import ProbeDone


@dataclass
class CheckResult:
    name: str
    passed: Optional[bool]  # None: measured, no pass/fail (time and memory)
    measured: str
    tolerance: str = ""
    detail: dict = field(default_factory=dict)


def probe_recipe(base: Recipe, out: Path, keep_validation: bool = False, **training) -> Recipe:
    """The recipe as a probe runs it: in `out`, without progress bars, test data or restoring the best step, and
    (unless `keep_validation`) without validation data; `training` overrides."""
    d = base.model_dump(mode="json")
    d["output"]["dir"] = str(out)
    # The task's own training is what the probes watch: an adaptation stage before it (a whole continued
    # pre-training run of its own) and COSINE self-training after it are left out (see skipped_stages).
    d["adapt"] = None
    if d.get("weak"):
        d["weak"]["self_training"] = None
    d["training"].update({"progress": False, "restore_best": False, **training})
    d["data"].update({"test": None, "test_fraction": 0.0})
    if not keep_validation:
        d["data"].update({"validation": None, "validation_fraction": 0.0})
        d["training"].update({"early_stopping": None})
    return load_recipe(d)


def train(recipe: Recipe, console, callbacks: list, resume: bool = False):
    from ..run import fine_tune

    try:
        return fine_tune(recipe, resume=resume, console=console, callbacks=callbacks)
    except ProbeDone:
        return None


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float, str]:
    """(largest absolute difference, largest absolute value in `b`, where the difference is largest)."""
    if set(a) != set(b):
        raise RuntimeError(f"the probes saw different parameters: {sorted(set(a) ^ set(b))[:5]}")
    worst, where, scale = 0.0, "", 0.0
    for name in b:
        diff = float((a[name] - b[name]).abs().max()) if a[name].numel() else 0.0
        scale = max(scale, float(b[name].abs().max()) if b[name].numel() else 0.0)
        if not diff <= worst:  # (NaN counts as the worst)
            worst, where = diff, name
    return worst, scale, where


def where(diff: float, name: str) -> str:
    """" (at NAME)" where the largest difference is, when there is one."""
    return f" (at {name})" if diff else ""


def skipped_stages(base: Recipe) -> list[str]:
    """The recipe's stages the probes leave out, as the report names them."""
    return [name for name, on in (("adapt (continued pre-training before the task)", base.adapt is not None),
                                  ("weak.self_training (COSINE after the task)",
                                   base.weak is not None and base.weak.self_training is not None)) if on]
