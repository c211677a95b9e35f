"""MLflow, through its client API (no process-wide active run, so a run of tuneforge never ends a run of the caller's).

Where runs go is MLflow's to decide: MLFLOW_TRACKING_URI (MLflow's default is sqlite:///mlflow.db in the working
directory), the experiment by MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME (created when missing; else MLflow's
Default), artefacts where the experiment keeps them. --resume continues the same run by its id (trackers.json)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from .base import Tracker


class MlflowTracker(Tracker):
    name, module, pip = "mlflow", "mlflow", "pip install mlflow-skinny (or mlflow, which adds the UI)"

    def __init__(self):
        self.client = self.run_id = None

    def start(self, name: str, params: dict, resume: Optional[dict]) -> dict:
        from mlflow import MlflowClient
        from mlflow.entities import Param
        from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME
        from mlflow.tracking.context.registry import resolve_tags

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, or MLflow's default
        uri = self.client.tracking_uri
        held = self._held(resume, uri)
        if held is not None:
            self.run_id = resume["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            held = {}
            experiment = MLFLOW_EXPERIMENT_ID.get()
            if experiment is None and MLFLOW_EXPERIMENT_NAME.get():
                found = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT_NAME.get())
                experiment = found.experiment_id if found else self.client.create_experiment(
                    MLFLOW_EXPERIMENT_NAME.get())
            run = self.client.create_run(experiment or "0", run_name=name, tags=resolve_tags())
            self.run_id = run.info.run_id
        # A resumed run keeps the parameters it started with (MLflow refuses to change one); keys that may differ
        # on --resume (training.report_to, training.progress, ...) keep their first value.
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items() if k not in held])
        return {"run_id": self.run_id, "tracking_uri": uri}

    def _held(self, resume: Optional[dict], uri: str) -> Optional[dict]:
        """The parameters of the run to continue, or None for a new run: none stored, another tracking URI, or the
        run is gone from this one."""
        from mlflow.exceptions import MlflowException

        if not resume or resume.get("tracking_uri") != uri:
            return None
        try:
            return self.client.get_run(resume["run_id"]).data.params
        except MlflowException:
            return None

    def last_step(self) -> Optional[int]:
        keys = self.client.get_run(self.run_id).data.metrics
        steps = [m.step for k in keys for m in self.client.get_metric_history(self.run_id, k)]
        return max(steps) if steps else None

    def log(self, metrics: dict[str, float], step: int, axis: Optional[str] = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_artifact(self, folder: Path, kind: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=kind)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
