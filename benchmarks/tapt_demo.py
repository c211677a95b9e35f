"""Task-adaptive pre-training (TAPT, Gururangan et al., 2020) on the demo data, measured with seeds: MiniLM's
masked-LM pre-training continued on the text of the 3,000 training snippets (labels unused), then fine-tuning on
only the first 300 labels, against fine-tuning the original MiniLM on the same 300 labels.

    python benchmarks/tapt_demo.py [--seeds 42,43,44] [--out docs/results/tapt-demo] [--work runs/tapt-demo]

The first TAPT seed runs examples/tapt.yaml whole (its `adapt:` stage, then the task); the other seeds fine-tune
from that run's adapted model (`model.name: RUN/adapt/model`), so the adaptation is run once and only the
fine-tuning seed varies, as for the direct runs. Runs go one after another, alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "tapt.yaml"


def main() -> None:
    import tuneforge

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--work", default=str(ROOT / "runs" / "tapt-demo"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "tapt-demo"))
    p.add_argument("--reuse", action="store_true", help="keep finished runs")
    args = p.parse_args()
    work, seeds = Path(args.work), [int(s) for s in args.seeds.split(",")]
    common = ["training.progress=false", "training.threads=2"]
    adapted = work / f"tapt-{seeds[0]}" / "adapt" / "model"
    results = []
    for seed in seeds:
        for name in ("direct", "tapt"):
            run_dir = work / f"{name}-{seed}"
            overrides = [*common, f"training.seed={seed}", f"output.dir={run_dir}"]
            if name == "direct":
                overrides.append("adapt=null")
            elif seed != seeds[0]:
                overrides += ["adapt=null", f"model.name={adapted}"]
            started = time.perf_counter()
            if not (args.reuse and (run_dir / "summary.json").exists()):
                tuneforge.fine_tune(RECIPE, overrides, overwrite=True)
            s = json.loads((run_dir / "summary.json").read_text())
            row = {"config": name, "seed": seed, "test_accuracy": s["metrics"]["test"]["accuracy"],
                   "validation_accuracy": s["metrics"]["validation"]["accuracy"], "train_seconds": s["train_seconds"],
                   "wall_seconds": round(time.perf_counter() - started, 1), "labelled_rows": s["rows"]["train"]}
            if "adaptation" in s:
                row["adaptation"] = s["adaptation"]
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "adaptation"}), flush=True)

    stage = next(r["adaptation"] for r in results if "adaptation" in r)
    lines = ["| fine-tuned from | test accuracy per seed | mean ± sd |", "|---|---|---|"]
    for name, label in (("direct", "all-MiniLM-L6-v2 (no adaptation)"),
                        ("tapt", "all-MiniLM-L6-v2 after TAPT on the 3,000 training texts")):
        acc = [r["test_accuracy"] for r in results if r["config"] == name]
        lines.append(f"| {label} | {', '.join(f'{a:.4f}' for a in acc)} | {statistics.mean(acc):.4f} ± "
                     f"{statistics.stdev(acc) if len(acc) > 1 else 0:.4f} |")
    diffs = [t["test_accuracy"] - d["test_accuracy"] for d in results if d["config"] == "direct"
             for t in results if t["config"] == "tapt" and t["seed"] == d["seed"]]
    val = stage["metrics"].get("validation", {})
    lines += ["", f"Paired by seed, TAPT minus direct: {', '.join(f'{x:+.4f}' for x in diffs)} (mean "
              f"{statistics.mean(diffs):+.4f}). Fine-tuning on {results[0]['labelled_rows']} labels, seeds "
              f"{', '.join(map(str, seeds))}.",
              f"Adaptation stage: {stage['steps']} masked-LM steps on {sum(stage['rows'].values())} texts in "
              f"{stage['seconds']:.0f} s; held-out masked-token loss {val.get('loss', float('nan')):.3f} "
              f"(perplexity {val.get('perplexity', float('nan')):.1f}, accuracy {val.get('token_accuracy', float('nan')):.3f})."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"runs": results}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
