"""Student against teacher: metric, parameters, size on disk and inference speed, measured on the same rows."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from ..engine.evaluate import run_prediction
from ..engine.runtime import Runtime, device_of
from ..methods import count_parameters


def examples_per_second(model, split, batch_size: int, pad_id: int, runtime: Runtime | None = None) -> float:
    """One forward pass over the split (length-sorted batches, no gradients), after a warm-up batch."""
    if len(split) == 0:
        return float("nan")
    runtime = runtime or Runtime(device_of(model))
    with torch.no_grad(), runtime.autocast():
        model.eval()
        model(**{k: v for k, v in runtime.to_device(split.batch(list(range(min(batch_size, len(split)))), pad_id)).items()
                 if k not in ("labels", "teacher_logits")})
    started = time.perf_counter()
    run_prediction(model, split, batch_size, pad_id, runtime)  # ends with the logits on the host: synchronized
    return len(split) / (time.perf_counter() - started)


def measure_speed(models: dict, passes: int = 3) -> dict[str, float]:
    """Median examples/s per model over `passes` interleaved passes (teacher, student, teacher, ...), so a
    slower moment of the machine falls on both. `models`: name -> (model, split, batch_size, pad_id)."""
    runs = {name: [] for name in models}
    for _ in range(passes):
        for name, (model, split, batch_size, pad_id) in models.items():
            runs[name].append(examples_per_second(model, split, batch_size, pad_id))
    return {name: statistics.median(v) for name, v in runs.items()}


def parameters(model) -> int:
    return count_parameters(model)[1]


def write_report(report: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    rows = report["rows"]
    metric = report["metric"]
    lines = [f"| model | parameters | stored MB | {metric} ({report['split']}) | examples/s | |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r.get('stored_bytes', 0) / 1e6:.1f} | {r['metric']:.4f} | "
                     f"{r['examples_per_second']:.1f} | {r['source']} |")
    lines.append("")
    lines.append(f"Student: {report['size_ratio']:.2f}x the teacher's parameters, {report['speedup']:.2f}x its speed, "
                 f"{metric} {report['metric_gap']:+.4f} against it. Speed: median of {report['passes']} interleaved "
                 f"passes over the {report['rows_measured']} {report['split']} rows, batch {report['batch_size']}.")
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def print_report(console, report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"distillation: student against teacher ({report['split']} split)")
    for col in ("model", "parameters", "stored MB", report["metric"], "examples/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in report["rows"]:
        table.add_row(r["model"], f"{r['parameters']:,}", f"{r.get('stored_bytes', 0) / 1e6:.1f}", f"{r['metric']:.4f}",
                      f"{r['examples_per_second']:.1f}")
    console.print(table)
    console.print(f"  student: {report['size_ratio']:.2f}x the parameters, {report['speedup']:.2f}x the speed, "
                  f"{report['metric']} {report['metric_gap']:+.4f}")
