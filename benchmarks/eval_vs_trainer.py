"""Evaluation and prediction over the 2,000 demo test snippets: tuneforge vs the Hugging Face Trainer.

    python benchmarks/eval_vs_trainer.py [--repeats 3] [--out FILE]

One MiniLM classifier (a short tuneforge run on the demo data, made once) is evaluated and used to predict
over the 2,000 Rotten Tomatoes test snippets, max_length 64, by `tuneforge.evaluate` / `tuneforge.predict`
(defaults: batches of 64 sorted by length, precision auto) and by `Trainer.evaluate` / `Trainer.predict` (its
defaults: batches of 8 in file order, fp32) on the same saved model. Each timing is end to end in its own
process: loading the model and tokenizer, tokenizing, computing, and the metrics (evaluate) or the records
(predict). Interleaved; medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child import quiet_console, report_result, run_child

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_run(folder: Path) -> Path:
    import tuneforge

    result = tuneforge.fine_tune({"model": {"name": "minilm-l6", "max_length": 64}, "data": {"dataset": "rotten-tomatoes"},
                                  "training": {"max_steps": 20, "progress": False, "lr": 1e-4},
                                  "output": {"dir": str(folder / "run")}}, console=quiet_console())
    return result.run_dir


def tuneforge_side(run_dir: str, job: str) -> dict:
    import tuneforge
    from tuneforge.assets import rotten_tomatoes

    test = rotten_tomatoes()["test"]
    started = time.perf_counter()
    if job == "evaluate":
        out = tuneforge.evaluate(run_dir, test)
        value = out["accuracy"]
    else:
        value = len(tuneforge.predict(run_dir, data=test))
    return {"seconds": time.perf_counter() - started, "value": value}


def trainer_side(run_dir: str, job: str) -> dict:
    import numpy as np
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from tuneforge.assets import rotten_tomatoes

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    model_dir = Path(run_dir) / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    df = pd.read_csv(rotten_tomatoes()["test"])
    label2id = {str(k): v for k, v in model.config.label2id.items()}
    enc = tok(df["text"].tolist(), truncation=True, max_length=64)
    rows = [{"input_ids": i, "token_type_ids": t, "attention_mask": a, "labels": label2id[str(y)]}
            for i, t, a, y in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], df["label"])]

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, args=TrainingArguments(output_dir=out, report_to="none", use_cpu=True,
                                                              disable_tqdm=True),
                          processing_class=tok, compute_metrics=accuracy)
        if job == "evaluate":
            value = trainer.evaluate(rows)["eval_accuracy"]
        else:
            logits = trainer.predict(rows).predictions
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            names = model.config.id2label
            value = len([{"label": names[int(p.argmax())], "score": float(p.max())} for p in probs])
    return {"seconds": time.perf_counter() - started, "value": value}


SIDES = {"tuneforge": tuneforge_side, "trainer": trainer_side}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--job", choices=["evaluate", "predict"], help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        report_result(SIDES[args.child](args.run, args.job))
        return
    with tempfile.TemporaryDirectory() as folder:
        run_dir = make_run(Path(folder))
        results = {job: {side: [] for side in SIDES} for job in ("evaluate", "predict")}
        for r in range(args.repeats):
            for job in results:
                for side in SIDES:
                    cmd = [sys.executable, __file__, "--child", side, "--job", job, "--run", str(run_dir)]
                    res = run_child(cmd, f"{side} {job}")
                    results[job][side].append(res)
                    print(f"run {r + 1} {job:8s} {side:9s}: {res['seconds']:.2f} s ({res['value']})", flush=True)
    print(f"\n2,000 test snippets, end to end, median of {args.repeats}:")
    print("| job | tuneforge (s) | Trainer (s) | speed-up |\n|---|---|---|---|")
    table = {}
    for job, by in results.items():
        med = {side: statistics.median(x["seconds"] for x in v) for side, v in by.items()}
        table[job] = {**med, "speedup": med["trainer"] / med["tuneforge"]}
        print(f"| {job} | {med['tuneforge']:.2f} | {med['trainer']:.2f} | **{table[job]['speedup']:.1f}x** |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": results, "median": table}, f, indent=1)


if __name__ == "__main__":
    main()
