"""Head-only and lower-frozen training, tuneforge vs the Hugging Face Trainer, 5 epochs of the demo data.

    python benchmarks/frozen_vs_trainer.py [--methods head freeze:4] [--epochs 5] [--repeats 1] [--out FILE]

The packaged all-MiniLM-L6-v2 on the demo's Rotten Tomatoes split (3,000 train / 500 validation / 2,000 test),
batch 32, max_length 64, lr 1e-3 (head) or 1e-4 (freeze:4: embeddings and blocks 0-3 frozen, blocks 4-5, pooler
and classifier train), linear schedule with 10% warm-up, weight decay 0.01, gradient clipping at 1.0, validation
after every epoch on both sides. tuneforge runs with its defaults (frozen-prefix caching, length-grouped
batches, precision auto); the Trainer with its defaults (random batches, fp32; frozen modules stay in train mode,
as the Trainer leaves them), the same parameters frozen. Wall time is the whole training call (tuneforge: the
cache's one pass included). Test accuracy is each trained model's own, over the 2,000 test snippets. Runs are
interleaved, each in its own process.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from child import quiet_console, report_result, run_child

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LR = {"head": 1e-3, "freeze:4": 1e-4}


def _method(name: str) -> dict:
    if name == "head":
        return {"name": "head"}
    return {"name": "freeze", "freeze_layers": int(name.split(":")[1]), "freeze_embeddings": True}


def run_tuneforge(args) -> dict:
    import tuneforge

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = tuneforge.fine_tune({
            "model": {"name": "minilm-l6", "max_length": 64},
            "data": {"dataset": "rotten-tomatoes"},
            "method": _method(args.method),
            "training": {"epochs": args.epochs, "batch_size": 32, "lr": LR[args.method], "warmup_ratio": 0.1,
                         "seed": args.seed, "progress": False},
            "output": {"dir": out + "/run"},
        }, console=quiet_console())
        seconds = time.perf_counter() - started
        summary = json.loads((result.run_dir / "summary.json").read_text())
    return {"train_seconds": result.train_seconds, "total_seconds": seconds,
            "test_accuracy": result.metrics["test"]["accuracy"], "precision": summary["runtime"]["precision"],
            "cache": summary.get("frozen_prefix_cache")}


def run_trainer(args) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from transformers.utils import logging as hf_logging

    from tuneforge.assets import resolve_model_path, rotten_tomatoes

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    path = resolve_model_path("minilm-l6")
    files = rotten_tomatoes()
    tok = AutoTokenizer.from_pretrained(path)
    frames = {k: pd.read_csv(files[k]) for k in ("train", "validation", "test")}
    labels = sorted(frames["train"]["label"].astype(str).unique())

    def rows(df):
        enc = tok(df["text"].tolist(), truncation=True, max_length=64)
        return [{"input_ids": i, "token_type_ids": t, "attention_mask": a, "labels": labels.index(str(y))}
                for i, t, a, y in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], df["label"])]
    data = {k: rows(v) for k, v in frames.items()}
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    frozen_blocks = 6 if args.method == "head" else int(args.method.split(":")[1])
    for name, p in model.named_parameters():
        block = int(name.split(".")[3]) if name.startswith("bert.encoder.layer.") else None
        if name.startswith("bert.embeddings.") or (block is not None and block < frozen_blocks):
            p.requires_grad_(False)

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=32, num_train_epochs=args.epochs,
                                  learning_rate=LR[args.method], warmup_steps=0.1, weight_decay=0.01,
                                  eval_strategy="epoch", save_strategy="no", report_to="none", use_cpu=True,
                                  disable_tqdm=True, seed=args.seed, dataloader_num_workers=0, logging_steps=1000)
        trainer = Trainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["validation"],
                          data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
        test = trainer.predict(data["test"]).metrics["test_accuracy"]
    return {"train_seconds": train_seconds, "total_seconds": time.perf_counter() - started, "test_accuracy": test,
            "precision": "fp32"}


IMPLS = {"tuneforge": run_tuneforge, "trainer": run_trainer}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["head", "freeze:4"], choices=sorted(LR))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=sorted(IMPLS), help=argparse.SUPPRESS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        report_result(IMPLS[args.child](args))
        return
    results: dict = {m: {k: [] for k in IMPLS} for m in args.methods}
    for r in range(args.repeats):
        for method in args.methods:
            for impl in IMPLS:  # interleaved
                cmd = [sys.executable, __file__, "--child", impl, "--method", method, "--epochs", str(args.epochs),
                       "--seed", str(args.seed + r)]
                res = run_child(cmd, f"{impl} {method}")
                results[method][impl].append(res)
                print(f"run {r + 1} {method:9s} {impl:10s}: training {res['train_seconds']:.1f} s, test accuracy "
                      f"{res['test_accuracy']:.4f} ({res['precision']})", flush=True)
    print(f"\n{args.epochs} epochs, median of {args.repeats}:")
    print("| method | tuneforge training (s) | Trainer training (s) | speed-up | tuneforge test acc | Trainer test acc |")
    print("|---|---|---|---|---|---|")
    table = {}
    for method, by in results.items():
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("train_seconds", "test_accuracy")}
               for k, v in by.items()}
        ratio = med["trainer"]["train_seconds"] / med["tuneforge"]["train_seconds"]
        table[method] = {**med, "speedup": ratio}
        print(f"| {method} | {med['tuneforge']['train_seconds']:.1f} | {med['trainer']['train_seconds']:.1f} | "
              f"**{ratio:.1f}x** | {med['tuneforge']['test_accuracy']:.4f} | {med['trainer']['test_accuracy']:.4f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results, "median": table}, f, indent=1)


if __name__ == "__main__":
    main()
