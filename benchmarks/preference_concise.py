"""Preference tuning measured: how often SmolLM2-135M-Instruct answers held-out questions concisely (at most 12
words, ended by itself), before and after DPO with LoRA on examples/data/concise-answers; and how well the tuned
policy's implicit reward, and a separately trained reward model, rank held-out pairs.

    python benchmarks/preference_concise.py [--recipe examples/smollm2-concise.yaml] [--out docs/results/preference-concise]
    python benchmarks/preference_concise.py --recipe examples/smollm2-grpo.yaml --out docs/results/grpo-concise

With a GRPO recipe, steps 1 and 3 only (there are no pairs to rank).

One process:
1. greedy replies of the base model to the 66 held-out questions (never seen in training; some in question forms
   never seen at all) and the rule checked on each;
2. held-out pairs built from those replies as the training pairs were (bare answer preferred to a reply that
   breaks the rule);
3. `tuneforge.fine_tune(recipe)` (DPO), then the tuned policy's replies to the same questions, and its reward
   accuracy on the held-out pairs (`tuneforge.evaluate`);
4. a reward model (MiniLM encoder, full fine-tuning, Bradley-Terry) on the same training pairs, and its pairwise
   accuracy on the held-out pairs (`tuneforge.score`).
Needs `make smollm2` (and the packaged MiniLM).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import tuneforge
from tuneforge.data.causal import stop_ids
from tuneforge.generation import GenerationOptions, decode, generate_ids

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from concise_answers import MAX_NEW_TOKENS, MAX_WORDS, answer_sentence, is_concise  # noqa: E402


def replies(model, tokenizer, rows: list[dict]) -> tuple[list[dict], float]:
    options = GenerationOptions(max_new_tokens=MAX_NEW_TOKENS)
    stops = set(stop_ids(tokenizer, model))
    started = time.perf_counter()
    out = []
    for row in rows:
        new = generate_ids(model, tokenizer, row["prompt"], options)
        text = decode(tokenizer, new).strip()
        stopped = bool(new) and new[-1] in stops
        out.append({"prompt": row["prompt"], "answer": row["answer"], "reply": text, "words": len(text.split()),
                    "stopped": stopped, "concise": is_concise(text, stopped),
                    "mentions": row["answer"].lower() in text.lower()})
    return out, time.perf_counter() - started


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    words = sorted(r["words"] for r in rows)
    return {"concise": sum(r["concise"] for r in rows) / n, "stopped": sum(r["stopped"] for r in rows) / n,
            "mentions_answer": sum(r["mentions"] for r in rows) / n, "median_words": words[n // 2]}


def held_out_pairs(before: list[dict], path: Path) -> int:
    """Pairs from the held-out questions whose base reply breaks the rule, written as the training pairs are."""
    rows = [{"prompt": r["prompt"], "chosen": answer_sentence(r["prompt"], r["answer"]), "rejected": r["reply"]}
            for r in before if not r["concise"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def reward_model(recipe_path: str, pairs: Path, out_dir: Path) -> dict:
    recipe = tuneforge.load_recipe(recipe_path)
    rm = {"model": {"name": "minilm-l6", "max_length": 128}, "task": {"type": "reward-model"},
          "data": {"train": recipe.data.train, "validation": recipe.data.validation},
          "method": {"name": "full"}, "training": {"epochs": 4, "batch_size": 8, "lr": 5e-5, "threads": 2},
          "output": {"dir": str(out_dir)}}
    started = time.perf_counter()
    result = tuneforge.fine_tune(rm, overwrite=True)
    _, scored = tuneforge.score(result.run_dir, pairs)
    return {"validation": result.metrics["validation"], "held_out": scored,
            "train_seconds": result.train_seconds, "wall_seconds": round(time.perf_counter() - started, 1)}


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [f"| | concise (<= {MAX_WORDS} words, ended) | ended by itself | median words | right answer in the reply |",
             "|---|---:|---:|---:|---:|"]
    for name in ("before", "after"):
        s = report[name]
        lines.append(f"| {name} {report['recipe']['task']['type'].upper().replace('PREFERENCE', 'DPO')} | {s['concise']:.1%} | {s['stopped']:.1%} | {s['median_words']} | "
                     f"{s['mentions_answer']:.1%} |")
    if report.get("policy_held_out"):
        lines += ["", "| held-out pairs | pairwise accuracy |", "|---|---:|",
                  f"| DPO policy's implicit reward ({report['held_out_pairs']} pairs) | "
                  f"{report['policy_held_out']['reward_accuracy']:.1%} |"]
    if report.get("reward_model"):
        lines.append(f"| MiniLM reward model | {report['reward_model']['held_out']['accuracy']:.1%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "examples" / "smollm2-concise.yaml"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "preference-concise"))
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--no-reward-model", action="store_true")
    args = ap.parse_args()

    recipe = tuneforge.load_recipe(args.recipe, args.overrides)
    test_rows = [json.loads(x) for x in (ROOT / "examples" / "data" / "concise-answers" / "test.jsonl").read_text().splitlines()]
    from tuneforge.models.loading import load_for_causal_lm

    base = load_for_causal_lm(recipe.model.name, 0)
    before, before_s = replies(base.model.eval(), base.tokenizer, test_rows)
    del base
    run_dir = Path(recipe.output.dir)
    pairs = run_dir.parent / f"{run_dir.name}-held-out-pairs.jsonl"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    n_pairs = held_out_pairs(before, pairs)

    started = time.perf_counter()
    result = tuneforge.fine_tune(recipe, overwrite=True)
    wall = time.perf_counter() - started
    grpo = recipe.task.type == "grpo"
    policy_held_out = None if grpo else tuneforge.evaluate(result.run_dir, pairs)
    generator = tuneforge.Generator(result.run_dir)
    after, after_s = replies(generator.run.model, generator.run.tokenizer, test_rows)

    report = {"recipe": recipe.model_dump(mode="json"), "test_prompts": len(test_rows),
              "before": summary(before), "after": summary(after), "held_out_pairs": n_pairs,
              "policy_held_out": policy_held_out, "validation": result.metrics.get("validation"),
              "train_seconds": result.train_seconds, "fine_tune_wall_seconds": round(wall, 1), "steps": result.steps,
              "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
              "adapter_bytes": result.stored_bytes,
              "generation_seconds": {"before": round(before_s, 1), "after": round(after_s, 1)},
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "replies": {"before": before, "after": after}}
    if not args.no_reward_model and not grpo:
        report["reward_model"] = reward_model(args.recipe, pairs, run_dir.parent / f"{run_dir.name}-reward-model")
    write(report, Path(args.out))


if __name__ == "__main__":
    main()
