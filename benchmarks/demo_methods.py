"""Measure the freezing methods on the demo data: test accuracy, trainable parameters, wall time.

    python benchmarks/demo_methods.py [--out docs/results/methods-demo.md]

Runs each example recipe in turn (one at a time, so timings do not compete) and writes a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tuneforge

RECIPES = {
    "full": "examples/demo.yaml",
    "head only": "examples/head-only.yaml",
    "freeze embeddings + lower 4 blocks": "examples/freeze-lower-4.yaml",
    "layer-wise LR decay 0.8": "examples/layerwise-lr-decay.yaml",
    "gradual unfreezing (every 30 steps)": "examples/gradual-unfreezing.yaml",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/results/methods-demo.md")
    ap.add_argument("--only", nargs="*", help="names of RECIPES to run")
    args = ap.parse_args()
    rows = []
    for name, recipe in RECIPES.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        result = tuneforge.fine_tune(recipe, ["training.progress=false", f"output.dir=runs/methods/{Path(recipe).stem}"],
                                     overwrite=True)
        wall = time.perf_counter() - started
        rows.append({"method": name, "recipe": recipe, "test_accuracy": result.metrics["test"]["accuracy"],
                     "validation_accuracy": result.metrics["validation"]["accuracy"],
                     "trainable": result.trainable_parameters, "total": result.total_parameters,
                     "train_seconds": result.train_seconds, "wall_seconds": round(wall, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| method | test accuracy | validation accuracy | trainable parameters | % trainable | training time (s) | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} (`{r['recipe']}`) | {r['test_accuracy']:.4f} | {r['validation_accuracy']:.4f} | "
                     f"{r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
