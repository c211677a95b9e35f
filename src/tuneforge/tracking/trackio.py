"""Trackio (Hugging Face's local-first tracker), through the run object trackio.init returns.

Runs go to project "tuneforge" (trackio has no variable of its own for the project), named after output.dir; where
they are stored is trackio's to decide: TRACKIO_DIR (else its cache folder), TRACKIO_SPACE_ID or TRACKIO_SERVER_URL
to log to a Space or a server. --resume continues the run of the same name (trackio resumes by name). Artefacts need
a trackio with log_artifact (0.3 and later); an older one is told so and the run goes on."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .base import Tracker

PROJECT = "tuneforge"


class TrackioTracker(Tracker):
    name, module, pip = "trackio", "trackio", "pip install trackio"

    def __init__(self):
        self.run = None

    def start(self, name: str, params: dict, resume: Optional[dict]) -> dict:
        import trackio

        project = resume["project"] if resume else PROJECT
        self.run = trackio.init(project=project, name=name, config=params, resume="allow" if resume else "never")
        return {"project": project, "name": name}

    def log(self, metrics: dict[str, float], step: int, axis: Optional[str] = None) -> None:
        self.run.log({**metrics, f"{axis}/step": step} if axis else metrics, step=None if axis else step)

    def log_artifact(self, folder: Path, kind: str) -> None:
        if not hasattr(self.run, "log_artifact"):
            raise RuntimeError(f"this trackio version has no log_artifact; the {kind} is in {folder}")
        self.run.log_artifact(folder, name=kind, type=kind)

    def finish(self, status: str) -> None:
        self.run.finish()
