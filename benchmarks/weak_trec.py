"""Weak supervision measured on TREC-6 with MiniLM: fine-tuning on the rules' majority vote (a), the same followed
by COSINE self-training (b), (b) without its contrastive term (ablation), and fine-tuning on gold labels (c, the
ceiling). Validation (early stopping, best step) and test are gold in every case.

    python benchmarks/weak_trec.py [--seeds 42,43] [--out docs/results/weak-trec]

(a) is read from the first stage of the (b) runs: the same model, measured on test before self-training starts.
(d) and (e) are the same two stages on the labels of the rules in examples/trec_rules.py (one-coin label model),
which label 56.5% of the training rows; the rest are self-training's unlabelled rows.
Runs go seed by seed, the configurations of a seed one after the other, alone on the machine. Then the
labeling functions of examples/trec_rules.py are measured against gold: each rule's coverage, overlaps,
conflicts and accuracy, and the label models against the majority vote.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "trec-weak.yaml"
RULES_RECIPE = ROOT / "examples" / "trec-rules.yaml"
CONFIGS = {  # name (no commas: --configs is a comma-separated list) -> (recipe, overrides)
    "cosine": (RECIPE, []),
    "cosine-no-contrastive": (RECIPE, ["weak.self_training.contrastive_weight=0"]),
    "gold": (RECIPE, ["weak=null"]),
    "rules": (RULES_RECIPE, []),
}
LABELS = {"cosine": "(b) (a) + COSINE self-training",
          "cosine-no-contrastive": "(b') (a) + COSINE without the contrastive term",
          "gold": "(c) gold labels (ceiling)",
          "rules": "(e) (d) + COSINE self-training"}
STAGE_ONE = {"cosine": "(a) weak labels (major), early stopping",
             "rules": "(d) our rules + one-coin label model (56.5% of rows), early stopping"}


def run(name: str, seed: int, work: Path, reuse: bool) -> dict:
    import tuneforge

    recipe, extra = CONFIGS[name]
    run_dir = work / f"{name}-{seed}"
    overrides = [f"training.seed={seed}", "training.progress=false", "training.threads=2", f"output.dir={run_dir}",
                 *extra]
    if not (reuse and (run_dir / "summary.json").exists()):
        tuneforge.fine_tune(recipe, overrides, overwrite=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {"config": name, "seed": seed, "test_accuracy": summary["metrics"]["test"]["accuracy"],
           "validation_accuracy": summary["metrics"]["validation"]["accuracy"], "seconds": summary["train_seconds"],
           "steps": summary["steps"]}
    weak = summary.get("weak")
    if weak:
        first = weak["stage_one"]
        out["stage_one"] = {"test_accuracy": first["metrics"]["test"]["accuracy"],
                            "validation_accuracy": first["metrics"]["validation"]["accuracy"],
                            "best_step": first["best_step"], "steps": first["steps"], "seconds": first["seconds"]}
        st = weak.get("self_training")
        if st:
            out["self_training"] = {"best_step": st["best_step"], "improved": st.get("improved", True),
                                    "steps": st["steps"], "seconds": st["seconds"],
                                    "pseudo_labels": st["pseudo_labels"],
                                    "validation_curve": [(h["step"], round(h["accuracy"], 4)) for h in st["history"]]}
    return out


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
