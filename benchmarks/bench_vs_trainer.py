"""tuneforge's loop vs the Hugging Face Trainer: same model, data, batch and sequence length.

    python benchmarks/bench_vs_trainer.py [--steps 40] [--repeats 3] [--batch-size 32] [--max-length 128] [--method lora]

Full fine-tuning (or, with --method lora, LoRA through PEFT on both sides: rank 8, alpha 16, dropout 0.1, every
attention and feed-forward linear of every block, pooler and classifier trained fully, lr 1e-3) of the packaged
all-MiniLM-L6-v2 on the Rotten Tomatoes training snippets (real, variable-length text), dynamic padding on both
sides, each library's default AdamW. Variants: tuneforge with its defaults (length-grouped batches, precision
auto) and with the defaults of 0.8 (fp32, random order); the Trainer with its defaults (fp32, random order) and at
its best (grouped by length, fp32 or bf16 autocast, whichever is faster here). Every run is its own process (so
peak RSS is its own), runs are interleaved (one of each variant per round), and samples/s is timed over the
optimizer steps after the first `--warmup` ones. Prints medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

from child import quiet_console, report_result, run_child

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _StepTimer:
    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def tick(self):
        self.times.append(time.perf_counter())

    def samples_per_s(self, batch: int) -> float:
        t = self.times[self.warmup:]
        return (len(t) - 1) * batch / (t[-1] - t[0])


def run_tuneforge(args, **training) -> dict:
    """tuneforge with its defaults, or with `training` keys set (e.g. the fp32, ungrouped settings of 0.8)."""
    import tuneforge
    from tuneforge.assets import rotten_tomatoes

    timer = _StepTimer(args.warmup)

    class Tick:
        def on_train_start(self, loop):
            timer.tick()  # step 0 boundary

        def on_step_end(self, loop):
            timer.tick()

    with tempfile.TemporaryDirectory() as out:
        result = tuneforge.fine_tune({
            "model": {"name": "minilm-l6", "max_length": args.max_length},
            "data": {"train": str(rotten_tomatoes()["train"]), "validation_fraction": 0.0},
            "method": {"name": args.method},
            "training": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": LR[args.method], "progress": False,
                         "seed": 0, "warmup_ratio": 0.0, "log_every": 1000, **training},
            "output": {"dir": out + "/run"},
        }, console=quiet_console(), callbacks=[Tick()])
        runtime = json.loads((result.run_dir / "summary.json").read_text())["runtime"]
    return {"samples_per_s": timer.samples_per_s(args.batch_size), "peak_rss_mb": _peak_rss_mb(),
            "optimizer": "torch.optim.AdamW(fused=True)", "precision": runtime["precision"]}


def run_trainer(args, grouped: bool = False, bf16: bool = False) -> dict:
    import pandas as pd
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)
    from transformers.utils import logging as hf_logging

    from tuneforge.assets import resolve_model_path, rotten_tomatoes

    hf_logging.set_verbosity_error()
    path = resolve_model_path("minilm-l6")
    df = pd.read_csv(rotten_tomatoes()["train"])
    labels = sorted(df["label"].unique())
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(df["text"].tolist(), truncation=True, max_length=args.max_length)
    rows = [{"input_ids": i, "token_type_ids": t, "attention_mask": a, "labels": labels.index(y)}
            for i, t, a, y in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], df["label"])]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1, modules_to_save=["classifier", "bert.pooler"],
            target_modules=r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                           r"intermediate\.dense|output\.dense)"))
    timer = _StepTimer(args.warmup)

    class Tick(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            timer.tick()

        def on_step_end(self, a, state, control, **kw):
            timer.tick()

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                                  learning_rate=LR[args.method], save_strategy="no", report_to="none", use_cpu=True,
                                  logging_steps=1000, disable_tqdm=True, seed=0, dataloader_num_workers=0, bf16=bf16,
                                  train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=DataCollatorWithPadding(tok),
                          callbacks=[Tick()])
        trainer.train()
        optimizer = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).__name__
    return {"samples_per_s": timer.samples_per_s(args.batch_size), "peak_rss_mb": _peak_rss_mb(),
            "optimizer": f"{optimizer} ({targs.optim})", "precision": "bf16" if bf16 else "fp32"}


LR = {"full": 5e-5, "lora": 1e-3}


def real_tokens_per_row(max_length: int) -> float:
    """Mean tokens of a training row (padding excluded), as both sides tokenize them."""
    import pandas as pd
    from transformers import AutoTokenizer

    from tuneforge.assets import resolve_model_path, rotten_tomatoes

    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    ids = tok(pd.read_csv(rotten_tomatoes()["train"])["text"].tolist(), truncation=True, max_length=max_length)["input_ids"]
    return sum(map(len, ids)) / len(ids)


def train_flops_per_token(tokens_per_row: float) -> float:
    """Matmul FLOPs of one real token's forward and backward through MiniLM (6 blocks, width 384, feed-forward 1536):
    3 x (2 x the block weights + attention's 2 x 2 x L x width per block); embeddings and head are negligible."""
    blocks, width, ffn = 6, 384, 1536
    forward = blocks * (2 * (4 * width * width + 2 * width * ffn) + 4 * tokens_per_row * width)
    return 3 * forward


def matmul_peak_gflops(tokens: int = 1024) -> dict:
    """The best matmul rate torch reaches here at MiniLM's shapes (tokens x 384 by 384 x 1536 and back), fp32 and
    bf16: the ceiling useful work is measured against."""
    import time

    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        rates = []
        for m, k, n in ((tokens, 384, 1536), (tokens, 1536, 384), (tokens, 384, 384)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(3):
                a @ b
            started = time.perf_counter()
            for _ in range(20):
                a @ b
            rates.append(2 * m * k * n * 20 / (time.perf_counter() - started) / 1e9)
        out[str(dtype).split(".")[1]] = max(rates)
    return out

IMPLS = {
    "tuneforge": run_tuneforge,  # its defaults: length-grouped batches, precision auto
    "trainer": run_trainer,      # its defaults: random batches, fp32
    # The Trainer at its best: grouping by length (off by default), with or without bf16 autocast (whichever is
    # faster on the machine is its best).
    "trainer-grouped": lambda args: run_trainer(args, grouped=True),
    "trainer-grouped-bf16": lambda args: run_trainer(args, grouped=True, bf16=True),
    # tuneforge with the defaults of 0.8 (fp32, random batches): what the new defaults buy.
    "tuneforge-0.8-defaults": lambda args: run_tuneforge(args, group_by_length=False, precision="fp32",
                                                         fast_dropout=False, fused_lora=False),
    # tuneforge's defaults with torch's own dropout masks: what the faster masks buy.
    "tuneforge-torch-dropout": lambda args: run_tuneforge(args, fast_dropout=False),
    # LoRA: tuneforge's defaults with PEFT's own forward of the adapted linears: what the fused step buys.
    "tuneforge-peft-forward": lambda args: run_tuneforge(args, fused_lora=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5, help="optimizer steps not timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--method", choices=sorted(LR), default="full")
    ap.add_argument("--child", choices=sorted(IMPLS))
    ap.add_argument("--only", nargs="*", choices=sorted(IMPLS), help="run only these (ratios need the tuneforge and "
                    "trainer variants)")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    if args.child:
        report_result(IMPLS[args.child](args))
        return
    results = {k: [] for k in IMPLS}
    peak = matmul_peak_gflops()  # measured first, on the quiet machine
    print(f"matmul peak at MiniLM's shapes: fp32 {peak['float32']:.0f} GFLOP/s, bf16 {peak['bfloat16']:.0f} GFLOP/s")
    for r in range(args.repeats):
        for impl in (args.only or IMPLS):  # interleaved, so drift in machine load hits both alike
            cmd = [sys.executable, __file__, "--child", impl, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--method", args.method]
            res = run_child(cmd, impl)
            results[impl].append(res)
            print(f"run {r + 1} {impl:22s}: {res['samples_per_s']:.1f} samples/s, peak RSS {res['peak_rss_mb']:.0f} MB "
                  f"({res['optimizer']}, {res['precision']})", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("samples_per_s", "peak_rss_mb")}
           for k, v in results.items() if v}
    print(f"\n{args.method}: median of {args.repeats} interleaved runs, {args.steps} steps of batch {args.batch_size}, max_length {args.max_length}:")
    print("| implementation | samples/s | peak RSS (MB) |\n|---|---|---|")
    for k in med:
        print(f"| {k} | {med[k]['samples_per_s']:.1f} | {med[k]['peak_rss_mb']:.0f} |")
    per_row = real_tokens_per_row(args.max_length)
    flops = train_flops_per_token(per_row)
    useful = {}
    print(f"\nuseful work ({per_row:.1f} real tokens per row, {flops / 1e6:.1f} MFLOP per token for forward and backward):")
    for k in med:
        precision = results[k][0]["precision"]
        rate = med[k]["samples_per_s"] * per_row * flops / 1e9
        ceiling = peak["bfloat16" if precision == "bf16" else "float32"]
        useful[k] = {"gflops": rate, "precision": precision, "of_peak": rate / ceiling}
        print(f"| {k} | {rate:.0f} GFLOP/s on real tokens | {100 * rate / ceiling:.0f}% of the {precision} matmul peak |")
    ratios = {}
    best = max((k for k in ("trainer-grouped", "trainer-grouped-bf16") if k in med),
               key=lambda k: med[k]["samples_per_s"], default=None)
    for theirs, label in (("trainer", "against the Trainer's defaults"),
                          (best, f"against the Trainer at its best ({best})")):
        if "tuneforge" in med and theirs in med:
            ratios[label] = {"speed": med["tuneforge"]["samples_per_s"] / med[theirs]["samples_per_s"],
                             "peak_rss": med["tuneforge"]["peak_rss_mb"] / med[theirs]["peak_rss_mb"]}
            print(f"ratio tuneforge defaults / Trainer ({label}): speed {ratios[label]['speed']:.2f}x, "
                  f"peak RSS {ratios[label]['peak_rss']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": results, "median": med, "ratios": ratios, "matmul_peak_gflops": peak,
                       "useful_work": useful}, f, indent=1)


if __name__ == "__main__":
    main()
