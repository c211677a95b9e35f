"""The accuracy check of the training defaults: the demo recipe (with --method lora, examples/lora.yaml), 3 seeds,
with the defaults of 0.8 (fp32, random batches, torch's dropout, PEFT's LoRA forward), with length-grouped
batches alone, and with tuneforge's defaults (grouped, precision auto, fast dropout masks, fused LoRA).

    python benchmarks/defaults_accuracy.py [--seeds 3] [--only defaults ...] [--out docs/results/defaults-accuracy.json]

Each configuration is one `tuneforge compare` study (seeds 42, 43, 44: the recipe's seed and the next ones,
varying the head's initialization, dropout and the data order). Reports test accuracy per seed and the mean.
Training times are printed but were not measured on a quiet machine: use bench_vs_trainer.py for speed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "fp32, random batches (0.8 defaults)": ["training.precision=fp32", "training.group_by_length=false",
                                            "training.fast_dropout=false", "training.fused_lora=false"],
    "fp32, grouped by length": ["training.precision=fp32", "training.group_by_length=true",
                                "training.fast_dropout=false"],
    "defaults": [],  # grouped, precision auto, fast dropout masks on CPU
}
RECIPES = {"full": "demo.yaml", "lora": "lora.yaml"}
BASELINE = "fp32, random batches (0.8 defaults)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configurations")
    ap.add_argument("--method", choices=["full", "lora"], default="full",
                    help="full: examples/demo.yaml; lora: examples/lora.yaml (same data, LoRA on every linear)")
    ap.add_argument("--out")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for i, (label, overrides) in enumerate((k, v) for k, v in CONFIGS.items() if not args.only or k in args.only):
            out = Path(folder) / str(i)
            cmd = [sys.executable, "-m", "tuneforge", "compare", str(root / "examples" / RECIPES[args.method]),
                   *overrides, "training.progress=false", "--methods", args.method, "--seeds", str(args.seeds), "--out", str(out)]
            subprocess.run(cmd, check=True, capture_output=True)
            row = json.loads((out / "compare.json").read_text())["rows"][0]
            precision = json.loads(next((out / args.method).glob("seed-*/summary.json")).read_text())["runtime"]["precision"]
            results[label] = {"overrides": overrides, "precision": precision, "test_accuracy": row["values"],
                              "mean": row["mean"], "std": row["std"], "train_seconds_median": row["train_seconds"],
                              "peak_rss_mb": row["peak_rss_mb"]}
            print(f"{label:40s} ({precision}): test accuracy {row['values']} mean {row['mean']:.4f}", flush=True)
    if BASELINE in results:
        base = results[BASELINE]["mean"]
        for label, r in results.items():
            print(f"{label:40s}: {100 * (r['mean'] - base):+.2f} points against fp32 random batches")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
