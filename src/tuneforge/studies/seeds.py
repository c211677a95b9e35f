"""Seed variance: one recipe trained with several seeds, and the spread of its result.

Following Dodge et al. (2020), the seed of weight initialization (the new head and any adapter, and dropout) and
the seed of data order vary separately (`vary`: both, init or data). Their early-discard strategy is built in:
start N seeds, evaluate each after a fraction of its training, and continue only the best k; the discarded runs
keep their checkpoint, so any of them can still be finished with `tuneforge train ... --resume`.

Each seed's run lives in OUTPUT_DIR/seed-<i>; a run already finished with the same recipe is reused, so an
interrupted study continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from .. import runlock
from ..errors import RecipeError, TuneforgeError
from ..recipe import Recipe, load_recipe
from ..tasks import higher_is_better, task_for
from .placement import run_placed, trial_gpus

VARY = ("both", "init", "data")


def interval95(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high): the 95% interval of the mean by Student's t (n - 1 degrees of freedom)."""
    from scipy.stats import t as student_t

    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, float("nan"), float("nan")
    std = statistics.stdev(values)
    half = float(student_t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


class DiscardPoint(Exception):
    """Raised by StopAt once a run has been evaluated and checkpointed at the discard point."""

    def __init__(self, step: int, metrics: dict):
        super().__init__(f"stopped for early discard at step {step}")
        self.step, self.metrics = step, metrics


class StopAt:
    """A loop callback: at `fraction` of the run's optimizer steps, evaluate, checkpoint, and stop."""

    def __init__(self, fraction: float):
        self.fraction, self.step = fraction, None

    def on_train_start(self, loop):
        self.step = max(1, math.ceil(self.fraction * loop.total_steps))
        if loop.state.global_step == self.step:  # a study started again: this run already stopped here
            last = next((h for h in reversed(loop.state.history) if h["step"] == self.step), None)
            if last is not None:
                raise DiscardPoint(self.step, last)

    def on_step_end(self, loop):
        if loop.state.global_step == self.step:
            metrics = loop.evaluate() or {}
            loop.save()
            raise DiscardPoint(self.step, metrics)


@dataclass
class SeedRun:
    index: int
    init_seed: int
    data_seed: int
    run_dir: str
    status: str = "pending"                  # complete | discarded | failed
    early: Optional[float] = None            # validation metric at the discard point
    validation: Optional[float] = None
    test: Optional[float] = None
    error: Optional[str] = None


@dataclass
class SeedStudy:
    metric: str
    runs: list[SeedRun]
    mean: float
    std: float
    low: float
    high: float
    split: str
    files: dict = field(default_factory=dict)


def seed_recipes(base: Recipe, seeds: int, vary: str) -> list[tuple[SeedRun, Recipe]]:
    t = base.training
    init0 = t.head_seed if t.head_seed is not None else t.seed
    data0 = t.data_seed if t.data_seed is not None else t.seed
    out = []
    for i in range(seeds):
        init = init0 + i if vary in ("both", "init") else init0
        data = data0 + i if vary in ("both", "data") else data0
        recipe = base.model_copy(deep=True)
        recipe.training.seed, recipe.training.head_seed, recipe.training.data_seed = init, init, data
        recipe.output.dir = str(Path(base.output.dir) / f"seed-{i:02d}")
        out.append((SeedRun(i, init, data, recipe.output.dir), recipe))
    return out


def _finished(run_dir: Path, recipe: Recipe) -> Optional[dict]:
    from ..rundir import saved_recipe

    summary = run_dir / "summary.json"
    if summary.exists() and saved_recipe(run_dir) == recipe:
        return json.loads(summary.read_text())
    return None


@runlock.in_scope  # OUTPUT_DIR is locked until the study ends
def seed_study(recipe: Union[str, Path, dict, Recipe], seeds: int, *, vary: str = "both", keep: Optional[int] = None,
               discard_after: Optional[float] = None, overrides: Optional[list[str]] = None, console=None) -> SeedStudy:
    """Train the recipe with `seeds` seeds (with early discard: evaluate all at `discard_after` of training and
    finish the best `keep`), and summarize the validation metric (test too when there is test data)."""
    from ..report import console as default_console
    from ..run import fine_tune

    console = console or default_console()
    base = load_recipe(recipe, overrides)
    if vary not in VARY:
        raise RecipeError([f"--vary {vary!r}: choose one of {', '.join(VARY)}"])
    if seeds < 2:
        raise RecipeError([f"--seeds {seeds}: a spread needs at least 2 seeds"])
    if (keep is None) != (discard_after is None):
        raise RecipeError(["early discard needs both --keep K and --discard-after FRACTION"])
    if keep is not None and not (1 <= keep < seeds):
        raise RecipeError([f"--keep {keep}: keep between 1 and {seeds - 1} of the {seeds} seeds"])
    if discard_after is not None and not (0 < discard_after < 1):
        raise RecipeError([f"--discard-after {discard_after}: a fraction of training, between 0 and 1"])
    d = base.data
    if keep is not None and d.dataset is None and d.validation is None and d.validation_fraction == 0:
        raise RecipeError(["early discard ranks seeds by their validation metric: give data.validation or a "
                           "data.validation_fraction above 0"])
    metric = base.training.metric or task_for(base).default_metric
    higher = higher_is_better(metric)
    plan = seed_recipes(base, seeds, vary)
    runlock.acquire(Path(base.output.dir), "a seed study")
    Path(base.output.dir).mkdir(parents=True, exist_ok=True)

    def record(run: SeedRun, metrics: dict) -> None:
        run.status = "complete"
        run.validation = (metrics.get("validation") or {}).get(metric)
        run.test = (metrics.get("test") or {}).get(metric)

    pending = []
    for run, run_recipe in plan:
        done = _finished(Path(run.run_dir), run_recipe)
        if done is not None:
            record(run, done["metrics"])
            console.print(f"seed {run.index}: reusing the finished run in {run.run_dir}")
            continue
        pending.append((run, run_recipe))
    gpus = trial_gpus()
    console.print(f"[bold]{seeds} seeds[/] (varying {vary}): {len(pending)} to train"
                  + (f", the best {keep} continued after {discard_after:.0%} of training" if keep else "")
                  + (f"; {len(gpus)} at a time, one per GPU" if gpus else ""))
    logs = Path(base.output.dir) / "logs"

    def attempt(job, env, stop_at=None) -> tuple[str, dict]:
        run, run_recipe = job
        try:
            if env is not None:  # a placed trial: a process of its own on its GPU
                return _train_placed(run_recipe, env, stop_at, logs / f"seed-{run.index:02d}")
            callbacks = [StopAt(stop_at)] if stop_at else []
            return "complete", fine_tune(run_recipe, resume=True, callbacks=callbacks, console=console).metrics
        except DiscardPoint as stop:
            return "discarded", stop.metrics
        except TuneforgeError as e:
            return "failed", {"error": str(e)}

    def settle(job, outcome) -> None:
        (run, _), (status, metrics) = job, outcome
        if status == "complete":
            record(run, metrics)
        elif status == "discarded":
            run.early, run.status = metrics.get(metric), "discarded"
        else:
            run.status, run.error = "failed", metrics["error"]
            console.print(f"[red]seed {run.index} failed:[/] {run.error}")

    run_placed(pending, lambda job, env: attempt(job, env, discard_after), gpus, settle)
    continuing = [(r, rr) for r, rr in pending if r.status == "discarded"]
    if keep is not None and continuing:
        scored = [(r, rr) for r, rr in continuing if r.early is not None and math.isfinite(r.early)]
        scored.sort(key=lambda x: x[0].early, reverse=higher)
        finished_already = sum(r.status == "complete" for r, _ in plan)
        kept = scored[:max(keep - finished_already, 0)]
        for run, _ in kept:
            console.print(f"seed {run.index}: kept ({metric} {run.early:.4g} at the discard point); training on")
        run_placed(kept, attempt, gpus, settle)
    runs = [r for r, _ in plan]
    complete = [r for r in runs if r.status == "complete"]
    split = "test" if complete and all(r.test is not None for r in complete) else "validation"
    values = [getattr(r, split) for r in complete if getattr(r, split) is not None]
    if not values:
        raise TuneforgeError(f"no seed run finished with a {split} {metric}; see the runs in {base.output.dir}")
    mean, std, low, high = interval95(values)
    study = SeedStudy(metric, runs, mean, std, low, high, split)
    study.files = write_seed_reports(study, Path(base.output.dir))
    _print(console, study)
    return study


def _train_placed(run_recipe: Recipe, env: dict, stop_at: Optional[float], log_stem: Path) -> tuple[str, dict]:
    """One seed's run in a worker process with one GPU: ("complete" | "discarded", its metrics)."""
    import subprocess
    import sys

    log_stem.parent.mkdir(parents=True, exist_ok=True)
    result = log_stem.with_suffix(".json")
    result.unlink(missing_ok=True)
    job = log_stem.with_suffix(".job.json")
    job.write_text(json.dumps({"recipe": run_recipe.model_dump(mode="json"), "result": str(result),
                               "stop_at": stop_at}))
    log = log_stem.with_suffix(".log")
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-m", "tuneforge.studies.worker", str(job)], stdout=out, stderr=out,
                               env=env)
    if code != 0 or not result.exists():
        tail = log.read_text().strip().splitlines()[-3:]
        raise TuneforgeError(f"run {run_recipe.output.dir} failed (exit {code}); its log is {log}: " + " / ".join(tail))
    record = json.loads(result.read_text())
    if "discarded" in record:
        return "discarded", record["discarded"]["metrics"]
    return "complete", record["metrics"]


def _rows(study: SeedStudy) -> list[dict]:
    return [{"seed run": r.index, "init seed": r.init_seed, "data seed": r.data_seed, "status": r.status,
             f"{study.metric} at discard": r.early, f"validation {study.metric}": r.validation,
             f"test {study.metric}": r.test} for r in study.runs]


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_line(study: SeedStudy) -> str:
    n = sum(r.status == "complete" for r in study.runs)
    return (f"{study.split} {study.metric} over {n} finished seed run(s): mean {study.mean:.4f}, std {study.std:.4f}, "
            f"95% interval of the mean [{study.low:.4f}, {study.high:.4f}]")


def write_seed_reports(study: SeedStudy, folder: Path) -> dict:
    rows = _rows(study)
    files = {"markdown": folder / "seeds.md", "csv": folder / "seeds.csv", "json": folder / "seeds.json"}
    with open(files["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---:" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in r.values()) + " |" for r in rows]
    files["markdown"].write_text("\n".join(lines) + "\n\n" + summary_line(study) + "\n")
    files["json"].write_text(json.dumps({**{k: v for k, v in asdict(study).items() if k != "files"}}, indent=1))
    return files


def _print(console, study: SeedStudy) -> None:
    from rich.table import Table

    rows = _rows(study)
    table = Table(title="seed runs")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(_fmt(v) for v in r.values()))
    console.print(table)
    console.print(summary_line(study))
