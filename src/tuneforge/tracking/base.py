"""What every experiment tracker is sent, and when: one tracked run per run folder, fed by the loop's hooks.

A tracker (mlflow.py, wandb.py, trackio.py) is a thin class over its library's own API; this module decides the
rest, the same for all of them:
- parameters: the resolved recipe (the run folder's recipe.yaml), flattened to `section.key` -> value;
- metrics, with the optimizer step: at logging steps train/loss, train/lr, train/epoch and train/grad_norm (the
  step's whole gradient before clipping), at every evaluation validation/<metric>; the split metrics measured once
  the loop ends are sent with the final model as final/<split>/<metric>;
- the final model or adapter folder as an artefact, once it is saved; never when the run fails (a failure in the
  loop, non-finite weights, an error before the model is written);
- a stage's own loop inside the run folder (self-training in <run>/self-training) logs into the run's tracked run
  under <stage>/..., with steps of its own.
A tracker that raises is warned about once and left out for the rest of the run: training goes on, and
metrics.jsonl in the run folder holds every number all the same.
"""
from __future__ import annotations

import atexit
import json
import sys
import warnings
from numbers import Real
from pathlib import Path
from typing import Optional

import yaml

from ..engine.guard import full_value, gradient_norm

IDS_FILE = "trackers.json"  # in the run folder: each tracker's run id, so that --resume continues the same run


class Tracker:
    """One library's run. Subclasses call their library's API and nothing else; errors they raise are caught by
    TrackedRun. `start` returns what a resumed run needs to find this run again (stored in trackers.json)."""
    name = ""       # as in training.report_to
    module = ""     # what is imported
    pip = ""        # what to install

    def start(self, name: str, params: dict, resume: Optional[dict]) -> dict:
        """Open a new run called `name` with `params`, or continue the run `resume` describes (what an earlier
        start returned). Returns the description to keep."""
        raise NotImplementedError

    def last_step(self) -> Optional[int]:
        """On a resumed run, the last step the library already holds metrics for (None: unknown or none)."""
        return None

    def log(self, metrics: dict[str, float], step: int, axis: Optional[str] = None) -> None:
        """`metrics` at optimizer step `step`; `axis`: the stage whose own step counter `step` is (else the run's)."""
        raise NotImplementedError

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        """The metrics measured once training ended (final/<split>/<metric>)."""
        self.log(metrics, step)

    def log_artifact(self, folder: Path, kind: str) -> None:
        """The final model or adapter folder; `kind` is "model" or "adapter"."""
        raise NotImplementedError

    def finish(self, status: str) -> None:
        """Close the run: status "FINISHED", "FAILED" (an error) or "KILLED" (interrupted)."""
        raise NotImplementedError


def flatten(value, prefix: str = "") -> dict:
    """A nested mapping as `a.b.c` -> value; lists and None as JSON text, so that every tracker takes them."""
    out: dict = {}
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        elif isinstance(v, (str, bool, int, float)):
            out[name] = v
        else:
            out[name] = json.dumps(v)
    return out


def numeric(metrics: dict, prefix: str) -> dict[str, float]:
    """The numbers of a metrics dict (nested dicts flattened with "/"), each key under `prefix/`."""
    out: dict[str, float] = {}
    for key, v in metrics.items():
        if isinstance(v, dict):
            out.update(numeric(v, f"{prefix}/{key}"))
        elif isinstance(v, Real) and not isinstance(v, bool):
            out[f"{prefix}/{key}"] = float(v)
    return out


def recipe_params(run_dir: Path) -> dict:
    """The resolved recipe the run wrote into its folder, flattened; {} where there is none."""
    path = run_dir / "recipe.yaml"
    if not path.exists():
        return {}
    return flatten(yaml.safe_load(path.read_text()) or {})


class TrackedRun:
    """The trackers of one run folder, open from the first loop's start until the model is saved or the run fails."""

    def __init__(self, trackers: list[Tracker], run_dir: Path, console=None):
        self.trackers, self.run_dir, self.console = trackers, run_dir, console
        self.name = str(run_dir)  # runs are named after output.dir as the recipe gives it
        self.last_step = 0       # the run's own step axis, for the final metrics
        self.skip_until: dict[str, int] = {}  # per tracker, on resume: steps it holds already
        self.is_open = False

    def open(self, resuming: bool) -> None:
        ids_path = self.run_dir / IDS_FILE
        try:
            ids = json.loads(ids_path.read_text()) if resuming and ids_path.exists() else {}
        except (OSError, json.JSONDecodeError):
            ids = {}
        params = recipe_params(self.run_dir)
        for t in list(self.trackers):
            kept = self._call(t, "start", self.name, params, ids.get(t.name))
            if kept is None:
                continue
            ids[t.name] = kept
            if resuming:
                self.skip_until[t.name] = self._call(t, "last_step") or 0
        ids_path.write_text(json.dumps(ids, indent=1))
        self.is_open = True
        _OPEN[self.run_dir.resolve()] = self

    def log(self, metrics: dict[str, float], step: int, axis: Optional[str] = None) -> None:
        if not metrics:
            return
        if axis is None:
            self.last_step = max(self.last_step, step)
        for t in list(self.trackers):
            # A resumed run logs again the steps between its checkpoint and where it stopped; resume is exact, so
            # the library keeps the points it has (ones it would refuse or show twice).
            if axis is None and step <= self.skip_until.get(t.name, 0):
                continue
            self._call(t, "log", metrics, step, axis)

    def end(self, model_dir: Optional[Path], final: dict[str, float]) -> None:
        """A successful end: the final metrics, the model or adapter folder, FINISHED."""
        for t in list(self.trackers):
            self._call(t, "log_final", final, self.last_step)
            if model_dir is not None and model_dir.is_dir():
                self._call(t, "log_artifact", model_dir, model_dir.name)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        if not self.is_open:
            return
        self.is_open = False
        _OPEN.pop(self.run_dir.resolve(), None)
        for t in list(self.trackers):
            self._call(t, "finish", status)

    def _call(self, tracker: Tracker, what: str, *args):
        try:
            return getattr(tracker, what)(*args)
        except Exception as e:  # a tracker's failure must not cost the run: warn once, go on without it
            self.trackers.remove(tracker)
            message = (f"training.report_to: {tracker.name} failed ({what}: {type(e).__name__}: {e}); the run goes on "
                       f"without it (metrics.jsonl in {self.run_dir} holds every number)")
            if self.console is not None:
                self.console.print(f"[yellow]warning:[/] {message}")
            else:
                warnings.warn(message, stacklevel=2)
            if what != "finish":
                try:
                    tracker.finish("FAILED")
                except Exception:
                    pass
            return None


# The tracked runs open in this process, by run folder. A run whose loop ended but which failed before its model was
# saved is closed as FAILED when the process exits, or when its folder is trained again.
_OPEN: dict[Path, TrackedRun] = {}


def open_run_around(run_dir: Path) -> Optional[tuple[TrackedRun, str]]:
    """The open tracked run of a folder holding `run_dir` (a stage's loop), with the stage's name; else None."""
    here = run_dir.resolve()
    for parent in here.parents:
        if parent in _OPEN:
            return _OPEN[parent], str(here.relative_to(parent))
    return None


def open_run(run_dir: Path) -> Optional[TrackedRun]:
    return _OPEN.get(run_dir.resolve())


@atexit.register
def _close_open_runs() -> None:
    for run in list(_OPEN.values()):
        run.close("FAILED")


class Tracking:
    """The loop callback that feeds a TrackedRun: the run's own loop (`stage` None) opens and, on an error, closes
    it; a stage's loop logs into its parent's run under `stage/`."""

    def __init__(self, run: TrackedRun, stage: Optional[str] = None):
        self.run, self.stage = run, stage
        self._norm = None

    def _key(self, key: str) -> str:
        return f"{self.stage}/{key}" if self.stage else key

    def on_train_start(self, loop) -> None:
        if self.stage is None and not self.run.is_open:
            self.run.open(resuming=loop.state.global_step > 0)

    def on_gradients(self, loop) -> None:
        # The loop reads the loss on logging steps only (Loop._read_loss: every log_every steps and the last); the
        # gradient norm is taken on the same steps, before clipping. Under FSDP the norm is a collective that only
        # rank 0 would enter, so it is not sent there.
        step = loop.state.global_step + 1
        if (step % loop.cfg.log_every == 0 or step == loop.total_steps) and not loop.runtime.fsdp:
            self._norm = gradient_norm(loop.params)

    def on_step_end(self, loop) -> None:
        if not loop.logged:
            return
        s = loop.state
        metrics = {"train/loss": loop.last_loss, "train/lr": loop.scheduler.get_last_lr()[-1],
                   "train/epoch": s.epoch + s.step_in_epoch / loop.steps_per_epoch}
        if self._norm is not None:
            metrics["train/grad_norm"] = float(full_value(self._norm))
            self._norm = None
        self.run.log({self._key(k): float(v) for k, v in metrics.items()}, s.global_step, self.stage)

    def on_evaluate(self, loop, metrics: dict) -> None:
        self.run.log(numeric(metrics, self._key("validation")), loop.state.global_step, self.stage)

    def on_train_abort(self, loop) -> None:
        error = sys.exc_info()[1]
        self.run.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
