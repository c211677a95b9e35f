"""Run reports: the console, the end-of-run summary table."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def console() -> Console:
    # Logs and pipes get 120 columns instead of rich's 80, so metric lines and the progress bar stay whole.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def quiet_console() -> Console:
    """For processes other than rank 0: one process speaks for the run."""
    return Console(quiet=True)


def metrics_table(metrics: dict, title: str = "metrics") -> Table:
    names = sorted({k for m in metrics.values() for k in m if k != "eval_seconds"},
                   key=lambda k: (k != "accuracy", k != "loss", k))
    table = Table(title=title)
    table.add_column("metric")
    for split in metrics:
        table.add_column(split, justify="right")
    for name in names:
        table.add_row(name, *(f"{metrics[s][name]:.4f}" if name in metrics[s] else "" for s in metrics))
    return table


def check_table(report) -> Table:
    """`tuneforge check`'s report: each check, pass / fail (or a measurement), what was measured, the tolerance."""
    table = Table(title=f"tuneforge check: {'all invariants hold' if report.passed else 'AN INVARIANT FAILED'}")
    for column in ("check", "result", "measured", "tolerance"):
        table.add_column(column)
    for r in report.results:
        verdict = "[green]pass[/]" if r.passed else "[red]FAIL[/]" if r.passed is False else "measured"
        table.add_row(r.name, verdict, r.measured, r.tolerance)
    return table


def print_summary(console: Console, result) -> None:
    if result.metrics:
        console.print(metrics_table(result.metrics))
    pct = 100 * result.trainable_parameters / max(result.total_parameters, 1)
    console.print(f"trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,} ({pct:.2f}%)")
    console.print(f"steps: {result.steps}; training time: {result.train_seconds:.1f} s; best step: {result.best_step}")
    from ..recipe import ADAPTER_METHODS
    from ..tasks import TASKS
    # A language model's head is its own, pre-trained one: an adapter run then stores the adapter alone.
    what = ("adapter" if TASKS[result.task].generative else "adapter and head") if result.method in ADAPTER_METHODS \
        else "model"
    console.print(f"{what} saved to: {result.model_dir} ({format_bytes(result.stored_bytes)} of weights)")
    if what == "adapter and head":
        console.print(merge_first_note(result.run_dir))


def merge_first_note(run_dir) -> str:
    """A task head trained beside an adapter opens in tuneforge (predict, evaluate, serve) as it is; outside it,
    transformers.pipeline and PEFT's AutoPeftModelFor... rebuild the base from its own config (2 labels) and fail on
    the saved head, so other tools get the merged model."""
    return (f"  to open it outside tuneforge (transformers.pipeline, AutoModelFor...), merge it first: "
            f"tuneforge merge {run_dir} --out FOLDER; tuneforge predict/evaluate read the run as it is")


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
