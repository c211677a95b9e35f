"""Compare methods on the same data, budget and seeds: quality vs trainable parameters vs time vs memory.

Each (method, seed) run is an ordinary tuneforge run in STUDY_DIR/<method>/seed-<n>, trained in a process
of its own so that its peak memory is measured apart from the others. A finished run is reused when the
study is started again with the same recipe, so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from .. import runlock
from ..errors import RecipeError, RunDirError, TuneforgeError
from ..recipe import Recipe, load_recipe, parse_override
from ..tasks import higher_is_better
from .placement import run_placed, trial_gpus

# `name:N` shorthand: the one option a number after the method's name sets.
SHORTHAND = {"freeze": "freeze_layers", "gradual": "unfreeze_every", "lora": "r", "dora": "r",
             "prefix": "num_virtual_tokens", "prompt": "num_virtual_tokens", "bottleneck": "bottleneck_size"}
WHOLE_NETWORK = ("full", "head", "freeze", "gradual")


@dataclass
class MethodChoice:
    label: str                 # as written on the command line, e.g. 'freeze:4'
    method: dict               # the recipe's method section
    lr: Optional[float] = None  # training.lr for this method (None: the recipe's or the method's default)


def _value(text: str):
    """A spec value read like a `key=value` override: YAML, with `5e-4` as a number."""
    return parse_override(f"value={text}")[1]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so that 'lora:target_modules=[query,value],ia3' is two methods."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def parse_methods(text: Union[str, list[str]]) -> list[MethodChoice]:
    """'full,head,freeze:4,lora:r=16:alpha=32,ia3' -> method choices.

    `name:N` sets the method's main number (freeze: the first N blocks, with the embeddings; lora/dora: rank;
    prefix/prompt: virtual tokens; bottleneck: bottleneck size; gradual: unfreeze every N steps);
    `name:key=value:...` sets any method option, and `lr=` the learning rate for that method.
    """
    items = [s.strip() for s in (_split_top_level(text) if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise RecipeError(["--methods: no methods given; e.g. --methods full,head,freeze:4,lora,ia3"])
    choices, problems = [], []
    for item in items:
        name, *parts = item.split(":")
        method: dict = {"name": name}
        lr = None
        if name == "freeze" and not parts:
            problems.append(f"--methods {item!r}: say how many blocks to freeze, e.g. freeze:4")
        numbers = [p for p in parts if "=" not in p]
        if len(numbers) > 1:
            problems.append(f"--methods {item!r}: one number at most after the name ({name}:N); give other options as key=value")
        for part in parts:
            if "=" in part:
                key, raw = part.split("=", 1)
                if key.strip() == "lr":
                    lr = _value(raw)
                else:
                    method[key.strip()] = _value(raw)
            elif name in SHORTHAND:
                method[SHORTHAND[name]] = _value(part)
                if name == "freeze":
                    method["freeze_embeddings"] = True
            else:
                problems.append(f"--methods {item!r}: {name} takes no number; give options as key=value")
        choices.append(MethodChoice(item, method, lr))
    labels = [c.label for c in choices]
    if len(set(labels)) != len(labels):
        problems.append(f"--methods: a method is listed twice ({', '.join(labels)})")
    elif len({_slug(x) for x in labels}) != len(labels):
        problems.append(f"--methods: {', '.join(labels)} would share run folders; write them differently")
    if problems:
        raise RecipeError(problems)
    return choices


@dataclass
class MethodSummary:
    label: str
    method: str
    lr: float
    runs: int
    metric: str
    split: str
    mean: float
    std: float
    values: list[float]
    trainable_parameters: int
    total_parameters: int
    train_seconds: float        # median over seeds: robust to one run slowed by other load on the machine
    peak_rss_mb: float          # largest over seeds
    stored_bytes: int

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable_parameters / max(self.total_parameters, 1)


@dataclass
class CompareResult:
    study_dir: Path
    rows: list[MethodSummary]
    files: dict = field(default_factory=dict)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "method"


def _run_recipe(base: Recipe, choice: MethodChoice, seed_offset: int, run_dir: Path) -> dict:
    data = base.model_dump(mode="json")
    data["method"] = dict(choice.method)
    t = data["training"]
    same_kind = (choice.method["name"] in WHOLE_NETWORK) == (base.method.name in WHOLE_NETWORK) and \
        (choice.method["name"] in WHOLE_NETWORK or choice.method["name"] == base.method.name)
    if choice.lr is not None:
        t["lr"] = choice.lr
    elif not same_kind:
        t["lr"] = None  # this method's own default rate: adapters need about 10x the rate of full fine-tuning
    t["seed"] = base.training.seed + seed_offset
    for key in ("head_seed", "data_seed"):
        if t.get(key) is not None:
            t[key] = t[key] + seed_offset
    t["progress"] = False
    for key in ("train", "validation", "test"):
        if data["data"].get(key):
            data["data"][key] = str(Path(data["data"][key]).resolve())
    data["output"]["dir"] = str(run_dir.resolve())
    return data


def _outcome_metric(recipe: Recipe, metrics: dict) -> tuple[str, str]:
    metric = recipe.training.metric or recipe.task_kind.default_metric
    split = "test" if "test" in metrics else "validation"
    return metric, split


@runlock.in_scope  # the study folder is locked until the study ends
def compare(recipe: Union[str, Path, dict, Recipe], methods: Union[str, list[str]], *, seeds: int = 1,
            overrides: Optional[list[str]] = None, study_dir: Optional[Union[str, Path]] = None,
            console=None) -> CompareResult:
    """Run every method with `seeds` seeds (the recipe's seed, seed+1, ...) and tabulate them."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..report import console as default_console

    console = console or default_console()
    base = load_recipe(recipe, overrides)
    if seeds < 1:
        raise RecipeError([f"--seeds: {seeds}; give 1 or more"])
    choices = parse_methods(methods)
    d = base.data
    if not (d.validation or d.test or d.validation_fraction or d.test_fraction or d.dataset):
        raise RecipeError(["compare scores each run on held-out data: give data.validation or data.test, or a "
                           "data.validation_fraction / data.test_fraction above 0"])
    study = Path(study_dir) if study_dir else Path(base.output.dir + "-compare")
    jobs = []
    problems = []
    # Seed-major order: every method's first seed before any second seed, so that an early look (or an
    # interrupted study) already compares all methods, and slow drifts of the machine spread over all of them.
    for k in range(seeds):
        for choice in choices:
            run_dir = study / _slug(choice.label) / f"seed-{base.training.seed + k}"
            try:
                run_recipe = load_recipe(_run_recipe(base, choice, k, run_dir))
            except RecipeError as e:
                problems.extend(f"--methods {choice.label!r}: {p}" for p in e.problems)
                continue
            jobs.append((choice, k, run_dir, run_recipe))
    if problems:
        raise RecipeError(sorted(set(problems), key=problems.index))
    runlock.acquire(study, "a compare study")
    study.mkdir(parents=True, exist_ok=True)
    (study / "logs").mkdir(exist_ok=True)

    results: dict[str, list[dict]] = {c.label: [] for c in choices}
    gpus = trial_gpus()
    if gpus:
        console.print(f"{len(gpus)} GPUs: {len(gpus)} runs at a time, one per GPU ({', '.join(gpus)})")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} runs"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        bar = progress.add_task("compare", total=len(jobs))

        def run_one(job, env):
            choice, k, run_dir, run_recipe = job
            seed = base.training.seed + k
            if not gpus:
                progress.update(bar, description=f"{choice.label} seed {seed}")
            result_path = study / "logs" / f"{_slug(choice.label)}-seed-{seed}.json"
            result = _reuse(run_dir, run_recipe, result_path)
            if result is not None:
                return result, "reused"
            log = study / "logs" / f"{_slug(choice.label)}-seed-{seed}.log"
            return _run_in_process(run_recipe, result_path, log, env), "trained"

        def done(job, outcome):
            (choice, k, _, run_recipe), (result, how) = job, outcome
            metric, split = _outcome_metric(run_recipe, result["metrics"])
            where = f", GPU {result['gpu']}" if result.get("gpu") is not None else ""
            progress.console.print(f"  {choice.label:<14} seed {base.training.seed + k}: {split} {metric} "
                                   f"{result['metrics'][split][metric]:.4f}  ({result['train_seconds']:.0f} s, {how}{where})")
            progress.advance(bar)

        for (choice, *_), (result, _) in zip(jobs, run_placed(jobs, run_one, gpus, done)):
            results[choice.label].append(result)

    rows = [_summarize(c, results[c.label], base) for c in choices]
    files = write_reports(rows, study, base, seeds)
    console.print(comparison_table(rows, seeds))
    console.print("written: " + ", ".join(str(p) for p in files.values()))
    return CompareResult(study_dir=study, rows=rows, files=files)


def _reuse(run_dir: Path, run_recipe: Recipe, result_path: Path) -> Optional[dict]:
    if not (run_dir / "summary.json").exists():
        return None
    from ..rundir import saved_recipe

    if saved_recipe(run_dir) != run_recipe:
        raise RunDirError(f"{run_dir} holds a finished run of another recipe; remove it or give another --out")
    if not result_path.exists():
        raise RunDirError(f"{run_dir} finished but its study record {result_path} is missing; remove the run to redo it")
    return json.loads(result_path.read_text())


def _run_in_process(run_recipe: Recipe, result_path: Path, log_path: Path, env: Optional[dict] = None) -> dict:
    """The run in a process of its own (`env`: a placed trial's, with its one GPU); returns its result record."""
    job = result_path.with_suffix(".job.json")
    job.write_text(json.dumps({"recipe": run_recipe.model_dump(mode="json"), "result": str(result_path)}))
    with open(log_path, "w") as log:
        code = subprocess.call([sys.executable, "-m", "tuneforge.studies.worker", str(job)], stdout=log, stderr=log,
                               env=env)
    if code != 0 or not result_path.exists():
        tail = log_path.read_text().strip().splitlines()[-5:]
        raise TuneforgeError(f"run {run_recipe.output.dir} failed (exit {code}); its log is {log_path}:\n  "
                             + "\n  ".join(tail))
    return json.loads(result_path.read_text())


def _summarize(choice: MethodChoice, results: list[dict], base: Recipe) -> MethodSummary:
    first = results[0]
    metric, split = _outcome_metric(base, first["metrics"])
    values = [r["metrics"][split][metric] for r in results]
    return MethodSummary(
        label=choice.label, method=choice.method["name"], lr=first.get("lr", 0.0), runs=len(results), metric=metric,
        split=split, mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
        values=values, trainable_parameters=first["trainable_parameters"], total_parameters=first["total_parameters"],
        train_seconds=statistics.median(r["train_seconds"] for r in results),
        peak_rss_mb=max(r["peak_rss_mb"] for r in results), stored_bytes=first.get("stored_bytes", 0))


# ---------------------------------------------------------------- reports

def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}"


def _columns(rows: list[MethodSummary], seeds: int) -> list[tuple[str, list[str]]]:
    r0 = rows[0]
    metric_head = f"{r0.split} {r0.metric}" + (f" (mean ± std, {seeds} seeds)" if seeds > 1 else "")
    cols = [
        ("method", [r.label for r in rows]),
        (metric_head, [f"{r.mean:.4f} ± {r.std:.4f}" if seeds > 1 else f"{r.mean:.4f}" for r in rows]),
    ]
    if seeds > 1:
        from .seeds import interval95
        bounds = [interval95(r.values)[2:] if r.runs > 1 else None for r in rows]
        cols.append(("95% interval of the mean", [f"[{b[0]:.4f}, {b[1]:.4f}]" if b else "" for b in bounds]))
    cols += [
        ("trainable params", [f"{r.trainable_parameters:,}" for r in rows]),
        ("trainable %", [f"{r.trainable_percent:.2f}" for r in rows]),
        ("lr", [f"{r.lr:g}" for r in rows]),
        ("train time (s, median)", [f"{r.train_seconds:.0f}" for r in rows]),
        ("peak RSS (MB)", [f"{r.peak_rss_mb:.0f}" for r in rows]),
    ]
    cols.append(("stored (MB)", [_mb(r.stored_bytes) for r in rows]))
    return cols


def comparison_table(rows: list[MethodSummary], seeds: int):
    from rich.table import Table

    table = Table(title="method comparison")
    cols = _columns(rows, seeds)
    for i, (name, _) in enumerate(cols):
        table.add_column(name, justify="left" if i == 0 else "right")
    for i in range(len(rows)):
        table.add_row(*(values[i] for _, values in cols))
    return table


def markdown_table(rows: list[MethodSummary], seeds: int) -> str:
    cols = _columns(rows, seeds)
    lines = ["| " + " | ".join(name for name, _ in cols) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    for i in range(len(rows)):
        lines.append("| " + " | ".join(values[i] for _, values in cols) + " |")
    return "\n".join(lines) + "\n"


def write_reports(rows: list[MethodSummary], study: Path, base: Recipe, seeds: int) -> dict[str, Path]:
    files = {"markdown": study / "compare.md", "csv": study / "compare.csv", "json": study / "compare.json",
             "plot": study / "compare.png"}
    files["markdown"].write_text(markdown_table(rows, seeds))
    with open(files["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "name", "split", "metric", "mean", "std", "runs", "values", "trainable_parameters",
                         "total_parameters", "trainable_percent", "lr", "train_seconds", "peak_rss_mb", "stored_bytes"])
        for r in rows:
            writer.writerow([r.label, r.method, r.split, r.metric, f"{r.mean:.6f}", f"{r.std:.6f}", r.runs,
                             " ".join(f"{v:.6f}" for v in r.values), r.trainable_parameters, r.total_parameters,
                             f"{r.trainable_percent:.4f}", r.lr, f"{r.train_seconds:.2f}", r.peak_rss_mb, r.stored_bytes])
    files["json"].write_text(json.dumps({"recipe": base.model_dump(mode="json"), "seeds": seeds,
                                         "rows": [{**asdict(r), "trainable_percent": r.trainable_percent} for r in rows]},
                                        indent=1))
    plot(rows, files["plot"], higher_is_better(rows[0].metric))
    return files


def plot(rows: list[MethodSummary], path: Path, higher: bool = True) -> None:
    """Metric (mean, std as error bar) against trainable parameters, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        x = max(r.trainable_parameters, 1)
        ax.errorbar([x], [r.mean], yerr=[r.std], fmt="o", capsize=4)
        ax.annotate(r.label, (x, r.mean), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{rows[0].split} {rows[0].metric}" + ("" if higher else " (lower is better)"))
    runs = rows[0].runs
    ax.set_title(f"quality vs trainable parameters ({runs} seed{'s' if runs > 1 else ''}; bars: std)")
    ax.grid(True, which="both", alpha=0.3)
    ys = [r.mean for r in rows]
    spread = max(ys) - min(ys)
    if math.isfinite(spread) and spread > 0:
        ax.set_ylim(min(ys) - 0.15 * spread - max(r.std for r in rows), max(ys) + 0.15 * spread + max(r.std for r in rows))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
