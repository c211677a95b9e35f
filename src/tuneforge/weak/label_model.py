"""Label models: from a label matrix (n rows x m labeling functions, -1 = abstain) to a probability per class.

- `majority_vote`: each row's most voted class (ties share the probability equally).
- `DawidSkene`: each labeling function gets a confusion matrix P(vote | true class), and the classes a prior; EM
  (Dawid & Skene, 1979) alternates the posterior of every row's class with those parameters, starting from the
  majority vote, so functions that are right more often count more. Two parametrizations:
  - `one_coin=True` (label model "one-coin"): one accuracy per function, its errors spread evenly over the other
    classes. Right for rules that each vote a single class: a full confusion matrix of such a rule is
    P(vote v | class c, it fired) = 1 for every class it ever fired on, which says nothing; an accuracy says
    how far to trust the vote.
  - full confusion matrices (label model "dawid-skene"): for sources that vote many classes (other classifiers,
    annotators), where which class a source confuses with which is worth learning.
  Both have a Dirichlet prior that a function's votes are right with probability `prior_accuracy` (as in
  Bayesian Dawid-Skene and Snorkel's accuracy prior). Only rows with two or more votes inform the parameters: a
  rule that never overlaps another cannot be checked against anything, so it keeps the prior's accuracy (and
  its rows keep its vote as their most likely label). Abstaining is taken to be independent of the class.

A row where every function abstained gets no label: its probabilities are NaN and `covered` is False, so it can
only ever be used as unlabelled data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .labeling import ABSTAIN_ID


@dataclass
class WeakLabels:
    probs: np.ndarray      # (n, k); NaN rows where uncovered
    covered: np.ndarray    # (n,) bool: at least one function voted

    @property
    def hard(self) -> np.ndarray:
        """Argmax class per row, -1 for uncovered rows (ties: the lowest class id)."""
        out = np.full(len(self.covered), ABSTAIN_ID, dtype=np.int64)
        out[self.covered] = self.probs[self.covered].argmax(1)
        return out


def _votes(matrix: np.ndarray, k: int) -> np.ndarray:
    """One-hot votes (n, m, k); all zeros where a function abstained."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"a label matrix is 2-D (rows x labeling functions), got shape {matrix.shape}")
    bad = (matrix < ABSTAIN_ID) | (matrix >= k)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"label matrix row {i}, function {j}: {matrix[i, j]} is not a class id in 0..{k - 1} or "
                         f"{ABSTAIN_ID} (abstain)")
    votes = np.zeros((*matrix.shape, k))
    rows, cols = np.nonzero(matrix != ABSTAIN_ID)
    votes[rows, cols, matrix[rows, cols]] = 1.0
    return votes


def majority_vote(matrix: np.ndarray, k: int) -> WeakLabels:
    counts = _votes(matrix, k).sum(1)
    covered = counts.sum(1) > 0
    top = counts == counts.max(1, keepdims=True)
    probs = np.full(counts.shape, np.nan)
    probs[covered] = top[covered] / top[covered].sum(1, keepdims=True)
    return WeakLabels(probs, covered)


class DawidSkene:
    """EM over per-function confusion matrices. The prior adds `prior_strength` pseudo-votes to every confusion row,
    `prior_accuracy` of them on the true class and the rest spread over the others. Classes are taken as equally
    likely a priori unless `estimate_class_balance`."""

    def __init__(self, k: int, max_iter: int = 100, tol: float = 1e-5, prior_accuracy: float = 0.7,
                 prior_strength: float = 10.0, one_coin: bool = False, estimate_class_balance: bool = False):
        if not 1.0 / k < prior_accuracy < 1.0:
            raise ValueError(f"prior_accuracy must be above chance (1/{k}) and below 1, got {prior_accuracy}")
        self.k, self.max_iter, self.tol = k, max_iter, tol
        self.prior_accuracy, self.prior_strength, self.one_coin = prior_accuracy, prior_strength, one_coin
        self.estimate_class_balance = estimate_class_balance
        self.prior: np.ndarray | None = None       # (k,)
        self.confusion: np.ndarray | None = None   # (m, k true, k voted)
        self.iterations = 0

    def fit(self, matrix: np.ndarray) -> "DawidSkene":
        votes = _votes(matrix, self.k)
        covered = votes.sum((1, 2)) > 0
        if not covered.any():
            raise ValueError("every row is abstained on by every labeling function; nothing to fit")
        votes = votes[covered]
        q = majority_vote(np.asarray(matrix)[covered], self.k).probs
        for self.iterations in range(1, self.max_iter + 1):
            self._m_step(votes, q)
            new = self._posterior(votes)
            change = np.abs(new - q).max()
            q = new
            if change < self.tol:
                break
        self._m_step(votes, q)
        return self

    def _m_step(self, votes: np.ndarray, q: np.ndarray) -> None:
        k = self.k
        # The class balance is uniform unless asked for: estimated, it feeds on itself, and a rare class whose only
        # evidence is one rule is absorbed by a frequent one within a few iterations.
        self.prior = (q.sum(0) + 1.0) / (len(q) + k) if self.estimate_class_balance else np.full(k, 1.0 / k)
        # A row only one function voted on says nothing about that function's accuracy (its posterior is that
        # accuracy itself), so only rows with two or more votes inform the parameters; a rule that never overlaps
        # another keeps the prior's accuracy.
        informative = votes.sum((1, 2)) > 1
        votes, q = votes[informative], q[informative]
        diagonal = np.eye(k, dtype=bool)
        counts = np.einsum("ic,ijv->jcv", q, votes)  # expected (true c, voted v) per function
        if self.one_coin:
            right = counts[:, diagonal].sum(1) + self.prior_strength * self.prior_accuracy
            accuracy = right / (counts.sum((1, 2)) + self.prior_strength)
            self.confusion = np.where(diagonal, accuracy[:, None, None], ((1 - accuracy) / (k - 1))[:, None, None])
            return
        pseudo = self.prior_strength * np.where(diagonal, self.prior_accuracy, (1 - self.prior_accuracy) / (k - 1))
        counts = counts + pseudo
        self.confusion = counts / counts.sum(2, keepdims=True)

    def _posterior(self, votes: np.ndarray) -> np.ndarray:
        log_q = np.log(self.prior) + np.einsum("ijv,jcv->ic", votes, np.log(self.confusion))
        log_q -= log_q.max(1, keepdims=True)
        q = np.exp(log_q)
        return q / q.sum(1, keepdims=True)

    def predict(self, matrix: np.ndarray) -> WeakLabels:
        if self.confusion is None:
            raise RuntimeError("call fit() first")
        votes = _votes(matrix, self.k)
        if votes.shape[1] != self.confusion.shape[0]:
            raise ValueError(f"fitted on {self.confusion.shape[0]} labeling functions, given {votes.shape[1]}")
        covered = votes.sum((1, 2)) > 0
        probs = np.full((len(votes), self.k), np.nan)
        probs[covered] = self._posterior(votes[covered])
        return WeakLabels(probs, covered)

    def accuracies(self, matrix: np.ndarray) -> np.ndarray:
        """Each function's estimated accuracy: the posterior probability that its votes are right, averaged over
        the rows it voted on (NaN for a function that never votes)."""
        matrix = np.asarray(matrix)
        probs = self.predict(matrix).probs
        out = np.full(matrix.shape[1], np.nan)
        for j in range(matrix.shape[1]):
            voted = matrix[:, j] != ABSTAIN_ID
            if voted.any():
                out[j] = probs[voted, matrix[voted, j]].mean()
        return out


LABEL_MODELS = ("majority", "one-coin", "dawid-skene")


def fit_label_model(matrix: np.ndarray, k: int, label_model: str = "one-coin",
                    prior_accuracy: float = 0.7) -> DawidSkene | None:
    """The fitted probabilistic model (None for the majority vote)."""
    if label_model not in LABEL_MODELS:
        raise ValueError(f"label model {label_model!r}: use one of {', '.join(LABEL_MODELS)}")
    if label_model == "majority":
        return None
    return DawidSkene(k, one_coin=label_model == "one-coin", prior_accuracy=prior_accuracy).fit(matrix)


def weak_labels(matrix: np.ndarray, k: int, label_model: str = "one-coin") -> WeakLabels:
    model = fit_label_model(matrix, k, label_model)
    return majority_vote(matrix, k) if model is None else model.predict(matrix)
