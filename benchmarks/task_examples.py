"""The two worked examples of the tagging and question-answering tasks, measured: examples/ner-wnut16.yaml
(MiniLM, full fine-tuning and LoRA, 3 seeds) and examples/qa.yaml (MiniLM on a SQuAD v1.1 slice, full and LoRA).

    python benchmarks/task_examples.py [--configs ner-full,ner-lora,qa-full,qa-lora] [--seeds 0,1,2]
                                       [--out docs/results/task-examples]

Runs go one after the other, alone on the machine; each run's summary gives the metrics, the trainable parameters
and the training seconds. The splits are fixed (data.split_seed 42); the seeds change head initialization, data
order and dropout. Nothing is chosen on test: the recipes' settings were fixed before any run."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA = ["method.name=lora", "method.r=8", "training.lr=1e-3", "training.head_lr=1e-3"]
CONFIGS = {  # name -> (recipe, overrides, seeds it runs)
    "ner-full": (ROOT / "examples" / "ner-wnut16.yaml", [], None),
    "ner-lora": (ROOT / "examples" / "ner-wnut16.yaml", LORA + ["training.epochs=10"], None),
    "qa-full": (ROOT / "examples" / "qa.yaml", [], [0]),
    "qa-lora": (ROOT / "examples" / "qa.yaml", LORA, [0]),
}
METRICS = {"ner": ("f1", "precision", "recall", "accuracy"), "qa": ("exact_match", "f1")}


def run(name: str, seed: int, work: Path, reuse: bool) -> dict:
    import tuneforge

    recipe, extra, _ = CONFIGS[name]
    run_dir = work / f"{name}-{seed}"
    overrides = [f"training.seed={seed}", "training.progress=false", f"output.dir={run_dir}", *extra]
    if not (reuse and (run_dir / "summary.json").exists()):
        tuneforge.fine_tune(recipe, overrides, overwrite=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    keys = METRICS[name.split("-")[0]]
    return {"config": name, "seed": seed, "trainable_parameters": summary["trainable_parameters"],
            "train_seconds": summary["train_seconds"], "steps": summary["steps"], "best_step": summary["best_step"],
            **{f"{split}_{k}": summary["metrics"][split][k] for split in ("validation", "test") for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "task-examples"))
    ap.add_argument("--work", default="runs/task-examples")
    ap.add_argument("--reuse", action="store_true", help="read runs finished under --work instead of training again")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"runs": []}
    if out.with_suffix(".json").exists():  # results of other configurations stay
        report = json.loads(out.with_suffix(".json").read_text())
    wanted = args.configs.split(",")
    report["runs"] = [r for r in report["runs"] if r["config"] not in wanted]
    for name in wanted:
        for seed in CONFIGS[name][2] or [int(s) for s in args.seeds.split(",")]:
            report["runs"].append(run(name, seed, Path(args.work), args.reuse))
            out.with_suffix(".json").write_text(json.dumps(report, indent=1))  # kept as it grows
    lines = ["| configuration | seeds | test metric (per seed) | mean | trainable parameters | median train s |",
             "|---|---|---|---|---|---|"]
    for name in CONFIGS:
        runs = [r for r in report["runs"] if r["config"] == name]
        if not runs:
            continue
        key = "test_f1"
        values = [r[key] for r in runs]
        lines.append(f"| {name} | {len(runs)} | {key}: {', '.join(f'{v:.4f}' for v in values)} | "
                     f"{statistics.mean(values):.4f} | {runs[0]['trainable_parameters']:,} | "
                     f"{statistics.median(r['train_seconds'] for r in runs):.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
