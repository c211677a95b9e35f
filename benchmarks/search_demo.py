"""Hyperparameter search measured on the demo data: random vs TPE at equal trials, what median pruning saves,
and how far results spread across seeds.

    python benchmarks/search_demo.py [--trials 10] [--out docs/results/search-demo]

The demo recipe (MiniLM, Rotten Tomatoes) on a budget a search can afford here: 600 training rows, 2 epochs,
validation every 8 steps (so pruners see a curve); the space is examples/spaces/demo.yaml (method, learning
rate, frozen blocks, LoRA rank). Three studies of the same number of trials, one after the other, alone on the
machine: random sampling, TPE, and TPE with the median pruner. Then the best TPE trial's recipe with 5 seeds
(initialization and data order both varied), for the spread a single number hides.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["data.limit_train=600", "training.epochs=2", "training.eval_every=8", "training.threads=2",
             "training.progress=false"]


def study_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value, "seconds": seconds,
                     "params": t.params})
    return rows


def best_so_far(rows: list[dict]) -> list[float]:
    out, best = [], float("-inf")
    for r in rows:
        if r["value"] is not None:
            best = max(best, r["value"])
        out.append(best if best > float("-inf") else None)
    return out


def main() -> None:
    import optuna

    from tuneforge.studies.tune import tune

    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "search-demo"))
    ap.add_argument("--work", default="runs/search-demo")
    ap.add_argument("--studies", default="random,tpe,tpe+median", help="which studies to run (again); the others "
                    "are kept from an earlier report at --out")
    ap.add_argument("--no-seeds", action="store_true", help="keep the seed study of an earlier report")
    args = ap.parse_args()
    work = Path(args.work)
    wanted = args.studies.split(",")
    recipe, space = ROOT / "examples" / "demo.yaml", ROOT / "examples" / "spaces" / "demo.yaml"
    out = Path(args.out)
    earlier = out.with_suffix(".json")
    report = json.loads(earlier.read_text()) if earlier.exists() and (len(wanted) < 3 or args.no_seeds) else \
        {"trials": args.trials, "overrides": OVERRIDES, "studies": {}}
    for name, sampler, pruner in (("random", "random", "none"), ("tpe", "tpe", "none"), ("tpe+median", "tpe", "median")):
        if name not in wanted:
            continue
        shutil.rmtree(work / name, ignore_errors=True)
        started = time.perf_counter()
        result = tune(recipe, space, args.trials, sampler=sampler, pruner=pruner, study_dir=work / name,
                      overrides=OVERRIDES + [f"output.dir={work / name / 'base'}"], seed=0)
        wall = time.perf_counter() - started
        study = optuna.load_study(study_name=result.study_name, storage=result.storage)
        rows = study_rows(study)
        report["studies"][name] = {"wall_seconds": round(wall, 1), "best_value": result.best_value,
                                   "best_params": result.best_params, "rows": rows, "best_so_far": best_so_far(rows),
                                   "best_recipe": str(result.best_recipe)}
        print(f"{name}: best {result.best_value:.4f} in {wall:.0f} s")
    report["studies"] = {k: report["studies"][k] for k in ("random", "tpe", "tpe+median") if k in report["studies"]}
    if not args.no_seeds:
        run_seeds(report, work, args.seeds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    write_markdown(report, out.with_suffix(".md"))
    plot(report, out.with_suffix(".png"))


def run_seeds(report: dict, work: Path, n: int) -> None:
    from tuneforge.studies.seeds import seed_study

    best_recipe = report["studies"]["tpe"]["best_recipe"]
    shutil.rmtree(work / "seeds", ignore_errors=True)
    started = time.perf_counter()
    seeds = seed_study(best_recipe, n, vary="both", overrides=[f"output.dir={work / 'seeds'}"])
    report["seeds"] = {"wall_seconds": round(time.perf_counter() - started, 1), "split": seeds.split,
                       "metric": seeds.metric, "mean": seeds.mean, "std": seeds.std, "low": seeds.low, "high": seeds.high,
                       "runs": [{"init_seed": r.init_seed, "data_seed": r.data_seed, "validation": r.validation,
                                 "test": r.test} for r in seeds.runs]}


def write_markdown(report: dict, path: Path) -> None:
    lines = ["| study | best validation accuracy | trials complete / pruned / failed | wall time (s) | best trial's params |",
             "|---|---:|---:|---:|---|"]
    for name, s in report["studies"].items():
        states = [r["state"] for r in s["rows"]]
        lines.append(f"| {name} | {s['best_value']:.4f} | {states.count('complete')} / {states.count('pruned')} / "
                     f"{states.count('fail')} | {s['wall_seconds']:.0f} | {s['best_params']} |")
    sd = report["seeds"]
    lines += ["", f"Best TPE recipe, {len(sd['runs'])} seeds: {sd['split']} {sd['metric']} mean {sd['mean']:.4f}, "
              f"std {sd['std']:.4f}, 95% interval [{sd['low']:.4f}, {sd['high']:.4f}]; per seed: "
              + ", ".join(f"{r[sd['split']]:.4f}" for r in sd["runs"])]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in report["studies"].items():
        ys = s["best_so_far"]
        a.step(range(1, len(ys) + 1), ys, where="post", label=name)
        elapsed, t = [], 0.0
        for r in s["rows"]:
            t += r["seconds"] or 0.0
            elapsed.append(t / 60)
        b.step(elapsed, ys, where="post", label=name)
    a.set_xlabel("trial")
    b.set_xlabel("training minutes (sum over trials)")
    for ax in (a, b):
        ax.set_ylabel("best validation accuracy so far")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"search on the demo data ({report['trials']} trials each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
