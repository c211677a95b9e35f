"""On one CUDA GPU: the GPU-marked tests, then tuneforge against the Hugging Face Trainer in bf16, in one
interleaved run, with samples/s and peak GPU memory for both and their ratios.

    python benchmarks/gpu_vs_trainer.py [--steps 60] [--repeats 3] [--out gpu.json] [--skip-tests]

Workloads (same model, data, batch, sequence length, learning rate and steps on both sides; bf16 autocast; each
library's own AdamW; dynamic padding):
- `minilm-full`: all-MiniLM-L6-v2 fully fine-tuned as a 2-class classifier on the demo's Rotten Tomatoes
  snippets, batch 32, max_length 128; against the Trainer.
- `smollm2-lora`: SmolLM2-135M-Instruct with LoRA (r 8, alpha 16, every linear of every block) instruction-tuned on
  examples/data/json-answers (loss on the replies), batch 8, max_length 128; against the Trainer + PEFT.

Every run is a process of its own, so its peak memory (torch.cuda.max_memory_allocated) is its own; runs alternate
(tuneforge, Trainer, tuneforge, ...) so a slower moment of the machine falls on both; samples/s is timed over the
steps after the first `--warmup`. Medians are printed. About 5 minutes on an H200.

Without the packaged weights (a GPU machine that cannot install them), `--assets DIR` from `--prepare DIR` holds
each model's config and tokenizer and the training rows, and both sides build the same architecture from its config
(random weights: speed and memory do not depend on the values). `--prepare DIR` is run where the packages are.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from child import report_result, run_child

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORKLOADS = {
    "minilm-full": {"model": "minilm-l6", "task": "classification", "method": "full", "batch": 32, "lr": 5e-5},
    "smollm2-lora": {"model": "smollm2-135m", "task": "causal-lm", "method": "lora", "batch": 8, "lr": 1e-3},
}
MAX_LENGTH = 128


class StepTimer:
    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def tick(self):
        import torch
        torch.cuda.synchronize()  # the step's kernels are done: time what the GPU did, not what was queued
        self.times.append(time.perf_counter())

    def samples_per_s(self, batch: int) -> float:
        t = self.times[self.warmup:]
        return (len(t) - 1) * batch / (t[-1] - t[0])


# ---------------------------------------------------------------- inputs

def model_folder(workload: str, assets: Path | None) -> Path:
    """The folder both sides load: the packaged model, or a randomly initialized one of the prepared config."""
    w = WORKLOADS[workload]
    if assets is not None:
        return _random_copy(assets / w["model"], w["task"])
    from tuneforge.assets import resolve_model_path
    return Path(resolve_model_path(w["model"]))


def train_rows(workload: str, assets: Path | None) -> Path:
    if workload == "smollm2-lora":
        return ROOT / "examples" / "data" / "json-answers" / "train.jsonl"
    if assets is not None:
        return assets / "rotten-tomatoes-train.csv"
    from tuneforge.assets import rotten_tomatoes
    return Path(rotten_tomatoes()["train"])


def prepare(folder: Path) -> None:
    """Configs, tokenizers and training rows for a GPU machine without the asset packages (no weights)."""
    from transformers import AutoConfig, AutoTokenizer

    from tuneforge.assets import resolve_model_path, rotten_tomatoes

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("minilm-l6", "smollm2-135m"):
        path = resolve_model_path(name)
        out = folder / name
        out.mkdir(exist_ok=True)
        AutoConfig.from_pretrained(path).save_pretrained(out)
        AutoTokenizer.from_pretrained(path).save_pretrained(out)
    shutil.copy(rotten_tomatoes()["train"], folder / "rotten-tomatoes-train.csv")
    print(f"prepared {folder}: carry it and run with --assets {folder}")


# ---------------------------------------------------------------- the two sides

def run_tuneforge(workload: str, args) -> dict:
    import torch

    import tuneforge

    w = WORKLOADS[workload]
    folder = model_folder(workload, args.assets)
    timer = StepTimer(args.warmup)

    class Tick:
        def on_train_start(self, loop):
            timer.tick()

        def on_step_end(self, loop):
            timer.tick()

    method = {"name": w["method"]}
    if w["method"] == "lora":
        method.update(r=8, alpha=16, dropout=0.0)
    recipe = {"model": {"name": str(folder), "max_length": MAX_LENGTH}, "task": {"type": w["task"]},
              "data": {"train": str(train_rows(workload, args.assets)), "validation_fraction": 0.0},
              "method": method,
              "training": {"max_steps": args.steps, "batch_size": w["batch"], "lr": w["lr"], "progress": False,
                           "seed": 0, "warmup_ratio": 0.0, "log_every": 1000, "precision": "bf16", "device": "cuda"}}
    with tempfile.TemporaryDirectory() as out:
        recipe["output"] = {"dir": out + "/run"}
        torch.cuda.reset_peak_memory_stats()
        tuneforge.fine_tune(recipe, console=_quiet(), callbacks=[Tick()])
    return {"samples_per_s": timer.samples_per_s(w["batch"]),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            "reserved_gpu_mb": torch.cuda.max_memory_reserved() / 2**20}


def run_trainer(workload: str, args) -> dict:
    import torch
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    w = WORKLOADS[workload]
    folder = model_folder(workload, args.assets)
    tok = AutoTokenizer.from_pretrained(folder)
    if w["task"] == "classification":
        import pandas as pd
        df = pd.read_csv(train_rows(workload, args.assets))
        labels = sorted(df["label"].unique())
        enc = tok(df["text"].tolist(), truncation=True, max_length=MAX_LENGTH)
        rows = [{"input_ids": i, "attention_mask": a, "labels": labels.index(y)}
                for i, a, y in zip(enc["input_ids"], enc["attention_mask"], df["label"])]
        auto, collator = AutoModelForSequenceClassification, DataCollatorWithPadding(tok)
        kwargs = {"num_labels": len(labels)}
    else:
        rows = _chat_rows(tok, train_rows(workload, args.assets))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        auto, collator, kwargs = AutoModelForCausalLM, DataCollatorForSeq2Seq(tok, label_pad_token_id=-100), {}
    model = auto.from_pretrained(folder, **kwargs)
    if w["method"] == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    timer = StepTimer(args.warmup)

    class Tick(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            timer.tick()

        def on_step_end(self, a, state, control, **kw):
            timer.tick()

    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=w["batch"], max_steps=args.steps,
                                  learning_rate=w["lr"], save_strategy="no", report_to="none", bf16=True,
                                  logging_steps=1000, disable_tqdm=True, seed=0, warmup_steps=0)
        Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[Tick()]).train()
    return {"samples_per_s": timer.samples_per_s(w["batch"]),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            "reserved_gpu_mb": torch.cuda.max_memory_reserved() / 2**20}


def _chat_rows(tok, path: Path) -> list[dict]:
    """Prompt/completion rows rendered with the chat template, loss on the reply only: what tuneforge trains on."""
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        prompt = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                         add_generation_prompt=True)
        full = tok.apply_chat_template([{"role": "user", "content": row["prompt"]},
                                        {"role": "assistant", "content": row["completion"]}], tokenize=False)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"][:MAX_LENGTH]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": [-100] * min(len(p), len(ids)) + ids[len(p):]})
    return out


def _random_copy(folder: Path, task: str) -> Path:
    """A randomly initialized model of `folder`'s config, saved beside it once, so both sides load the same weights
    (random: speed and memory do not depend on their values)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    out = folder.with_name(folder.name + "-random")
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(folder)
        auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
        auto.from_config(config).save_pretrained(out)
        AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


def _quiet():
    from rich.console import Console
    return Console(file=open(os.devnull, "w"))


SIDES = {"tuneforge": run_tuneforge, "trainer": run_trainer}


# ---------------------------------------------------------------- driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="optimizer steps not timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", nargs="*", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--assets", type=Path, help="configs, tokenizers and rows from --prepare (no weights needed)")
    ap.add_argument("--prepare", type=Path, help="write those into this folder and stop")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the GPU-marked tests first")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "SIDE"))
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return
    if args.child:
        report_result(SIDES[args.child[1]](args.child[0], args))
        return
    import torch
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: this benchmark measures GPU training (the CPU one is bench_vs_trainer.py)")
    device = torch.cuda.get_device_name(0)
    print(f"{device}; torch {torch.__version__}", flush=True)
    report = {"device": device, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_tests:
        started = time.perf_counter()
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")],
                               capture_output=True, text=True, cwd=ROOT)
        summary = (tests.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"GPU-marked tests: {summary} ({time.perf_counter() - started:.0f} s)", flush=True)
        if tests.returncode:
            print(tests.stdout[-4000:], tests.stderr[-2000:])
        report["tests"] = {"returncode": tests.returncode, "summary": summary}
    runs = {w: {s: [] for s in SIDES} for w in args.workloads}
    for r in range(args.repeats):
        for w in args.workloads:
            for side in SIDES:  # interleaved
                cmd = [sys.executable, __file__, "--child", w, side, "--steps", str(args.steps),
                       "--warmup", str(args.warmup)] + (["--assets", str(args.assets)] if args.assets else [])
                res = run_child(cmd, f"{w} {side}", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                runs[w][side].append(res)
                print(f"run {r + 1} {w:13s} {side:9s}: {res['samples_per_s']:8.1f} samples/s, peak "
                      f"{res['peak_gpu_mb']:7.0f} MB allocated", flush=True)
    report["runs"], report["median"], report["ratios"] = runs, {}, {}
    print(f"\nbf16, {args.steps} steps ({args.warmup} untimed), median of {args.repeats} interleaved runs on {device}:")
    print("| workload | side | samples/s | peak GPU memory (MB) |\n|---|---|---|---|")
    for w in args.workloads:
        med = {s: {k: statistics.median(x[k] for x in runs[w][s]) for k in ("samples_per_s", "peak_gpu_mb")}
               for s in SIDES}
        report["median"][w] = med
        for s in SIDES:
            print(f"| {w} | {s} | {med[s]['samples_per_s']:.1f} | {med[s]['peak_gpu_mb']:.0f} |")
        report["ratios"][w] = {"speed": med["tuneforge"]["samples_per_s"] / med["trainer"]["samples_per_s"],
                               "peak_memory": med["tuneforge"]["peak_gpu_mb"] / med["trainer"]["peak_gpu_mb"]}
    for w, ratio in report["ratios"].items():
        print(f"ratio tuneforge / Trainer, {w}: speed {ratio['speed']:.2f}x, peak memory {ratio['peak_memory']:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
