"""Classification of a text pair (NLI, paraphrase, question-answer match): both texts in one input, one class."""
from __future__ import annotations

from .classification import ClassificationTask


class PairClassificationTask(ClassificationTask):
    name = "pair-classification"
    weakly_supervised = False
    transfer_set = False

    def check_recipe(self, recipe) -> None:
        if not recipe.data.text_pair_column:
            raise ValueError("task 'pair-classification' needs data.text_pair_column (the second text's column)")
