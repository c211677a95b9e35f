"""EfficientNet-Lite0 on the packaged Fashion-MNIST subset: accuracy against the number of frozen blocks,
head only, full fine-tuning, and the same network from random initialization (what pre-training buys).

    python benchmarks/vision_frozen_blocks.py [--study runs/vision-compare] [--seeds 1]

The freezing methods run through `tuneforge compare` (one process per run, finished runs reused); the random
initialization run is full fine-tuning with `model.pretrained=false`. Writes docs/results/vision-frozen-blocks.
{md,json,png}. Needs `make fashion-mnist`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import tuneforge

RECIPE = "examples/fashion-mnist.yaml"
FROZEN = [0, 2, 4, 6, 8, 10, 12, 14, 16]  # blocks frozen, with the stem; 0 is full fine-tuning, 16 head only


def method_label(k: int) -> str:
    return "full" if k == 0 else "head" if k == 16 else f"freeze:{k}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default="runs/vision-compare")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default="docs/results/vision-frozen-blocks")
    args = ap.parse_args()
    overrides = ["training.progress=false"]
    study = tuneforge.compare(RECIPE, ",".join(method_label(k) for k in FROZEN), seeds=args.seeds,
                              overrides=overrides, study_dir=args.study)
    random = random_init_runs(Path(args.study) / "random-init", args.seeds, overrides)
    rows = {r.label: r for r in study.rows}
    table = []
    for k in FROZEN:
        r = rows[method_label(k)]
        table.append({"frozen_blocks": k, "method": r.label, "test_accuracy": r.mean, "std": r.std,
                      "trainable": r.trainable_parameters, "total": r.total_parameters,
                      "trainable_percent": r.trainable_percent, "train_seconds": r.train_seconds})
    lines = ["| frozen (stem +) blocks | method | test accuracy | trainable parameters | % trainable | train time (s) |",
             "|---|---|---|---|---|---|"]
    for t in table:
        spread = f" ± {t['std']:.4f}" if args.seeds > 1 else ""
        lines.append(f"| {t['frozen_blocks']} | `{t['method']}` | {t['test_accuracy']:.4f}{spread} | {t['trainable']:,} | "
                     f"{t['trainable_percent']:.1f}% | {t['train_seconds']:.0f} |")
    spread = f" ± {random['std']:.4f}" if args.seeds > 1 else ""
    lines.append(f"| 0, random init | `full`, `model.pretrained=false` | {random['accuracy']:.4f}{spread} | "
                 f"{random['trainable']:,} | 100.0% | {random['train_seconds']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"recipe": RECIPE, "seeds": args.seeds, "rows": table,
                                                    "random_init": random}, indent=1))
    plot(table, random, out.with_suffix(".png"))
    print("\n".join(lines))


def random_init_runs(root: Path, seeds: int, overrides: list[str]) -> dict:
    """Full training of the same network from random initialization, one run per seed (finished runs reused)."""
    import statistics

    base = tuneforge.load_recipe(RECIPE)
    accuracies, seconds, trainable = [], [], 0
    for i in range(seeds):
        run_dir = root / f"seed-{base.training.seed + i}"
        if not (run_dir / "summary.json").exists():
            tuneforge.fine_tune(RECIPE, [*overrides, "model.pretrained=false", "method.name=full", "method.freeze_layers=0",
                                         "method.freeze_embeddings=false", f"training.seed={base.training.seed + i}",
                                         f"output.dir={run_dir}"], overwrite=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        accuracies.append(summary["metrics"]["test"]["accuracy"])
        seconds.append(summary["train_seconds"])
        trainable = summary["trainable_parameters"]
    return {"accuracy": statistics.mean(accuracies), "std": statistics.stdev(accuracies) if seeds > 1 else 0.0,
            "values": accuracies, "train_seconds": statistics.median(seconds), "trainable": trainable}


def plot(table: list[dict], random: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ks = [t["frozen_blocks"] for t in table]
    ax.errorbar(ks, [t["test_accuracy"] for t in table], yerr=[t["std"] for t in table], marker="o", capsize=3,
                label="pre-trained (ImageNet)")
    ax.axhline(random["accuracy"], color="grey", linestyle="--", label="random init, full training")
    for t in table:
        ax.annotate(f"{t['trainable_percent']:.0f}%", (t["frozen_blocks"], t["test_accuracy"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("blocks frozen from the input (with the stem); 16 = head only")
    ax.set_ylabel("test accuracy")
    ax.set_title("EfficientNet-Lite0 on Fashion-MNIST (3,000 train images, 3 epochs)\nlabels: % of weights trained",
                 fontsize=9)
    ax.set_xticks(ks)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
