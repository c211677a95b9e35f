"""Instruction tuning measured: how often SmolLM2-135M-Instruct replies with a JSON object {"answer", "confidence"}
to held-out questions, before and after LoRA fine-tuning on examples/data/json-answers.

    python benchmarks/json_compliance.py [--recipe examples/smollm2-json.yaml] [--out docs/results/instruction-json]

One process: greedy replies of the base model to every test prompt, `tuneforge.fine_tune(recipe)`, the same
replies from the fine-tuned run; compliance (the reply parses as a JSON object with exactly those two keys),
answer accuracy, train time and the process's peak memory. Needs `make smollm2`.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import tuneforge
from tuneforge.data.causal import stop_ids
from tuneforge.generation import GenerationOptions, decode, generate_ids

KEYS = {"answer", "confidence"}


def check(reply: str, answer: str) -> tuple[bool, bool]:
    """(complies, correct): a JSON object with exactly the keys answer and confidence; its answer right."""
    try:
        value = json.loads(reply.strip())
    except json.JSONDecodeError:
        return False, False
    complies = isinstance(value, dict) and set(value) == KEYS
    return complies, complies and str(value["answer"]).strip().lower() == answer.strip().lower()


def replies(model, tokenizer, rows: list[dict], max_new_tokens: int) -> tuple[list[dict], float]:
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    stops = set(stop_ids(tokenizer, model))
    started = time.perf_counter()
    out = []
    for row in rows:
        new = generate_ids(model, tokenizer, row["prompt"], options)
        text = decode(tokenizer, new)
        complies, correct = check(text, row["answer"])
        out.append({"prompt": row["prompt"], "answer": row["answer"], "reply": text, "complies": complies,
                    "correct": correct, "mentions": row["answer"].lower() in text.lower(),
                    "stopped": bool(new) and new[-1] in stops})
    return out, time.perf_counter() - started


def summary(rows: list[dict]) -> dict:
    """compliance: valid JSON with exactly the two keys; accuracy: and its answer right; mentions: the right
    answer appears anywhere in the reply (what the model knows, whatever the format)."""
    n = len(rows)
    return {"compliance": sum(r["complies"] for r in rows) / n, "accuracy": sum(r["correct"] for r in rows) / n,
            "mentions_answer": sum(r["mentions"] for r in rows) / n, "stopped_at_eos": sum(r["stopped"] for r in rows) / n}


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = ["| | JSON compliance | JSON answer right | right answer anywhere in the reply | ended at end-of-turn |",
             "|---|---:|---:|---:|---:|"]
    for name in ("before", "after"):
        s = report[name]
        lines.append(f"| {name} fine-tuning | {s['compliance']:.1%} | {s['accuracy']:.1%} | {s['mentions_answer']:.1%} | "
                     f"{s['stopped_at_eos']:.1%} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="examples/smollm2-json.yaml")
    ap.add_argument("--out", default="docs/results/instruction-json")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--rescore", help="a report JSON this script wrote: score its saved replies again, no model run")
    args = ap.parse_args()
    if args.rescore:
        report = json.loads(Path(args.rescore).read_text())
        for name in ("before", "after"):
            for row in report["replies"][name]:
                row["complies"], row["correct"] = check(row["reply"], row["answer"])
                row["mentions"] = row["answer"].lower() in row["reply"].lower()
            report[name] = summary(report["replies"][name])
        write(report, Path(args.out))
        return
    recipe = tuneforge.load_recipe(args.recipe, args.overrides)
    test_rows = [json.loads(line) for line in Path(recipe.data.test).read_text().splitlines()]

    from tuneforge.models.loading import load_for_causal_lm
    base = load_for_causal_lm(recipe.model.name, 0)
    before, before_seconds = replies(base.model, base.tokenizer, test_rows, args.max_new_tokens)
    del base

    started = time.perf_counter()
    result = tuneforge.fine_tune(recipe, ["training.progress=false"], overwrite=True)
    wall = time.perf_counter() - started
    generator = tuneforge.Generator(result.run_dir)
    after, after_seconds = replies(generator.run.model, generator.run.tokenizer, test_rows, args.max_new_tokens)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    report = {"recipe": args.recipe, "test_prompts": len(test_rows), "before": summary(before), "after": summary(after),
              "train_seconds": result.train_seconds, "fine_tune_wall_seconds": round(wall, 1),
              "steps": result.steps, "trainable_parameters": result.trainable_parameters,
              "total_parameters": result.total_parameters, "adapter_bytes": result.stored_bytes,
              "validation": result.metrics.get("validation"), "test": result.metrics.get("test"),
              "generation_seconds": {"before": round(before_seconds, 1), "after": round(after_seconds, 1)},
              "peak_rss_mb": round(peak_mb), "examples": [{"prompt": b["prompt"], "before": b["reply"], "after": a["reply"]}
                                                          for b, a in zip(before[:6], after[:6])],
              "replies": {"before": before, "after": after}}
    write(report, Path(args.out))
    print(json.dumps({k: v for k, v in report.items() if k not in ("replies", "examples")}, indent=1))


if __name__ == "__main__":
    main()
