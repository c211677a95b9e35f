"""Weights & Biases, through a run object of its own (reinit="create_new": a caller's W&B run is left alone).

W&B's environment decides the rest: WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE (offline: nothing leaves the machine
until `wandb sync`), WANDB_DIR (where its files go; else the working directory), WANDB_NAME (else the run is named
after output.dir), WANDB_API_KEY. --resume continues the same run by its id (trackers.json), with resume="allow"."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from .base import Tracker


class WandbTracker(Tracker):
    name, module, pip = "wandb", "wandb", "pip install wandb"

    def __init__(self):
        self.run = None
        self.axes: set[str] = set()

    def start(self, name: str, params: dict, resume: Optional[dict]) -> dict:
        import wandb

        kwargs = {} if os.environ.get("WANDB_NAME") else {"name": name}
        if resume:
            kwargs.update(id=resume["id"], resume="allow")
        self.run = wandb.init(config=params, reinit="create_new", allow_val_change=bool(resume), **kwargs)
        return {"id": self.run.id, "project": self.run.project}

    def last_step(self) -> Optional[int]:
        # W&B drops (and warns about) a step lower than one it holds: the steps it has are not sent again.
        return self.run.step - 1 if self.run.step > 0 else None

    def log(self, metrics: dict[str, float], step: int, axis: Optional[str] = None) -> None:
        if axis is None:
            self.run.log(metrics, step=step)
            return
        # A stage's steps start again from 1, while W&B's own step only grows: the stage's step is a metric of
        # its own, the x axis of the stage's charts.
        if axis not in self.axes:
            self.run.define_metric(f"{axis}/*", step_metric=f"{axis}/step")
            self.axes.add(axis)
        self.run.log({**metrics, f"{axis}/step": step})

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(metrics)

    def log_artifact(self, folder: Path, kind: str) -> None:
        import wandb

        # Artefact names take letters, digits, '-', '_' and '.' only.
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.run.name}-{kind}").strip("-"), type=kind)
        artifact.add_dir(str(folder))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
