"""How far N processes are from one: each run once in one process and once in two (torchrun, gloo, CPU), same
global batch, tiny models built here; prints the largest weight difference and whether validation metrics agree.

    python benchmarks/distributed_equivalence.py [--nproc 2] [--out results.json]

One process takes `grad_accum` 4 micro-batches of 4 rows per step; N processes take 4 / N each, so both compute
steps of 16 rows from the same data order. 36 training rows: the last step of each epoch has one micro-batch only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

WORDS = {"pos": ["good", "great", "fine", "superb", "lovely", "fun"], "neg": ["bad", "awful", "dull", "poor", "boring"]}
NEUTRAL = ["movie", "film", "plot", "story", "actor", "scene", "the", "a", "was", "is", "very", "quite"]


def tiny_models(root: Path) -> dict[str, Path]:
    import torch
    from transformers import (BertConfig, BertModel, BertTokenizerFast, LlamaConfig, LlamaForCausalLM,
                              PreTrainedTokenizerFast)
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS["pos"] + WORDS["neg"] + NEUTRAL
    bert = root / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(bert / "vocab.txt")).save_pretrained(bert)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)).save_pretrained(bert)
    llama = root / "llama"
    words = ["<pad>", "<s>", "</s>", "<unk>", "one", "two", "three", "four", "five"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(llama)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)).save_pretrained(llama)
    return {"bert": bert, "llama": llama}


def data(root: Path) -> dict[str, dict[str, str]]:
    import pandas as pd

    rng = random.Random(0)

    def rows(n):
        out = []
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            words = rng.sample(NEUTRAL, rng.randint(2, 6)) + [rng.choice(WORDS[label])]
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": label})
        return out
    for split, n in (("train", 36), ("validation", 18)):
        pd.DataFrame(rows(n)).to_csv(root / f"{split}.csv", index=False)
    pairs = [("one", "two three", "five five"), ("two", "three four", "one one"), ("three", "four five", "two two"),
             ("four", "five one", "three three"), ("five", "one two", "four four")]
    (root / "pc.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c, _ in pairs * 4))
    (root / "pref.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                                             for p, c, r in pairs * 4))
    return {"classification": {"train": str(root / "train.csv"), "validation": str(root / "validation.csv")},
            "causal-lm": {"train": str(root / "pc.jsonl"), "validation": str(root / "pc.jsonl")},
            "preference": {"train": str(root / "pref.jsonl"), "validation": str(root / "pref.jsonl")}}


CASES = {
    "full fine-tuning, BERT classifier": ("bert", "classification", {"name": "full"}, {}),
    "LoRA (DDP)": ("bert", "classification", {"name": "lora", "dropout": 0.0}, {}),
    "LoRA (FSDP)": ("bert", "classification", {"name": "lora", "dropout": 0.0}, {"distributed": "fsdp"}),
    "gradual unfreezing": ("bert", "classification", {"name": "gradual", "unfreeze_every": 2}, {}),
    "causal LM": ("llama", "causal-lm", {"name": "full"}, {"lr": 1e-2}),
    "DPO, adapter-disabled reference": ("llama", "preference", {"name": "lora", "dropout": 0.0}, {"lr": 1e-2}),
    "FSDP full fine-tuning": ("bert", "classification", {"name": "full"}, {"distributed": "fsdp"}),
}


def train(recipe: dict, path: Path, nproc: int) -> None:
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "tuneforge", "train", str(path)], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{path} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def weights(run: Path) -> dict:
    from safetensors.torch import load_file
    folder = run / ("adapter" if (run / "adapter").exists() else "model")
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2, choices=(2, 4))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models, files = tiny_models(root), data(root)
        print(f"| run | largest weight difference, 1 vs {args.nproc} processes | validation metrics |\n|---|---|---|")
        for name, (model, task, method, training) in CASES.items():
            runs = {}
            for n in (1, args.nproc):
                out = root / f"{len(results)}-{n}"
                recipe = {"model": {"name": str(models[model]), "max_length": 32},
                          "task": {"type": task, **({"beta": 0.5} if task == "preference" else {})},
                          "data": files[task], "method": method,
                          "training": {"epochs": 2, "batch_size": 4 if task == "classification" else 1,
                                       "grad_accum": 4 // n, "lr": 1e-3, "warmup_ratio": 0.0, "progress": False,
                                       "seed": 0, **training},
                          "output": {"dir": str(out)}}
                train(recipe, root / f"{len(results)}-{n}.yaml", n)
                runs[n] = out
            a, b = weights(runs[1]), weights(runs[args.nproc])
            diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            ma = json.loads((runs[1] / "summary.json").read_text())["metrics"]["validation"]
            mb = json.loads((runs[args.nproc] / "summary.json").read_text())["metrics"]["validation"]
            same = all(abs(ma[k] - mb[k]) <= 1e-5 for k in ma if k != "eval_seconds")
            results[name] = {"max_abs_weight_diff": diff, "validation_equal": same}
            print(f"| {name} | {diff:.2g} | {'equal' if same else 'differ'} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
