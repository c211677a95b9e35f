"""Knowledge distillation on the demo data (Rotten Tomatoes, 3,000 labelled snippets): a 3-block MiniLM student
(blocks 0, 2, 4 of all-MiniLM-L6-v2) trained on the labels alone against the same student distilled from the
fine-tuned 6-block MiniLM teacher, with and without hidden-state matching, distilled when cut from the
fine-tuned teacher itself rather than from the pre-trained MiniLM, and distilled with a transfer set of unlabeled
in-domain snippets (Hinton et al.'s setting); each with the same seeds.

    python benchmarks/distill_demo.py [--seeds 42,43] [--out docs/results/distill-demo] [--work runs/distill-demo]

The teacher is examples/demo.yaml (seed 42). Every student uses examples/distill-minilm.yaml's settings; the
inference speed of teacher and student is measured by the distillation report (median of 3 interleaved passes over
the 2,000 test snippets, batch 64, one process alone on the machine). Runs go one after another.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "demo.yaml"
STUDENT = ROOT / "examples" / "distill-minilm.yaml"
CONFIGS = {
    "labels-only": ("student trained on the labels alone", ["distill=null"]),
    "distilled": ("student distilled (alpha 0.5, T 2, cached teacher outputs)", []),
    "distilled-hidden": ("distilled + hidden-state matching (weight 1, teacher live)",
                         ["distill.cache=false", "distill.hidden_weight=1.0"]),
    "from-teacher": ("distilled, cut from the fine-tuned teacher itself (its blocks 0, 2, 4 and head)",
                     ["model.name={teacher}"]),
    "transfer": ("distilled + a transfer set: the 7,252 unused packaged snippets, teacher's targets only",
                 ["distill.unlabeled=[rotten-tomatoes-unused]"]),
}


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    import tuneforge

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="42,43")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--work", default=str(ROOT / "runs" / "distill-demo"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "distill-demo"))
    p.add_argument("--reuse", action="store_true", help="keep finished runs")
    args = p.parse_args()
    work, seeds = Path(args.work), [int(s) for s in args.seeds.split(",")]
    common = ["training.progress=false", "training.threads=2"]

    teacher_dir = work / "teacher"
    if not (args.reuse and (teacher_dir / "summary.json").exists()):
        tuneforge.fine_tune(TEACHER, [*common, f"output.dir={teacher_dir}"], overwrite=True)
    teacher = _summary(teacher_dir)
    results = []
    for seed in seeds:
        for name in args.configs.split(","):
            run_dir = work / f"{name}-{seed}"
            overrides = [*common, f"training.seed={seed}", f"distill.teacher={teacher_dir}", f"output.dir={run_dir}",
                         *(o.format(teacher=teacher_dir) for o in CONFIGS[name][1])]
            if name == "labels-only":
                overrides = [o for o in overrides if not o.startswith("distill.teacher")]
            started = time.perf_counter()
            if not (args.reuse and (run_dir / "summary.json").exists()):
                tuneforge.fine_tune(STUDENT, overrides, overwrite=True)
            s = _summary(run_dir)
            row = {"config": name, "seed": seed, "test_accuracy": s["metrics"]["test"]["accuracy"],
                   "validation_accuracy": s["metrics"]["validation"]["accuracy"], "train_seconds": s["train_seconds"],
                   "wall_seconds": round(time.perf_counter() - started, 1), "parameters": s["total_parameters"]}
            report = (s.get("distillation") or {}).get("report")
            if report:
                row["teacher_examples_per_second"] = report["rows"][0]["examples_per_second"]
                row["student_examples_per_second"] = report["rows"][1]["examples_per_second"]
                row["speedup"] = report["speedup"]
            results.append(row)
            print(json.dumps(row), flush=True)

    def mean(name, key):
        values = [r[key] for r in results if r["config"] == name and key in r]
        return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
    lines = ["| model | parameters | test accuracy (mean ± sd) | seeds | train s (mean) |", "|---|---|---|---|---|",
             f"| teacher: MiniLM 6 blocks, fine-tuned (examples/demo.yaml) | {teacher['total_parameters']:,} | "
             f"{teacher['metrics']['test']['accuracy']:.4f} | 42 | {teacher['train_seconds']:.0f} |"]
    for name in args.configs.split(","):
        acc, secs = mean(name, "test_accuracy"), mean(name, "train_seconds")
        per_seed = ", ".join(f"{r['test_accuracy']:.4f}" for r in results if r["config"] == name)
        params = next(r["parameters"] for r in results if r["config"] == name)
        lines.append(f"| {CONFIGS[name][0]} | {params:,} | {acc[0]:.4f} ± {acc[1]:.4f} ({per_seed}) | "
                     f"{','.join(map(str, seeds))} | {secs[0]:.0f} |")
    speed = [r for r in results if "speedup" in r]
    if speed:
        t = statistics.median(r["teacher_examples_per_second"] for r in speed)
        st = statistics.median(r["student_examples_per_second"] for r in speed)
        lines += ["", f"Inference on the 2,000 test snippets (batch 64, median over {len(speed)} reports of 3 interleaved "
                  f"passes each): teacher {t:.0f} examples/s, student {st:.0f} examples/s, "
                  f"{statistics.median(r['speedup'] for r in speed):.2f}x."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"teacher": {"test_accuracy": teacher["metrics"]["test"]["accuracy"],
                                                                "parameters": teacher["total_parameters"],
                                                                "train_seconds": teacher["train_seconds"]},
                                                    "runs": results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
