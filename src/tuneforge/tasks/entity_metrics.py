"""Entity-level metrics for token classification (NER), as seqeval reports them.

Batches hold windows, not sentences: a long sentence is split into overlapping windows and each word is scored in
exactly one of them (see data/tokens.py). So predictions are collected per (example id, word id) and sentences are
rebuilt in word order only at `compute`, when every window has been seen; entities never depend on how a
sentence was windowed or batched.

Entities are read by `tuneforge.data.tokens.entity_spans` with the same scheme, which the tests hold equal to
seqeval: BIO in seqeval's default (lenient, conlleval-style) mode, which is what Hugging Face's token-classification
example reports; BIOES and BILOU in seqeval's strict mode. Computing the counts here, rather than calling seqeval,
keeps seqeval an optional dependency and its "no predicted samples" warnings out of every evaluation."""
from __future__ import annotations

import re


from ..data.tokens import entity_spans

SCHEMES = {"BIO": "BIO", "IOB2": "BIO", "BIOES": "BIOES", "IOBES": "BIOES", "BILOU": "BILOU"}


def _type_key(entity_type: str) -> str:
    return re.sub(r"[^0-9a-z]", "_", entity_type.lower())


class EntityMetrics:
    """`update(outputs, labels)`: outputs hold "logits" (B, T, C), "word_ids" (B, T; -1 where a position scores no
    word) and "example_ids" (B,), as TokenSplit.batch gives them. The gold tag of a word is the batch's label at its
    scored position: by construction that position is the word's first sub-token, which carries the word's own tag
    (with label_all_tokens too). `labels` may be None (outputs["labels"] is then used if present): predictions are
    collected and only what needs no gold is computed."""

    def __init__(self, label_names: list[str], scheme: str = "BIO"):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
        self.names = list(label_names)
        self.scheme = SCHEMES[scheme]
        self.types = {name[2:] for name in self.names if name != "O" and len(name) > 2}
        # (example id, word id) -> (predicted id, gold id or -100). Keyed, so a window seen twice (a distributed
        # sampler repeating rows to even out its shards) counts once.
        self.words: dict[tuple[int, int], tuple[int, int]] = {}

    def update(self, outputs: dict, labels=None) -> None:
        word_ids = outputs["word_ids"]
        logits = outputs["logits"]
        if logits.shape[1] > word_ids.shape[1]:  # prompt tuning puts virtual tokens first: the last are the input's
            logits = logits[:, -word_ids.shape[1]:]
        gold = labels if labels is not None else outputs.get("labels")
        scored = word_ids >= 0
        if not scored.any():
            return
        examples = outputs["example_ids"].to(word_ids.device)[:, None].expand_as(word_ids)[scored].tolist()
        words = word_ids[scored].tolist()
        predicted = logits.argmax(-1).to(word_ids.device)[scored].tolist()
        truth = gold.to(word_ids.device)[scored].tolist() if gold is not None else [-100] * len(words)
        if gold is not None and -100 in truth:
            raise ValueError("a scored position has no gold label (-100): the batch's labels and word_ids disagree")
        self.words.update(zip(zip(examples, words), zip(predicted, truth)))

    def merge(self, other: "EntityMetrics") -> None:
        self.words.update(other.words)

    def sentences(self) -> tuple[list[list[str]], list[list[str]]]:
        """(gold, predicted) tag sequences, one per example seen, words in order."""
        gold, predicted, last = [], [], None
        for (example, _), (p, g) in sorted(self.words.items()):
            if example != last:
                gold.append([])
                predicted.append([])
                last = example
            gold[-1].append(self.names[g] if g >= 0 else "O")
            predicted[-1].append(self.names[p])
        return gold, predicted

    def compute(self) -> dict[str, float]:
        gold, predicted = self.sentences()
        words = sum(len(s) for s in gold)
        correct = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps))
        true_set, pred_set = set(), set()
        for i, (gs, ps) in enumerate(zip(gold, predicted)):
            true_set.update((i,) + span for span in entity_spans(gs, self.scheme))
            pred_set.update((i,) + span for span in entity_spans(ps, self.scheme))
        out = {**_prf(true_set, pred_set), "accuracy": correct / words if words else 0.0}
        # One key per entity type of the label set, present or not, so every evaluation reports the same keys.
        for entity_type in sorted(self.types | {e[1] for e in true_set | pred_set}):
            scores = _prf({e for e in true_set if e[1] == entity_type}, {e for e in pred_set if e[1] == entity_type})
            for name in ("f1", "precision", "recall"):
                out[f"{name}_{_type_key(entity_type)}"] = scores[name]
        return out


def _prf(true_set: set, pred_set: set) -> dict[str, float]:
    hits = len(true_set & pred_set)
    precision = hits / len(pred_set) if pred_set else 0.0
    recall = hits / len(true_set) if true_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}
