"""Weak supervision: labeling functions, label models, their analysis, and COSINE self-training.

    from tuneforge.weak import ABSTAIN, labeling_function

    @labeling_function()
    def how_many(text):
        return "NUM" if text.lower().startswith("how many") else ABSTAIN
"""
from .api import analyze_weak, weak_labels as label_rows
from .analysis import Analysis, FunctionStats, analyze, label_accuracy
from .label_model import LABEL_MODELS, DawidSkene, WeakLabels, majority_vote, weak_labels
from .labeling import (ABSTAIN, ABSTAIN_ID, LabelingFunction, apply_labeling_functions, keyword_rule,
                       labeling_function, load_labeling_functions, regex_rule)

__all__ = ["ABSTAIN", "ABSTAIN_ID", "Analysis", "DawidSkene", "FunctionStats", "LABEL_MODELS", "LabelingFunction",
           "WeakLabels", "analyze", "apply_labeling_functions", "keyword_rule", "label_accuracy", "labeling_function",
           "load_labeling_functions", "majority_vote", "regex_rule", "weak_labels", "label_rows", "analyze_weak"]
