"""Experiment trackers (training.report_to): one module each, named in TRACKERS; what they are sent is base.py's.

Only rank 0 reports. A tracker asked for whose package is missing is refused before the loop is built, naming the
key, the package and the pip command; one that fails during the run is warned about and left out (base.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from ..errors import RecipeError
from .base import Tracker, TrackedRun, Tracking, numeric, open_run_around, open_run
from .mlflow import MlflowTracker
from .tensorboard import TensorBoardLogger, tensorboard_available
from .trackio import TrackioTracker
from .wandb import WandbTracker

# The trackers of a tracked run, by their name in training.report_to. (TensorBoard writes into the run folder
# from each loop, and is used only when installed: tensorboard.py.)
TRACKERS: dict[str, type[Tracker]] = {"mlflow": MlflowTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def check_installed(report_to: list[str]) -> None:
    """Raise RecipeError for every tracker asked for whose package is not installed."""
    missing = [TRACKERS[name] for name in dict.fromkeys(report_to) if name in TRACKERS and
               importlib.util.find_spec(TRACKERS[name].module) is None]
    if missing:
        raise RecipeError([f"training.report_to: {t.name!r} needs the {t.module} package, which is not installed: "
                           f"{t.pip}, or remove {t.name!r} from training.report_to" for t in missing])


def callbacks_for(report_to: list[str], run_dir: Path, runtime, console=None) -> list:
    """The loop callbacks that report a loop over `run_dir` to the trackers in `report_to`: none off rank 0."""
    # Rank 0 reports, so rank 0's packages count; its refusal reaches every rank (none is left in a collective).
    runtime.on_main(lambda: check_installed(report_to))
    if not runtime.is_main:
        return []
    cbs: list = []
    if "tensorboard" in report_to and tensorboard_available():
        cbs.append(TensorBoardLogger(run_dir / "tensorboard"))
    names = [name for name in dict.fromkeys(report_to) if name in TRACKERS]
    if not names:
        return cbs
    around = open_run_around(run_dir)
    if around is not None:  # a stage's loop inside a tracked run's folder: into that run, under the stage's name
        run, stage = around
        return [*cbs, Tracking(run, stage)]
    stale = open_run(run_dir)
    if stale is not None:  # this folder's last run in this process failed after its loop, before its model was saved
        stale.close("FAILED")
    return [*cbs, Tracking(TrackedRun([TRACKERS[name]() for name in names], run_dir, console))]


def finish_run(run_dir: Path, model_dir: Optional[Path], metrics: dict) -> None:
    """At the end of a successful run, once its model (or adapter) is saved in `model_dir`: the final metrics
    (split -> metric -> value), the folder as an artefact, and the tracked run of `run_dir` closed as finished.
    Nothing to do where no tracker reports the run (other ranks, report_to without one)."""
    run = open_run(run_dir)
    if run is None:
        return
    final: dict[str, float] = {}
    for split, values in metrics.items():
        final.update(numeric(values, f"final/{split}"))
    run.end(model_dir, final)


__all__ = ["TRACKERS", "TensorBoardLogger", "Tracker", "callbacks_for", "check_installed", "finish_run",
           "tensorboard_available"]
