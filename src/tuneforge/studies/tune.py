"""Hyperparameter search on Optuna: every trial an ordinary tuneforge run of the recipe with the trial's values.

Trials report their validation metric at each evaluation, so a pruner can stop a bad one early; a failed or
pruned trial never stops the study. The study lives in Optuna storage (SQLite, PostgreSQL, or in memory):
running the command again with the same storage and study name continues it, and several processes (or
machines sharing a database) can work one study at once. Trials are written under STUDY_DIR/trials/.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .. import runlock
from ..errors import RecipeError, TuneforgeError
from ..recipe import Recipe, load_recipe
from ..tasks import higher_is_better, task_for
from .placement import TRIAL_GPU, run_placed, trial_gpus
from .space import Param, read_space, recipe_with, suggest

SAMPLERS = ("grid", "random", "tpe", "gp")
PRUNERS = ("median", "hyperband", "asha", "none")


def startup_trials(trials: int) -> int:
    """Random trials before a model-based sampler starts modelling: Optuna's default of 10 would leave a study of
    10-20 trials all but random, so a third of the budget, between 3 and 10."""
    return max(3, min(10, trials // 3))


def make_sampler(name: str, params: list[Param], seed: int, trials: int = 30):
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid() for p in params}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(trials))
    raise RecipeError([f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}"])


def make_pruner(name: str):
    import optuna

    if name == "median":  # a trial below the median of earlier trials at the same step stops
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise RecipeError([f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}"])


class ReportToTrial:
    """A loop callback: each evaluation's metric goes to the trial; a pruned trial stops its run."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_evaluate(self, loop, metrics: dict) -> None:
        import optuna

        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step=loop.state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {loop.state.global_step} ({self.metric} {value:.4g})")


@dataclass
class TuneResult:
    study_name: str
    storage: str
    metric: str
    direction: str
    best_value: Optional[float]
    best_params: dict
    best_recipe: Optional[Path]
    trials: list[dict] = field(default_factory=list)
    files: dict = field(default_factory=dict)


def _storage_url(storage: Optional[str], study_dir: Path) -> str:
    return storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"


def _open_study(name: str, url: str, direction: str, sampler, pruner, attempts: int = 6):
    """Create or load the study. Workers started together on a new database race to create its tables and
    schema-version row: the loser gets an integrity or "database is locked" error, and on a retry finds the
    schema made by the winner, so a few retries with a growing pause settle it."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            return optuna.create_study(study_name=name, storage=url, load_if_exists=True, direction=direction,
                                       sampler=sampler, pruner=pruner)
        except SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def tune(recipe: Union[str, Path, dict, Recipe], space: Union[str, Path, dict], trials: int = 20, *,
         sampler: str = "tpe", pruner: str = "median", storage: Optional[str] = None, study_name: Optional[str] = None,
         study_dir: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None, seed: int = 0,
         console=None) -> TuneResult:
    """Run (or continue) a study until it holds `trials` finished trials (complete, pruned or failed)."""
    import optuna

    from ..report import console as default_console
    from ..run import fine_tune

    console = console or default_console()
    base = load_recipe(recipe, overrides)
    params = read_space(space, base)
    task = task_for(base)
    metric = base.training.metric or task.default_metric
    if base.data.dataset is None and base.data.validation is None and base.data.validation_fraction == 0:
        raise RecipeError(["a search needs validation data to score trials: give data.validation or a "
                           "data.validation_fraction above 0"])
    direction = "maximize" if higher_is_better(metric) else "minimize"
    study_dir = Path(study_dir or f"{base.output.dir}-tune")
    study_dir.mkdir(parents=True, exist_ok=True)
    url = _storage_url(storage, study_dir)
    name = study_name or study_dir.name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(name, url, direction, make_sampler(sampler, params, seed, trials), make_pruner(pruner))
    if study.user_attrs.get("metric") not in (None, metric):
        raise RecipeError([f"study {name!r} in {url} optimizes {study.user_attrs['metric']!r}, this recipe {metric!r}; "
                           "use another --study name"])
    study.set_user_attr("metric", metric)

    def objective(trial):
        values = suggest(trial, params)
        trial_recipe = recipe_with(base, values)  # the recipe's own checks: a bad combination fails the trial
        trial_recipe.output.dir = str(study_dir / "trials" / f"trial-{trial.number:04d}")
        trial.set_user_attr("recipe", trial_recipe.model_dump(mode="json"))
        trial.set_user_attr("gpu", os.environ.get(TRIAL_GPU))  # the GPU a placed worker ran it on (None: not placed)
        started = time.perf_counter()
        result = fine_tune(trial_recipe, overwrite=True, callbacks=[ReportToTrial(trial, metric)], console=console)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        trial.set_user_attr("trainable_parameters", result.trainable_parameters)
        value = (result.metrics.get("validation") or {}).get(metric)
        if value is None or not math.isfinite(value):
            raise TuneforgeError(f"trial {trial.number}: no finite validation {metric} to score it by")
        return float(value)

    finished = lambda: sum(t.state.is_finished() for t in study.trials)  # noqa: E731
    remaining = trials - finished()
    gpus = trial_gpus()
    if remaining > 0 and gpus:
        # One worker process per GPU, each running this search against the shared storage (as workers on several
        # machines do), with its own sampler seed so that they do not propose the same trials.
        console.print(f"[bold]study {name}[/]: {remaining} more trial(s) of {trials} on {len(gpus)} GPUs, one worker "
                      f"each ({', '.join(gpus)}); storage {url}; logs in {study_dir / 'logs'}")
        kwargs = {"recipe": base.model_dump(mode="json"), "space": _space_for_worker(space), "trials": trials,
                  "sampler": sampler, "pruner": pruner, "storage": url, "study_name": name, "study_dir": str(study_dir)}
        run_placed(list(range(len(gpus))), lambda i, env: _tune_worker(i, {**kwargs, "seed": seed + i}, env, study_dir),
                   gpus)
        study = _open_study(name, url, direction, make_sampler(sampler, params, seed, trials), make_pruner(pruner))
    elif remaining > 0:
        console.print(f"[bold]study {name}[/]: {remaining} more trial(s) of {trials}, {sampler} sampler, {pruner} "
                      f"pruner, {direction} validation {metric}; storage {url}")
        # Failed trials are recorded and the study goes on; Ctrl-C stops it, and the same command continues it.
        # Workers sharing the storage stop once the study holds `trials` finished trials (each finishes the trial
        # it is running, so parallel workers can add up to one more each).
        done = optuna.study.MaxTrialsCallback(trials, states=None)
        study.optimize(objective, n_trials=remaining, catch=(Exception,), callbacks=[done], gc_after_trial=True)
    # Several workers may run one study (its storage is shared), so the study folder is not held for the whole
    # search; each trial's folder is (fine_tune), and the study's tables are written by one worker at a time.
    with runlock.scope():
        runlock.acquire(study_dir, "a tune study's tables", wait=True)
        return write_outputs(study, base, metric, direction, study_dir, url, console)


def _space_for_worker(space):
    return space if isinstance(space, dict) else str(Path(space).resolve())


def _tune_worker(index: int, kwargs: dict, env: dict, study_dir: Path) -> int:
    import subprocess
    import sys

    logs = study_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    job = logs / f"worker-{index}.job.json"
    job.write_text(json.dumps({"tune": kwargs}))
    with open(logs / f"worker-{index}.log", "w") as out:
        code = subprocess.call([sys.executable, "-m", "tuneforge.studies.worker", str(job)], stdout=out, stderr=out,
                               env=env)
    if code != 0:
        raise TuneforgeError(f"search worker {index} failed (exit {code}); its log is {logs / f'worker-{index}.log'}")
    return code


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                     "seconds": t.user_attrs.get("seconds"), **{k: v for k, v in t.params.items()}})
    return rows


def write_outputs(study, base: Recipe, metric: str, direction: str, study_dir: Path, url: str, console) -> TuneResult:
    import optuna
    import yaml

    rows = trial_rows(study)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(study_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    files = {"trials": study_dir / "trials.csv"}
    best_recipe = None
    if complete:
        best = study.best_trial
        recipe = dict(best.user_attrs["recipe"])
        recipe["output"] = {"dir": str(Path(base.output.dir).with_name(Path(base.output.dir).name + "-best"))}
        best_recipe = study_dir / "best-recipe.yaml"
        best_recipe.write_text(f"# study {study.study_name}: trial {best.number}, validation {metric} {best.value:.6g}\n"
                               + yaml.safe_dump(recipe, sort_keys=False))
        files["best_recipe"] = best_recipe
        files.update(_plots(study, study_dir))
    _print_table(console, rows, metric)
    (study_dir / "study.json").write_text(json.dumps({"study": study.study_name, "storage": url, "metric": metric,
                                                      "direction": direction, "trials": rows}, indent=1, default=str))
    return TuneResult(study.study_name, url, metric, direction, study.best_value if complete else None,
                      study.best_params if complete else {}, best_recipe, rows, files)


def _plots(study, study_dir: Path) -> dict:
    """Optimization history and parameter importances as PNGs (importances need 2+ complete trials and a
    parameter that varies)."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, plot in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances)):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
            path = study_dir / f"{name}.png"
            (ax.figure if hasattr(ax, "figure") else ax[0].figure).savefig(path, dpi=120, bbox_inches="tight")
            plt.close("all")
            out[name] = path
    return out


def _print_table(console, rows: list[dict], metric: str) -> None:
    from rich.table import Table

    params = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("trial", "state", "value", "last_step",
                                                                              "seconds")]
    table = Table(title=f"trials (validation {metric})")
    for col in ["trial", "state", metric, "last step", "s", *params]:
        table.add_column(col)
    fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        table.add_row(str(r["trial"]), r["state"], fmt(r["value"]), fmt(r["last_step"]), fmt(r["seconds"]),
                      *[fmt(r.get(p)) for p in params])
    console.print(table)
