"""Masked-LM training step: logits at the chosen positions only (tuneforge) against every position's logits (what
transformers' BertForMaskedLM computes when given labels, as under the Hugging Face Trainer), on all-MiniLM-L6-v2
with batches of 32 demo snippets (max_length 64), forward and backward. Same batches, interleaved rounds; the
median step time of each and their ratio are printed.

    python benchmarks/masked_lm_speed.py [--rounds 5] [--steps 4]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from tuneforge.assets import rotten_tomatoes
    from tuneforge.data.dataset import parse_class_label, read_examples_from_file
    from tuneforge.data.masked import encode_masked
    from tuneforge.models.loading import load_for_masked_lm
    from tuneforge.tasks import get_task

    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(2)
    loaded = load_for_masked_lm("minilm-l6", seed=0)
    model, tok = loaded.model, loaded.tokenizer
    model.train()
    rows = read_examples_from_file(rotten_tomatoes()["train"], parse_class_label, "text", None, "label", "auto")
    split = encode_masked(tok, rows[: 32 * args.steps], 64, 0.15)
    batches = [split.batch(list(range(i * 32, (i + 1) * 32)), tok.pad_token_id, (0, 0)) for i in range(args.steps)]
    task = get_task("masked-lm")

    def full(batch):  # every position's logits and the model's own loss, as transformers computes it with labels
        out = model(**batch)
        return out.loss * int((batch["labels"] != -100).sum())

    def chosen(batch):
        return task.batch_loss(model, batch)[0]

    times = {"chosen positions (tuneforge)": [], "every position (transformers)": []}
    for _ in range(args.rounds):
        for name, fn in (("chosen positions (tuneforge)", chosen), ("every position (transformers)", full)):
            started = time.perf_counter()
            for batch in batches:
                fn(batch).backward()
                model.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - started) / len(batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k}: {v * 1000:.0f} ms per step of 32 rows (median of {args.rounds} rounds of {args.steps} steps)")
    a, b = med["every position (transformers)"], med["chosen positions (tuneforge)"]
    print(f"ratio: {a / b:.2f}x faster with logits at the chosen positions only")


if __name__ == "__main__":
    main()
