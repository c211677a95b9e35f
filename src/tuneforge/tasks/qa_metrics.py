"""SQuAD exact match and F1, and the metric object that gathers QA window logits into them.

The answer comparison is the official SQuAD v1.1 evaluation script's, quirks included, so scores are
comparable with published ones: answers are lowercased, ASCII punctuation (Python's string.punctuation) is
removed, then the articles a/an/the, then whitespace is collapsed; F1 is over the bag of the remaining
tokens; both take the best over the gold answers. Known consequences: unicode punctuation (’ – “) is kept;
an answer that normalizes to nothing ("the") has EM 1 but F1 0 against another such answer (v1.1 counts no
common token). Unanswerable questions (gold []) follow the SQuAD 2.0 script: the only gold is "", so EM and
F1 are 1 exactly when the prediction normalizes to nothing.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence, Union

import torch

from ..data.qa_windows import QASplit, decode_answers

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

Golds = Union[str, Sequence[str]]


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v1.1, in the script's order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: Golds) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    return list(golds) or [""]  # no gold answer (SQuAD 2.0): the right prediction is no answer


def _f1_one(prediction: str, gold: str, unanswerable: bool) -> float:
    pred, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if unanswerable:
        return float(pred == truth)  # SQuAD 2.0: an empty side scores 1 only against another empty side
    common = Counter(pred) & Counter(truth)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Golds) -> float:
    """1.0 when the prediction equals any gold answer after normalization; golds [] = unanswerable."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in _golds(golds)))


def f1(prediction: str, golds: Golds) -> float:
    """The best token-bag F1 (0..1) of the prediction against any gold answer; golds [] = unanswerable."""
    unanswerable = not isinstance(golds, str) and len(golds) == 0
    return max(_f1_one(prediction, g, unanswerable) for g in _golds(golds))


class QAMetrics:
    """Keeps each evaluated window's start/end logits (on the host, cut to the window's real length), then
    decodes answers per example and scores them. Windows rather than running sums: an example's answer needs
    all its windows, which may arrive in different batches or on different processes."""

    def __init__(self, split: QASplit, n_best: int = 20, max_answer_length: int = 30,
                 allow_unanswerable: bool = False, null_threshold: float = 0.0):
        self.split = split
        self.n_best, self.max_answer_length = n_best, max_answer_length
        self.allow_unanswerable, self.null_threshold = allow_unanswerable, null_threshold
        self.start: dict[int, torch.Tensor] = {}
        self.end: dict[int, torch.Tensor] = {}

    def update(self, outputs: dict, labels=None) -> None:
        """`outputs`: {"start_logits": (B, T), "end_logits": (B, T), "window_ids": (B,)}; `labels` is unused
        (the gold answers are the split's examples: character spans, not token positions)."""
        lengths = self.split.lengths
        starts = outputs["start_logits"].detach().float().cpu()
        ends = outputs["end_logits"].detach().float().cpu()
        for row, w in enumerate(outputs["window_ids"].reshape(-1).tolist()):
            n = lengths[w]
            self.start[w] = starts[row, :n].clone()  # clone: not a view keeping the whole batch alive
            self.end[w] = ends[row, :n].clone()

    def merge(self, other: "QAMetrics") -> None:
        self.start.update(other.start)
        self.end.update(other.end)

    def complete_examples(self) -> list[int]:
        """Examples with gold answers all of whose windows were seen (only those can be decoded fairly)."""
        return [e for e, ws in enumerate(self.split.windows_of())
                if ws and self.split.examples[e].answers is not None and all(w in self.start for w in ws)]

    def compute(self) -> dict[str, float]:
        chosen = self.complete_examples()
        if not chosen:  # nothing scored: no number can stand for it
            return {"exact_match": math.nan, "f1": math.nan, "examples": 0.0}
        predictions = decode_answers(self.split, self.start, self.end, self.n_best, self.max_answer_length,
                                     self.allow_unanswerable, self.null_threshold, examples=chosen)
        em = f1_sum = 0.0
        for p in predictions:
            golds = [text for text, _ in self.split.examples[p["example"]].answers]
            em += exact_match(p["answer"], golds)
            f1_sum += f1(p["answer"], golds)
        n = len(predictions)
        return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1_sum / n, "examples": float(n)}
