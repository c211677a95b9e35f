"""Weak supervision on TREC-6 with MiniLM from hand-written rules: fine-tuning on the labels of the rules in
examples/trec_rules.py (one-coin label model; they label 56.5% of the training rows) (d), then COSINE
self-training on every row (e). Validation (early stopping, best step) and test are gold.

    python benchmarks/weak_trec.py [--seeds 42,43] [--out docs/results/weak-trec]

(d) is read from the first stage of the (e) runs. Then the labeling functions are measured against gold: each
rule's coverage, overlaps, conflicts and accuracy, and the label models against the majority vote. The benchmark's
own weak labels (`major`) and the gold ceiling are in benchmarks/cosine_reproduction.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from cosine_reproduction import train  # same folder: how a study runs and digests a recipe

ROOT = Path(__file__).resolve().parents[1]
RULES_RECIPE = ROOT / "examples" / "trec-rules.yaml"
CONFIGS = {"rules": (RULES_RECIPE, [])}  # name (no commas: --configs is a comma-separated list) -> (recipe, overrides)
LABELS = {"rules": "(e) (d) + COSINE self-training"}
STAGE_ONE = {"rules": "(d) our rules + one-coin label model (56.5% of rows), early stopping"}


def run(name: str, seed: int, work: Path, reuse: bool) -> dict:
    recipe, extra = CONFIGS[name]
    overrides = [f"training.seed={seed}", "training.progress=false", "training.threads=2", *extra]
    return {"config": name, "seed": seed, **train(recipe, overrides, work / f"{name}-{seed}", reuse)}


def rules_report() -> dict:
    """The hand-written TREC rules on the training rows, against gold, and each label model."""
    import numpy as np

    from tuneforge.weak import apply_labeling_functions, analyze, load_labeling_functions
    from tuneforge.weak.analysis import label_accuracy
    from tuneforge.weak.label_model import fit_label_model, majority_vote

    folder = ROOT.parent / "shared" / "data" / "weak-supervision" / "trec"
    rows = json.loads((folder / "train_data.json").read_text())
    lfs = load_labeling_functions(ROOT / "examples" / "trec_rules.py")
    names = [str(i) for i in range(6)]
    matrix = apply_labeling_functions(lfs, [r["text"] for r in rows], names)
    gold = np.array([r["label"] for r in rows])
    one_coin = fit_label_model(matrix, 6, "one-coin")
    analysis = analyze(matrix, [lf.name for lf in lfs], names, gold, one_coin.accuracies(matrix))
    models = {"majority": majority_vote(matrix, 6), "one-coin": one_coin.predict(matrix),
              "dawid-skene": fit_label_model(matrix, 6, "dawid-skene").predict(matrix)}
    quality = {k: label_accuracy(v.probs, v.covered, gold) for k, v in models.items()}
    for k, v in models.items():  # how confident the soft labels are: the mean top probability
        quality[k]["mean_top_probability"] = float(np.nanmax(v.probs[v.covered], 1).mean())
    major = np.array([r["major"] for r in rows])
    quality["given major column"] = {"accuracy": float((major == gold).mean()), "coverage": 1.0,
                                     "scored_rows": len(rows)}
    return {"analysis": analysis.to_json(), "label_models": quality}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "weak-trec"))
    ap.add_argument("--work", default="runs/weak-trec")
    ap.add_argument("--reuse", action="store_true", help="read runs already finished under --work instead of "
                    "training them again")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"rules": rules_report(), "runs": []}
    (out.with_suffix(".json")).write_text(json.dumps(report, indent=1))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.configs.split(","):
            report["runs"].append(run(name, seed, Path(args.work), args.reuse))
            out.with_suffix(".json").write_text(json.dumps(report, indent=1))  # kept as it grows
    rows = {}
    for r in report["runs"]:
        if "stage_one" in r and r["config"] in STAGE_ONE:
            rows.setdefault(STAGE_ONE[r["config"]], []).append(r["stage_one"]["test_accuracy"])
        rows.setdefault(LABELS[r["config"]], []).append(r["test_accuracy"])
    lines = ["| configuration | test accuracy per seed | mean |", "|---|---|---|"]
    for label in sorted(rows):
        values = rows[label]
        lines.append(f"| {label} | {', '.join(f'{v:.4f}' for v in values)} | {statistics.mean(values):.4f} |")
    report["table"] = {k: {"per_seed": v, "mean": statistics.mean(v)} for k, v in rows.items()}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
