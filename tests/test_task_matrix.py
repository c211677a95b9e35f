"""The shared matrix: every task that puts a head on an encoder, trained by every method on a tiny BERT.

One row per task (its data, written here) times one column per method. Each cell trains a few steps and checks:
what the method trains changed and everything else did not; the task's default metric is measured; the finished
run reopens (`Predictor`) and gives the in-memory model's outputs; `predict` returns one record per input.
A new task adds one row to ROWS."""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import NEGATIVE, NEUTRAL, POSITIVE, sentiment_rows, tiny_recipe, write_rows
from helpers import Snapshot

import tuneforge
from tuneforge.adapters import is_adapter_parameter
from tuneforge.inference import Predictor


@dataclass
class Row:
    write: Callable[[Path], dict]            # folder -> files (train, validation)
    task: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    head: tuple = ("bert.pooler.", "classifier.")  # the new head's parameter prefixes


def _tag_rows(n: int, seed: int) -> list[dict]:
    """Sentences of the tiny vocabulary; positive words are B-POS, a negative word before a neutral one starts a
    two-word NEG entity."""
    rng, rows = random.Random(seed), []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(3, 7)):
            kind = rng.random()
            if kind < 0.25:
                tokens.append(rng.choice(POSITIVE)), tags.append("B-POS")
            elif kind < 0.45:
                tokens += [rng.choice(NEGATIVE), rng.choice(NEUTRAL)]
                tags += ["B-NEG", "I-NEG"]
            else:
                tokens.append(rng.choice(NEUTRAL)), tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def _conll(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(f"{t}\t{g}" for t, g in zip(r["tokens"], r["tags"])) for r in rows) + "\n")
    return path


def _qa_rows(n: int, seed: int) -> list[dict]:
    """A context of tiny-vocabulary words holding one positive word; the question asks for it."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        words = rng.sample(NEUTRAL, rng.randint(3, 8))
        answer = rng.choice(POSITIVE)
        words.insert(rng.randint(0, len(words)), answer)
        context = " ".join(words)
        rows.append({"id": f"q{seed}-{i}", "question": "the good", "context": context, "answer": answer,
                     "answer_start": context.index(answer)})
    return rows


def _label_sets(n: int, seed: int) -> list[dict]:
    rows = sentiment_rows(n, seed)
    return [{"text": r["text"], "label": ",".join(sorted({r["label"], "long"} if len(r["text"]) > 25 else {r["label"]}))}
            for r in rows]


def _scores(n: int, seed: int) -> list[dict]:
    return [{"text": r["text"], "label": float(r["label"] == "pos") + 0.1 * len(r["text"].split())}
            for r in sentiment_rows(n, seed)]


def _pairs(n: int, seed: int) -> list[dict]:
    return [{"text": r["text"], "second": " ".join(reversed(r["text"].split())), "label": r["label"]}
            for r in sentiment_rows(n, seed)]


def _files(make, suffix=".csv"):
    def write(folder: Path) -> dict:
        return {"train": write_rows(folder / f"train{suffix}", make(40, 1)),
                "validation": write_rows(folder / f"validation{suffix}", make(12, 2))}
    return write


ROWS = {
    "classification": Row(_files(sentiment_rows)),
    "multi-label": Row(_files(_label_sets)),
    "regression": Row(_files(_scores)),
    "pair-classification": Row(_files(_pairs), data={"text_pair_column": "second"}),
    "token-classification": Row(lambda folder: {"train": _conll(folder / "train.conll", _tag_rows(40, 1)),
                                                "validation": _conll(folder / "validation.conll", _tag_rows(12, 2))},
                                head=("classifier.",)),
    "question-answering": Row(_files(_qa_rows, ".jsonl"), task={"stride": 8, "max_question_length": 8},
                              head=("qa_outputs.",)),
}

EMB, L0, L1 = "bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1."
# method -> (recipe section, which parameters it trains given the row's head prefixes)
METHODS = {
    "full": ({"name": "full"}, lambda n, head: True),
    "head": ({"name": "head"}, lambda n, head: n.startswith(head)),
    "freeze": ({"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1}, lambda n, head: not n.startswith((EMB, L0))),
    "gradual": ({"name": "gradual", "unfreeze_every": 1}, lambda n, head: True),
    "llrd": ({"name": "full", "layer_lr_decay": 0.5}, lambda n, head: True),
    "lora": ({"name": "lora", "r": 2}, None),
    "dora": ({"name": "dora", "r": 2}, None),
    "ia3": ({"name": "ia3"}, None),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 2}, None),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 2}, None),
    "bottleneck": ({"name": "bottleneck", "bottleneck_size": 4}, None),
}


class KeepModel:
    def on_train_start(self, loop):
        self.model = loop.model


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("task", sorted(ROWS))
def test_every_task_trains_by_every_method(tiny_bert_no_dropout, tmp_path, task, method):
    row, (spec, trains) = ROWS[task], METHODS[method]
    files = row.write(tmp_path / "data")
    recipe = tiny_recipe(tiny_bert_no_dropout, files, tmp_path / "run", task={"type": task, **row.task},
                         data={"validation_fraction": 0.0, **row.data}, method=spec,
                         training={"epochs": 2, "lr": 5e-3, "restore_best": False, "seed": 1})
    snap, keep = Snapshot(), KeepModel()
    result = tuneforge.fine_tune(recipe, callbacks=[snap, keep])

    changed = snap.changed()
    if trains is not None:  # a freezing method: exactly its parameters train (gradual: all, by the last stage)
        expected = {n for n in snap.start if trains(n, row.head)}
        assert changed == expected, sorted(changed ^ expected)[:6]
    else:  # an adapter: its own weights (and the head's) change, no pre-trained weight does
        pretrained = {n for n in snap.start if not is_adapter_parameter(n) and "modules_to_save" not in n
                      and not any(h in n for h in row.head)}
        assert changed, "nothing trained"
        assert not (changed & pretrained), sorted(changed & pretrained)[:6]

    metric = tuneforge.recipe.load_recipe(recipe).task_kind.default_metric
    assert math.isfinite(result.metrics["validation"][metric])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == task

    predictor = Predictor(tmp_path / "run")
    examples = predictor._examples(str(files["validation"]), None, None, with_labels=False)[:5]
    keep.model.eval()
    kind = predictor.recipe.task_kind
    split = kind.encode(predictor.recipe, predictor.run.tokenizer, examples, predictor.space)
    with torch.no_grad():
        trained = kind.logits(keep.model, split, 4, predictor.run.tokenizer.pad_token_id, predictor.runtime)
    assert torch.allclose(predictor.logits(examples), trained, atol=1e-5)
    records = predictor.predict(data=str(files["validation"]))
    assert len(records) == 12  # one per validation row
