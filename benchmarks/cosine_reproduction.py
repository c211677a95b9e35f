"""COSINE (Yu et al., NAACL 2021) reproduced on the weak labels the authors released: TREC-6 and ChemProt from
`../shared/data/weak-supervision`, each with its `major` column (the majority vote of the benchmark's rules) as the
weak labels and gold validation and test sets. Per model, data set and seed, four configurations:

    weak-labels            fine-tuned on `major` alone: the first stage of the `cosine` run, measured before
                           self-training starts
    cosine                 the same first stage, then COSINE self-training
    cosine-no-contrastive  the same, with the contrastive term off (contrastive_weight 0)
    gold                   fine-tuned on the gold labels with the first stage's settings (the ceiling)

and one diagnostic, which reads the training rows' gold labels and so is a measurement, never a method:

    oracle-selection       cosine-no-contrastive whose confident set holds only right pseudo-labels: at each
                           refresh, rows whose teacher prediction is wrong get uniform targets (confidence 0,
                           outside every term). What self-training reaches if confidence picked out exactly the
                           right pseudo-labels
    oracle-selection-50    the same for a fixed random half of the training rows (a quarter for -25): wrong
                           pseudo-labels of the other rows stay, as confident as the teacher makes them. How
                           precise the confident set must be for a given gain

    python benchmarks/cosine_reproduction.py [--models minilm-l6,mpnet-base] [--datasets trec,chemprot]
        [--seeds 42,43,44] [--configs weak-labels,cosine,cosine-no-contrastive,gold,oracle-selection] [--reuse]

Writes docs/results/cosine-reproduction.json (one row per run: model, dataset, config, seed, test_accuracy),
cosine-reproduction-details.json (every run's stages, validation curve, pseudo-label accuracy and confident
share at each refresh, wall time) and cosine-reproduction.md (the tables). Runs go one after the other, alone
on the machine, with `training.threads` set to the machine's cores. What is shortened for 2 CPU cores is in
SHORTENED and in the report; with a GPU, `--full` runs the authors' max_length (128), every block trained and the
recipe's step counts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"trec": ROOT / "examples" / "trec-weak.yaml", "chemprot": ROOT / "examples" / "chemprot-weak.yaml"}
ORACLE_SHARE = {"oracle-selection": 1.0, "oracle-selection-50": 0.5, "oracle-selection-25": 0.25}  # of the rows
CONFIGS = {"cosine": [], "cosine-no-contrastive": ["weak.self_training.contrastive_weight=0"], "gold": ["weak=null"],
           **{name: ["weak.self_training.contrastive_weight=0"] for name in ORACLE_SHARE}}
PER_CONFIG = {o for extra in CONFIGS.values() for o in extra}  # overrides that name a configuration, not a setting
REPORTED = ("weak-labels", "cosine", "cosine-no-contrastive", "gold")  # cosine-reproduction.json's configurations
# What 2 CPU cores can do, per data set and model (the recipes hold the rest). mpnet-base is 5x MiniLM's compute
# per token. On TREC its questions fit 32 tokens (15 of 4,585 are cut), the lower 6 of 12 blocks are frozen (the
# embeddings train), and its first stage runs at 5e-5 (MiniLM's 1e-4 is high for a 12-layer model). ChemProt's
# sentences keep the authors' 128 tokens (the median is 68; 4.7% are cut): 11,061 rows, 2.3x TREC's, so the
# embeddings freeze with the lower 6 blocks (their outputs are then computed once, not every step), the first stage
# runs one epoch and self-training 600 steps with 4 refreshes.
MPNET = ["model.name=mpnet-base", "method.name=freeze", "method.freeze_layers=6", "training.lr=5e-5"]
SHORTENED = {
    "trec": {"minilm-l6": [], "mpnet-base": [*MPNET, "model.max_length=32", "weak.self_training.steps=900"]},
    "chemprot": {"minilm-l6": [], "mpnet-base": [*MPNET, "method.freeze_embeddings=true", "training.epochs=1",
                                                 "weak.self_training.steps=600",
                                                 "weak.self_training.update_every=150"]},
}
FULL = ["model.max_length=128"]  # with a GPU: the authors' length, every block trained, the recipe's steps
KEEP_IN_FULL = ("model.name=", "training.lr=")
RUN_ONLY = ("training.seed=", "training.progress=", "training.threads=", "output.dir=")  # not settings


def overrides_for(model: str, dataset: str, full: bool) -> list[str]:
    if dataset not in SHORTENED:
        raise SystemExit(f"--datasets: {dataset!r} is not one of {', '.join(SHORTENED)}")
    if model not in SHORTENED[dataset]:
        raise SystemExit(f"--models: {model!r} is not one of {', '.join(SHORTENED[dataset])}")
    shortened = SHORTENED[dataset][model]
    base = [o for o in shortened if o.startswith(KEEP_IN_FULL)] if full else shortened
    return base + (FULL if full else [])


def digest(summary: dict) -> dict:
    """What a study keeps of a run's summary.json: metrics, wall time and, for a weak run, both stages."""
    out = {"test_accuracy": summary["metrics"]["test"]["accuracy"],
           "validation_accuracy": summary["metrics"]["validation"]["accuracy"],
           "seconds": summary["train_seconds"], "steps": summary["steps"]}
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


@contextmanager
def oracle_selection(share: float, seed: int):
    """While open, each pseudo-label refresh gives uniform targets to the training rows whose gold label is known
    and differs from the teacher's prediction, among a fixed random `share` of the rows (drawn once, from `seed`):
    their confidence is 0, so no term of the loss reads them. Records the share removed with the refresh."""
    import torch
    from tuneforge.objectives.cosine import confidence
    from tuneforge.weak import self_training

    original = self_training.RefreshPseudoLabels.refresh
    watched = {}  # the rows the oracle judges, drawn at the first refresh (when the row count is known)

    def refresh(self, loop):
        original(self, loop)
        gold = torch.as_tensor(self.gold)
        if "rows" not in watched:
            watched["rows"] = torch.rand(len(gold), generator=torch.Generator().manual_seed(seed)) < share
        wrong = watched["rows"] & (gold >= 0) & (self.split.targets.argmax(-1) != gold)
        self.split.targets[wrong] = 1.0 / self.split.targets.shape[1]
        self.history[-1]["oracle_removed"] = round(float(wrong.float().mean()), 4)
        self.history[-1]["oracle_confident"] = round(float((confidence(self.split.targets) > self.task.threshold)
                                                           .float().mean()), 4)

    self_training.RefreshPseudoLabels.refresh = refresh
    try:
        yield
    finally:
        self_training.RefreshPseudoLabels.refresh = original


def train(recipe: Path, overrides: list[str], run_dir: Path, reuse: bool, oracle_share: float = 0.0,
          seed: int = 0) -> dict:
    """Runs the recipe into `run_dir` (or, with `reuse`, reads the run finished there) and digests it."""
    import tuneforge

    if not (reuse and (run_dir / "summary.json").exists()):
        with oracle_selection(oracle_share, seed) if oracle_share else nullcontext():
            tuneforge.fine_tune(recipe, [*overrides, f"output.dir={run_dir}"], overwrite=True)
    return digest(json.loads((run_dir / "summary.json").read_text()))


def run(model: str, dataset: str, config: str, seed: int, work: Path, reuse: bool, full: bool) -> dict:
    overrides = [f"training.seed={seed}", "training.progress=false", f"training.threads={os.cpu_count() or 1}",
                 *overrides_for(model, dataset, full), *CONFIGS[config]]
    run_dir = work / f"{model}-{dataset}-{config}-{seed}"
    result = train(RECIPES[dataset], overrides, run_dir, reuse, ORACLE_SHARE.get(config, 0.0), seed)
    if "self_training" in result:
        import yaml

        max_length = yaml.safe_load((run_dir / "recipe.yaml").read_text())["model"]["max_length"]
        result["class_shift"] = class_shift(run_dir, dataset, max_length)
    return {"model": model, "dataset": dataset, "config": config, "seed": seed, "overrides": overrides, **result}


def rows_of(runs: list[dict]) -> list[dict]:
    """The per-seed results. `weak-labels` is the first stage of that seed's `cosine` run (or, without one, of its
    `cosine-no-contrastive` run: the same first stage)."""
    rows, first_stage = [], {}
    for r in sorted(runs, key=lambda r: (r["config"] != "cosine", r["config"] not in REPORTED)):
        key = (r["model"], r["dataset"], r["seed"])
        if "stage_one" in r and key not in first_stage:
            first_stage[key] = r["stage_one"]["test_accuracy"]
            rows.append({"model": key[0], "dataset": key[1], "config": "weak-labels", "seed": key[2],
                         "test_accuracy": first_stage[key]})
        rows.append({"model": key[0], "dataset": key[1], "config": r["config"], "seed": key[2],
                     "test_accuracy": r["test_accuracy"]})
    return rows


def tables(runs: list[dict]) -> list[str]:
    rows = rows_of(runs)
    lines = []
    for model, dataset in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
        picked = [r for r in rows if r["model"] == model and r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in picked})
        settings = next(r["overrides"] for r in runs if r["model"] == model and r["dataset"] == dataset)
        changed = [o for o in settings if not o.startswith(RUN_ONLY) and o not in PER_CONFIG]
        header = "| configuration | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"
        lines += [f"### {dataset}, {model}", "", f"Overrides of {RECIPES[dataset].relative_to(ROOT)}: "
                  f"{', '.join(f'`{o}`' for o in changed) or 'none'}.", "", header,
                  "|---|" + "---|" * (len(seeds) + 1)]
        weak = {r["seed"]: r["test_accuracy"] for r in picked if r["config"] == "weak-labels"}
        for config in (*REPORTED, *ORACLE_SHARE):
            by_seed = {r["seed"]: r["test_accuracy"] for r in picked if r["config"] == config}
            if not by_seed:
                continue
            mean = statistics.mean(by_seed.values())
            gain = ""  # against the first stage of the same seeds
            if config not in ("weak-labels", "gold") and set(by_seed) <= set(weak):
                gain = f" ({100 * (mean - statistics.mean(weak[s] for s in by_seed)):+.1f})"
            lines.append(f"| {config} | " + " | ".join(f"{by_seed[s]:.4f}" if s in by_seed else "-" for s in seeds) +
                         f" | {mean:.4f}{gain} |")
        if any(r["config"] in ORACLE_SHARE for r in picked):
            lines += ["", "oracle-selection rows read the training rows' gold labels: diagnostics, never methods."]
        lines += ["", "Pseudo-labels at each refresh (cosine runs): step, share of confident rows, accuracy of the "
                  "pseudo-labels on the training rows (all / confident), and wall time:", ""]
        for r in runs:
            if r["model"] == model and r["dataset"] == dataset and "self_training" in r:
                st = r["self_training"]
                refreshes = "; ".join(
                    f"{p['step']}: {p['confident']:.1%}, {p.get('pseudo_label_accuracy', float('nan')):.1%}"
                    f"/{p.get('confident_accuracy', float('nan')):.1%}" for p in st["pseudo_labels"])
                lines.append(f"- {r['config']} seed {r['seed']}: stage one {r['stage_one']['seconds']:.0f} s "
                             f"(best step {r['stage_one']['best_step']}), self-training {st['seconds']:.0f} s "
                             f"(best step {st['best_step']}); refreshes {refreshes}")
                for split, models in r.get("class_shift", {}).items():
                    before, after = (models[k]["confusion"] for k in ("stage_one", "kept"))
                    right = ", ".join(f"{c}: {before[c][c]}->{after[c][c]}/{sum(before[c])}" for c in range(len(before))
                                      if sum(before[c]))
                    lines.append(f"  - {split}, rows right per gold class (stage one -> kept / rows): {right}")
        lines.append("")
    return lines


def class_shift(run_dir: Path, dataset: str, max_length: int) -> dict:
    """Where self-training moved the predictions: per gold class of validation and test, how many rows the first
    stage's model (checkpoints/best) and the kept model get right, and the confusion matrices. Reads the data
    folder's own files; test is only reported, never used to choose."""
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = ROOT.parent / "shared" / "data" / "weak-supervision" / dataset
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    models = {"stage_one": AutoModelForSequenceClassification.from_pretrained(run_dir / "model"),
              "kept": AutoModelForSequenceClassification.from_pretrained(run_dir / "model")}
    missing = models["stage_one"].load_state_dict(load_file(run_dir / "checkpoints" / "best" / "model.safetensors"),
                                                  strict=False).missing_keys
    if missing:
        raise SystemExit(f"{run_dir}/checkpoints/best lacks {len(missing)} weights (e.g. {missing[0]})")
    report = {}
    for split in ("dev", "test"):
        rows = json.loads((folder / f"{split}_data.json").read_text())
        gold = np.array([r["label"] for r in rows])
        report[split] = {}
        for name, model in models.items():
            model.eval()
            predicted = []
            with torch.no_grad():
                for i in range(0, len(rows), 64):
                    batch = tokenizer([r["text"] for r in rows[i:i + 64]], padding=True, truncation=True,
                                      max_length=max_length, return_tensors="pt")
                    predicted += model(**batch).logits.argmax(-1).tolist()
            predicted = np.array([int(model.config.id2label[p]) for p in predicted])
            classes = int(max(gold.max(), predicted.max())) + 1
            confusion = np.zeros((classes, classes), dtype=int)
            np.add.at(confusion, (gold, predicted), 1)
            report[split][name] = {"accuracy": float((predicted == gold).mean()),
                                   "confusion": confusion.tolist()}  # rows: gold class, columns: predicted
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm-l6,mpnet-base")
    ap.add_argument("--datasets", default="trec")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--configs", default="cosine,cosine-no-contrastive,gold",
                    help="weak-labels comes with every cosine run")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "cosine-reproduction"))
    ap.add_argument("--work", default="runs/cosine-reproduction")
    ap.add_argument("--full", action="store_true", help="the authors' lengths (for a GPU)")
    ap.add_argument("--reuse", action="store_true", help="read runs finished under --work instead of training again")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    details = out.with_name(out.name + "-details.json")
    runs = json.loads(details.read_text())["runs"] if details.exists() else []
    configs = [c for c in args.configs.split(",") if c != "weak-labels"]
    for unknown in set(configs) - set(CONFIGS):
        raise SystemExit(f"--configs: {unknown!r} is not one of weak-labels, {', '.join(CONFIGS)}")
    for dataset in args.datasets.split(","):
        for model in args.models.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                for config in configs:
                    result = run(model, dataset, config, seed, Path(args.work), args.reuse, args.full)
                    runs = [r for r in runs if (r["model"], r["dataset"], r["config"], r["seed"]) !=
                            (model, dataset, config, seed)] + [result]
                    # Written as it grows: an interrupted study keeps what it finished.
                    details.write_text(json.dumps({"shortened": SHORTENED, "full": args.full, "runs": runs},
                                                  indent=1))
                    out.with_suffix(".json").write_text(json.dumps(
                        [r for r in rows_of(runs) if r["config"] in REPORTED], indent=1))
    lines = tables(runs)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
