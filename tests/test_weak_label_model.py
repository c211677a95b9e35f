"""Labeling functions, label models and their analysis: votes, abstentions, recovery of known accuracies, and
every number of the analysis by hand."""
from __future__ import annotations

import numpy as np
import pytest

from tuneforge.errors import DataError, RecipeError
from tuneforge.weak import (ABSTAIN, DawidSkene, analyze, apply_labeling_functions, keyword_rule, labeling_function,
                            load_labeling_functions, majority_vote, regex_rule)
from tuneforge.weak.label_model import fit_label_model, weak_labels


def synthetic_votes(seed: int, n: int = 4000, k: int = 3, accuracies=(0.9, 0.8, 0.7, 0.6, 0.55),
                    coverages=(0.6, 0.5, 0.7, 0.6, 0.5)):
    """Sources that vote independently given the class: right with their accuracy, else a uniformly wrong class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    matrix = np.full((n, len(accuracies)), -1)
    for j, (accuracy, coverage) in enumerate(zip(accuracies, coverages)):
        votes = rng.random(n) < coverage
        right = rng.random(n) < accuracy
        wrong = (truth + rng.integers(1, k, n)) % k
        matrix[votes, j] = np.where(right, truth, wrong)[votes]
    return matrix, truth


@pytest.mark.parametrize("one_coin", [True, False])
def test_label_model_recovers_known_source_accuracies(one_coin):
    accuracies = (0.9, 0.8, 0.7, 0.6, 0.55)
    matrix, truth = synthetic_votes(0, accuracies=accuracies)
    model = DawidSkene(3, one_coin=one_coin).fit(matrix)
    estimated = model.accuracies(matrix)
    assert np.abs(estimated - np.array(accuracies)).max() < 0.03, estimated
    labels, mv = model.predict(matrix), majority_vote(matrix, 3)
    covered = labels.covered
    # Weighting sources by their accuracy beats counting votes.
    assert (labels.hard[covered] == truth[covered]).mean() > (mv.hard[covered] == truth[covered]).mean() + 0.02


def test_full_confusion_learns_which_class_a_source_confuses():
    rng = np.random.default_rng(1)
    n, truth = 3000, rng.integers(0, 3, 3000)
    matrix = np.stack([np.where(rng.random(n) < 0.85, truth, (truth + rng.integers(1, 3, n)) % 3) for _ in range(3)], 1)
    # A fourth source calls class 2 "1" every time, and is right on classes 0 and 1.
    matrix = np.concatenate([matrix, np.where(truth == 2, 1, truth)[:, None]], 1)
    model = DawidSkene(3).fit(matrix)
    assert model.confusion[3, 2, 1] > 0.95 and model.confusion[3, 0, 0] > 0.95


def test_abstentions_carry_no_vote_and_an_all_abstain_row_gets_no_label():
    matrix = np.array([[0, -1, 0, 1],
                       [-1, -1, -1, -1],
                       [2, 2, -1, 1],
                       [-1, 1, -1, -1]])
    mv = majority_vote(matrix, 3)
    assert mv.covered.tolist() == [True, False, True, True]
    assert mv.hard.tolist() == [0, -1, 2, 1]
    assert np.isnan(mv.probs[1]).all()
    np.testing.assert_allclose(mv.probs[0], [1, 0, 0])
    for name in ("majority", "one-coin", "dawid-skene"):
        labels = weak_labels(np.concatenate([matrix, synthetic_votes(2, n=200, accuracies=(0.9,) * 4,
                                                                     coverages=(0.7,) * 4)[0]]), 3, name)
        assert not labels.covered[1] and labels.hard[1] == -1 and np.isnan(labels.probs[1]).all()
        assert np.allclose(labels.probs[labels.covered].sum(1), 1)


def test_majority_vote_ties_share_the_probability():
    np.testing.assert_allclose(majority_vote(np.array([[0, 1, -1]]), 3).probs[0], [0.5, 0.5, 0])


def test_label_model_refuses_a_matrix_with_unknown_ids():
    with pytest.raises(ValueError, match="row 0, function 1: 3"):
        DawidSkene(3).fit(np.array([[0, 3]]))
    with pytest.raises(ValueError, match="abstained on by every"):
        DawidSkene(3).fit(np.full((4, 2), -1))
    assert fit_label_model(np.array([[0, 1]]), 2, "majority") is None


def test_analysis_by_hand():
    # 4 rows, 3 functions; gold known on rows 0-2.
    matrix = np.array([[0, 0, -1],
                       [1, -1, 0],
                       [-1, -1, -1],
                       [1, -1, -1]])
    a = analyze(matrix, ["f", "g", "h"], ["neg", "pos"], gold=[0, 0, 1, -1])
    f, g, h = a.functions
    assert (f.coverage, f.overlaps, f.conflicts) == (0.75, 0.5, 0.25)  # rows 0,1,3; overlaps rows 0,1; conflict row 1
    assert f.labels == ["pos", "neg"] and f.votes == 3
    assert (f.correct, f.incorrect, f.accuracy) == (1, 1, 0.5)          # row 0 right, row 1 wrong, row 3 unknown
    assert (g.coverage, g.overlaps, g.conflicts, g.accuracy) == (0.25, 0.25, 0.0, 1.0)
    assert (h.coverage, h.overlaps, h.conflicts, h.accuracy) == (0.25, 0.25, 0.25, 1.0)
    assert (a.coverage, a.overlaps, a.conflicts, a.gold_rows) == (0.75, 0.5, 0.25, 3)


def test_labeling_functions_vote_or_abstain():
    @labeling_function()
    def short(text):
        return "short" if len(text.split()) < 3 else ABSTAIN

    great = keyword_rule("great", "pos", ["great", "superb film"])
    number = regex_rule("number", "num", r"\d+")
    texts = ["a great day", "greatest hits of 1999", "a superb film indeed", "ok"]
    matrix = apply_labeling_functions([short, great, number], texts, ["num", "pos", "short"])
    assert short.name == "short"
    assert matrix.tolist() == [[-1, 1, -1],   # "great" as a whole word
                               [-1, -1, 0],   # "greatest" is not "great"
                               [-1, 1, -1],   # a phrase
                               [2, -1, -1]]


def test_labeling_function_errors_name_the_function_and_row():
    @labeling_function()
    def broken(text):
        return 1 / 0

    @labeling_function()
    def unknown(text):
        return "maybe"

    with pytest.raises(DataError) as e:
        apply_labeling_functions([broken], ["x", "y"], ["a", "b"], sources=["f.csv row 1", "f.csv row 2"])
    assert "'broken' on f.csv row 1" in str(e.value) and "ZeroDivisionError" in str(e.value)
    with pytest.raises(DataError, match="'unknown' voted 'maybe' on row 1, which is not a label"):
        apply_labeling_functions([unknown], ["x"], ["a", "b"])
    with pytest.raises(RecipeError, match="distinct names"):
        apply_labeling_functions([unknown, unknown], ["x"], ["a", "b"])
    with pytest.raises(RecipeError, match="not a valid regular expression"):
        regex_rule("bad", "a", "(unclosed")


def test_labeling_functions_load_from_a_file(tmp_path):
    path = tmp_path / "rules.py"
    path.write_text("from tuneforge.weak import ABSTAIN, labeling_function\n\n"
                    "@labeling_function()\ndef has_x(text):\n    return 'x' if 'x' in text else ABSTAIN\n\n"
                    "@labeling_function('named')\ndef other(text):\n    return -1\n")
    lfs = load_labeling_functions(path)
    assert [lf.name for lf in lfs] == ["has_x", "named"]
    assert apply_labeling_functions(lfs, ["axe", "b"], ["x"]).tolist() == [[0, -1], [-1, -1]]
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(RecipeError, match="defines no labeling function"):
        load_labeling_functions(tmp_path / "none.py")
    (tmp_path / "fails.py").write_text("raise ValueError('boom')\n")
    with pytest.raises(RecipeError, match="importing .*fails.py failed: ValueError: boom"):
        load_labeling_functions(tmp_path / "fails.py")


def test_a_broad_noisy_rule_does_not_outweigh_narrow_precise_ones():
    # Rule 0 covers 90% of rows at 61%; rules 1 and 2 cover 10% each at 95% and 92%. Most of rule 0's rows have
    # its vote alone, which says nothing about its accuracy: only rows with several votes may estimate it.
    matrix, truth = synthetic_votes(0, n=5000, accuracies=(0.61, 0.95, 0.92), coverages=(0.9, 0.1, 0.1))
    for one_coin in (True, False):
        model = DawidSkene(3, one_coin=one_coin).fit(matrix)
        estimated = model.accuracies(matrix)
        assert estimated[0] < 0.7 and estimated[1] > 0.8 and estimated[2] > 0.7, estimated
        several = (matrix >= 0).sum(1) > 1
        labels, mv = model.predict(matrix), majority_vote(matrix, 3)
        assert (labels.hard[several] == truth[several]).mean() > (mv.hard[several] == truth[several]).mean() + 0.05


def test_keywords_with_punctuation_and_numeric_abstains():
    lf = keyword_rule("lang", "code", ["c++", "$"])
    assert apply_labeling_functions([lf], ["I write c++ daily", "costs $ 5", "c+"], ["code"]).tolist() == \
        [[0], [0], [-1]]

    @labeling_function()
    def numpy_abstain(text):
        return np.float64(-1.0)

    assert apply_labeling_functions([numpy_abstain], ["x"], ["-1", "a"]).tolist() == [[-1]]
