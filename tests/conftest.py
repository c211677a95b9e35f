"""Shared fixtures: a tiny BERT built from config with its own tokenizer, and small data files."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# precision: auto measures this CPU and may take bf16; the tests pin its choice so their figures are the same on
# every machine (tests of the measurement itself unset it).
os.environ.setdefault("TUNEFORGE_AUTO_PRECISION", "fp32")

POSITIVE = ["good", "great", "fine", "superb", "lovely", "fun"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "weak"]
NEUTRAL = ["movie", "film", "plot", "story", "actor", "scene", "the", "a", "was", "is", "very", "quite"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_bert(folder: Path, dropout: float = 0.1, layers: int = 2, hidden: int = 32) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + POSITIVE + NEGATIVE + NEUTRAL
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_no_dropout(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0)


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(NEUTRAL, rng.randint(2, 6)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        pd.DataFrame(rows).to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


@pytest.fixture
def sentiment_files(tmp_path) -> dict[str, Path]:
    return {
        "train": write_rows(tmp_path / "data" / "train.csv", sentiment_rows(48, seed=1)),
        "validation": write_rows(tmp_path / "data" / "validation.csv", sentiment_rows(16, seed=2)),
        "test": write_rows(tmp_path / "data" / "test.csv", sentiment_rows(16, seed=3)),
    }


def tiny_recipe(model_dir: Path, files: dict[str, Path], out: Path, **sections) -> dict:
    """A recipe dict for the tiny model; `sections` update the defaults section by section."""
    recipe = {
        "model": {"name": str(model_dir), "max_length": 32},
        "task": {"type": "classification"},
        "data": {k: str(v) for k, v in files.items()},
        "method": {"name": "full"},
        "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.0,
                     "progress": False, "seed": 0, "log_every": 2},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe
