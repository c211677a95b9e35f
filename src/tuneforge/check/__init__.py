"""`tuneforge check RECIPE`: the loop's guarantees shown on the user's own model, data and settings, with a few
real optimizer steps in a scratch folder (nothing is written into output.dir), and the run's time and memory
measured and projected.

Each check runs the real pipeline (`fine_tune`, the same loop, methods, precision and fast paths) on short probe
runs, watched by callbacks (check/probes.py):
- accumulation: grad_accum k x batch_size b gives the gradient of one batch of k*b rows;
- layout: a packed batch (causal-lm packing) against its examples unpacked, or a batch against itself padded
  further: the same loss and gradient (check/padding.py);
- resume: a run stopped after step s and resumed ends with the weights of an unbroken run;
- processes (under torchrun): the N-process step's gradient equals rank 0's one-process step (check/processes.py);
- export: each model folder the run gives (the full model, or the merged adapter), reloaded with transformers
  alone, computes the outputs the model had at the end of training (check/export.py);
- time and memory: seconds per step, evaluation and checkpoint save, peak memory, the whole run projected, and
  the largest batch that fits (check/memory.py).
"""
from __future__ import annotations

import math
import resource
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..engine.loop import count_steps
from ..errors import RecipeError
from ..recipe import Recipe, load_recipe
from . import memory
from .export import (EXPORT_RTOL, TrainedOutputs, artefacts, compare_adapter, compare_reloaded, generation_speed,
                     generation_stops, reload_outside)
from .common import CheckResult, max_difference, probe_recipe, skipped_stages, train, where as at
from .padding import EXTRA_PADDING, LAYOUT_RTOL, LayoutProbe
from .probes import CaptureGradients, FinalWeights, InterruptAfter, NoDropout, Timings
from .processes import processes_check

# The accumulation probes run in fp32: the invariant is the loop's arithmetic, and under bf16 autocast the
# rounding of each micro-batch's activations (padded to its own length) differs by far more than a defect would
# hide behind where gradients cancel (a balanced batch's head gradient: 0.67 of its size on a tiny model). In fp32
# the sums merely run in another order: a difference of ~1e-4 of the largest gradient there; a loss normalized per
# micro-batch is off by a factor k.
ACCUMULATION_RTOL = 1e-3
RESUME_RTOL = 1e-6  # a resumed run redoes the same arithmetic: equal up to last-bit noise of parallel kernels


@dataclass
class CheckReport:
    recipe: str
    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.results)

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "passed": self.passed, "results": [asdict(r) for r in self.results]}


def check(recipe, overrides: Optional[list[str]] = None, *, steps: int = 2, console=None,
          workdir: Optional[Path] = None) -> CheckReport:
    """Run the checks; `steps`: optimizer steps before the resume point (the probe runs 2 x steps)."""
    from ..report import console as default_console, quiet_console

    console = console or default_console()
    if steps < 1:
        raise RecipeError([f"--steps {steps}: give 1 or more"], "command line")
    base = load_recipe(recipe, overrides)
    from ..engine.runtime import launched_world, runtime_for
    # Under torchrun every rank runs every probe (as `train` would), in rank 0's scratch folder (one machine: the
    # resume probe needs storage every rank sees); rank 0 alone speaks, merges and decides.
    runtime = runtime_for(base.training) if launched_world()[1] > 1 else None
    main = runtime is None or runtime.is_main
    made = tempfile.mkdtemp(prefix="tuneforge-check-", dir=workdir) if main else None
    scratch = Path(runtime.gather(made)[0] if runtime else made)
    quiet = quiet_console()
    console = console if main else quiet
    try:
        budget = memory.budget_mb()
        accumulated, points = accumulation(base, scratch / "accumulation", quiet, console)
        arranged = layout(base, scratch / "layout", quiet, console)
        together = [processes_check(base, scratch / "processes", quiet, console, runtime)] if runtime else []
        resumed, timing, unbroken, trained = resume_and_time(base, scratch / "resume", steps, quiet, console)
        exported = export(base, unbroken, trained, scratch / "export", quiet, console) if main else []
        results = [accumulated, *arranged, *together, resumed, *exported, *timing, *_fits(base, points, timing, budget)]
        results += [CheckResult("not probed", None, f"{stage}: its own loop; the projected time leaves it out")
                    for stage in skipped_stages(base)]
        if runtime:
            results = runtime.gather(results)[0]  # rank 0's report (and verdict) on every rank
    finally:
        if runtime:
            runtime.barrier()
        if main:
            shutil.rmtree(scratch, ignore_errors=True)
    return CheckReport(recipe=str(recipe) if not isinstance(recipe, (dict, Recipe)) else "(recipe)", results=results)


def accumulation(base: Recipe, folder: Path, quiet, console) -> tuple[CheckResult, list]:
    """The first step's gradient with grad_accum k x batch b against one batch of k*b rows (dropout off); also
    the peak memory of each probe, (rows per forward, MB), for the largest-batch estimate."""
    t = base.training
    k = t.grad_accum if t.grad_accum > 1 else 2
    b = t.batch_size if t.grad_accum > 1 else max(1, t.batch_size // 2)
    console.print(f"check: accumulation, {k} x {b} rows against 1 x {k * b} (first step, dropout off, fp32)")
    grads, points = [], []
    for name, (size, accum) in {"accumulated": (b, k), "one-batch": (k * b, 1)}.items():  # (smaller forwards first)
        capture = CaptureGradients()
        resettable = memory.reset_peak()
        train(probe_recipe(base, folder / name, batch_size=size, grad_accum=accum, precision="fp32"), quiet,
               [NoDropout(), capture])
        grads.append(capture.grads)
        peak = memory.peak_mb() if resettable else None
        if peak is not None:
            points.append((size, peak))
    diff, scale, where = max_difference(grads[0], grads[1])
    relative = diff / scale if scale else diff
    return CheckResult("accumulation", relative <= ACCUMULATION_RTOL,
                       f"{k} x {b} vs 1 x {k * b}: max |diff| {diff:.3g}, {relative:.2g} of the largest gradient "
                       f"{scale:.3g}{at(diff, where)}", f"<= {ACCUMULATION_RTOL:g} rel. (fp32)",
                       {"k": k, "batch_size": b, "max_abs_diff": diff, "relative": relative}), points


def layout(base: Recipe, folder: Path, quiet, console) -> list[CheckResult]:
    probe = LayoutProbe()
    console.print("check: layout, the first rows " + ("packed against unpacked" if base.data.packing else
                                                       "against the same rows padded further") + " (fp32, eval mode)")
    train(probe_recipe(base, folder, precision="fp32"), quiet, [probe])
    if base.data.packing and probe.kind != "packed":
        return [CheckResult("packing", None, "not compared: the first packed rows hold one example each")]
    if probe.kind is None:
        return []
    relative = probe.grad_diff / probe.grad_scale if probe.grad_scale else probe.grad_diff
    what = "packed vs unpacked" if probe.kind == "packed" else f"padded vs {EXTRA_PADDING} more padding positions"
    return [CheckResult("packing" if probe.kind == "packed" else "padding", probe.loss_diff <= 1e-4 and
                        relative <= LAYOUT_RTOL,
                        f"{what}, {probe.rows} rows: loss {probe.loss_diff:.2g} apart (relative), gradient max |diff| "
                        f"{probe.grad_diff:.3g}, {relative:.2g} of the largest" + (f" (at {probe.where})" if
                                                                                  probe.grad_diff else ""),
                        f"loss 1e-4, grad {LAYOUT_RTOL:g} rel.",
                        {"kind": probe.kind, "loss_relative": probe.loss_diff, "grad_relative": relative})]


def resume_and_time(base: Recipe, folder: Path, steps: int, quiet, console):
    """An unbroken probe of 2 x steps against one stopped after `steps` and resumed; the unbroken one is timed and
    its outputs at the end kept for the export check. Returns (resume result, timing results, the unbroken run's
    result, its outputs)."""
    total = 2 * steps
    settings = {"max_steps": total, "checkpoint_every": steps, "keep_checkpoints": 2}
    has_validation = bool(base.data.validation or base.data.validation_fraction or base.data.dataset)
    if has_validation:
        settings["eval_every"] = steps
    console.print(f"check: resume, {total} steps unbroken against {steps} + {steps} resumed; timing")
    unbroken, timings, trained = FinalWeights(), Timings(), TrainedOutputs()
    started_rss = _peak_rss_mb()
    timings.resettable = memory.reset_peak()
    result = train(probe_recipe(base, folder / "unbroken", keep_validation=has_validation, **settings), quiet,
                    [unbroken, timings, trained])
    timings.peak = memory.peak_mb() if timings.resettable else None  # training, evaluation and saves at batch_size
    broken = probe_recipe(base, folder / "resumed", keep_validation=has_validation, **settings)
    train(broken, quiet, [InterruptAfter(steps + 1)])
    resumed = FinalWeights()
    train(broken, quiet, [resumed], resume=True)
    diff, scale, where = max_difference(resumed.weights, unbroken.weights)
    relative = diff / scale if scale else diff
    check = CheckResult("resume", relative <= RESUME_RTOL,
                        f"max |diff| {diff:.3g} of weights up to {scale:.3g}" + at(diff, where),
                        f"<= {RESUME_RTOL:g} rel.", {"steps": steps, "max_abs_diff": diff, "relative": relative})
    return check, _time_and_memory(base, timings, result, started_rss), result, trained


def export(base: Recipe, unbroken, trained: TrainedOutputs, scratch: Path, quiet, console) -> list[CheckResult]:
    from ..merging import MergeError

    console.print("check: export, each saved model reloaded with transformers alone")
    out = []
    if base.method.is_adapter and (unbroken.run_dir / "adapter" / "adapter_config.json").exists():  # (PEFT's own)
        out.append(_adapter_in_peft(unbroken.run_dir / "adapter", trained))
    try:
        made = artefacts(unbroken.run_dir, base.method.is_adapter, scratch, quiet)
    except MergeError as e:
        return [*out, CheckResult("export: merged model (tuneforge merge)", False, str(e).splitlines()[0],
                                  "merge's own check")]
    for name, folder in made.items():
        model = reload_outside(folder)  # once, for the outputs and for generation
        diff, scale = compare_reloaded(model, trained)
        relative = diff / scale if scale else diff
        out.append(CheckResult(f"export: {name}", relative <= EXPORT_RTOL,
                               f"outputs on {trained.outputs.shape[0]} held-out rows: max |diff| {diff:.3g} of "
                               f"outputs up to {scale:.3g}", f"<= {EXPORT_RTOL:g} rel.",
                               {"max_abs_diff": diff, "relative": relative}))
        if base.task_kind.generative:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(folder)
            stopped, token, generated = generation_stops(model, tokenizer)
            went = "stopped there" if stopped else f"went on to {generated} tokens"
            out.append(CheckResult(f"export: {name}, generation stops", stopped,
                                   f"made to emit {token} after 2 tokens, generation {went} (its "
                                   "generation_config.json)", "stops at the end-of-turn token"))
            per_token, peak = generation_speed(model, tokenizer)
            measured = f"{per_token * 1000:.3g} ms per token (greedy, batch 1, the reloaded model)"
            out.append(CheckResult("time per generated token", None, measured + (f"; peak memory {peak:,.0f} MB"
                                                                                 if peak is not None else ""),
                                   detail={"seconds_per_token": per_token, "peak_mb": peak}))
    return out


def _adapter_in_peft(adapter_dir: Path, trained: TrainedOutputs) -> CheckResult:
    name = "export: adapter (adapter/) in PEFT"
    try:
        diff, scale, cls = compare_adapter(adapter_dir, trained)
    except Exception as e:  # noqa: BLE001 - what a PEFT user would meet, reported as this check's failure
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = next((x for x in lines if "size mismatch" in x), lines[0] if lines else type(e).__name__)
        hint = (" (PEFT built the base with its default head: open it with from_pretrained(folder, num_labels=N), "
                "or use the merged model)") if "size mismatch" in why else ""
        return CheckResult(name, False, f"does not open: {type(e).__name__}: {why[:200]}{hint}", "opens, same outputs")
    relative = diff / scale if scale else diff
    return CheckResult(name, relative <= EXPORT_RTOL, f"{cls}: outputs on {trained.outputs.shape[0]} held-out rows, "
                       f"max |diff| {diff:.3g} of outputs up to {scale:.3g}", f"<= {EXPORT_RTOL:g} rel.",
                       {"max_abs_diff": diff, "relative": relative, "class": cls})


def _fits(base: Recipe, points: list, timing: list, budget) -> list[CheckResult]:
    peak = next((r.detail.get("run_peak_mb") for r in timing if r.name == "peak memory"), None)
    if budget is None or peak is None or len(points) < 2:
        return []
    found = memory.largest_batch(base.training.batch_size, peak, points[0], points[1], budget)
    if found is None:
        return [CheckResult("largest batch that fits", None, "the probes' peaks do not grow with the batch (the "
                            "model's memory dominates): no estimate")]
    fits, margin = found
    per_row = (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])
    return [CheckResult("largest batch that fits", None,
                        f"batch_size about {fits:,} (at {base.training.batch_size}: {margin:.0%} of {budget:,.0f} MB "
                        f"left; {per_row:.1f} MB per row of the first step's length, measured in fp32)",
                        detail={"batch_size": fits, "margin": margin, "budget_mb": budget, "mb_per_row": per_row})]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (kilobytes on Linux)


def _time_and_memory(base: Recipe, timings: Timings, result, started_rss: float) -> list[CheckResult]:
    t = base.training
    per_step = statistics.median(timings.steps[1:] or timings.steps) if timings.steps else float("nan")
    per_save = statistics.median(timings.saves) if timings.saves else 0.0
    per_eval = statistics.median(timings.evaluations) if timings.evaluations else 0.0
    rows = _train_rows(result)
    out = [CheckResult("time per optimizer step", None, f"{per_step:.3g} s (median of {max(len(timings.steps) - 1, 1)}; "
                       f"batch {t.batch_size} x accumulation {t.grad_accum})"),
           CheckResult("time per checkpoint save", None, f"{per_save:.3g} s" if timings.saves else "(none written)"),
           CheckResult("time per evaluation", None, f"{per_eval:.3g} s" if timings.evaluations else "(no validation)")]
    if rows:
        per_epoch, total = count_steps(rows, t)
        evals = (t.epochs if t.eval_every == "epoch" else total // t.eval_every) if per_eval else 0
        saves = math.ceil(total / per_epoch) + (total // t.checkpoint_every if t.checkpoint_every else 0)
        projected = total * per_step + evals * per_eval + saves * per_save
        out.append(CheckResult("projected run time", None, f"{_duration(projected)} ({total} steps, {evals} "
                               f"evaluations, {saves} checkpoints)", detail={"seconds": projected, "steps": total}))
    peak = getattr(timings, "peak", None)
    if torch.cuda.is_available():
        used = (f"GPU allocated {torch.cuda.max_memory_allocated() / 2**20:,.0f} MB, reserved "
                f"{torch.cuda.max_memory_reserved() / 2**20:,.0f} MB (training, evaluation, checkpoints)")
    elif peak is not None:
        used = f"peak RSS {peak:,.0f} MB over training, evaluation and checkpoints at batch_size {t.batch_size}"
    else:
        used = f"peak RSS {_peak_rss_mb():,.0f} MB (the process, over the probes; {started_rss:,.0f} MB before them)"
    out.append(CheckResult("peak memory", None, used, detail={"run_peak_mb": peak}))
    return out


def _train_rows(result) -> Optional[int]:
    if result is None:
        return None
    import json
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return summary.get("rows", {}).get("train")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{seconds:.1f} s"


__all__ = ["CheckReport", "CheckResult", "check"]
