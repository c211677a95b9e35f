"""The recipe's sections of the optional stages: weak supervision, distillation, domain adaptation."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .sections import Section
from .values import LearningRate

class RuleSpec(Section):
    name: str = Field(description="the rule's name, shown in the analysis")
    label: str = Field(description="the label it votes when it fires")
    keywords: list[str] = Field(default_factory=list, description="fires when any of these words or phrases occurs "
                                "as whole words")
    regex: Optional[str] = Field(None, description="fires when this regular expression matches anywhere (re.search)")
    case_sensitive: bool = False

    @field_validator("label", mode="before")
    @classmethod
    def _label_name(cls, v):
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one_kind(self):
        if bool(self.keywords) == bool(self.regex):
            raise ValueError(f"rule {self.name!r}: give keywords (a list) or regex (a pattern), exactly one")
        return self


class SelfTrainingSpec(Section):
    """COSINE (Yu et al., 2021) after the weak-label fine-tuning; defaults from the authors' released code and
    settings (github.com/yueyu1030/COSINE), the paper's wording kept as options where the two differ."""
    steps: int = Field(2500, gt=0, description="optimizer steps of self-training (the paper's T2; the authors' script: "
                       "2500)")
    update_every: int = Field(250, gt=0, description="steps between refreshes of the pseudo-labels by the current "
                              "model, on every row (T3; the authors' script: 250)")
    threshold: float = Field(0.6, ge=0, lt=1, description="rows whose confidence 1 - H/log C is at most this are left "
                             "out of the step (xi)")
    confidence_from: Literal["prediction", "pseudo_label"] = Field(
        "prediction", description="whose entropy the confidence is of: the teacher's prediction (the authors' code) or "
        "the sharpened pseudo-label (more confident: far more rows pass)")
    power: float = Field(2.0, gt=0, description="sharpening exponent of the soft pseudo-labels")
    balance: Literal["batch", "all"] = Field(
        "batch", description="over which rows the soft class frequencies that damp an over-predicted class are summed: "
        "each batch (the authors' code) or every row at the refresh")
    contrastive_weight: float = Field(1.0, ge=0, description="weight of the contrastive regularizer on encoder "
                                      "features (lambda_1; 0 turns it off)")
    margin: float = Field(1.0, gt=0, description="contrastive margin gamma: rows of different classes are pushed at "
                          "least this far apart")
    pairs: Literal["permutation", "all"] = Field(
        "permutation", description="contrastive pairs: each confident row with one other drawn at random (the authors' "
        "code) or every ordered pair of confident rows")
    distance: Literal["rms", "squared", "cosine"] = Field(
        "rms", description="contrastive distance between features: sqrt(||v_i - v_j||^2 / dim) (the authors' code's "
        "default), ||v_i - v_j||^2 / dim (the paper's formula) or 1 - cos(v_i, v_j) (the authors' AGNews script)")
    agreement: Literal["prediction", "pseudo_label"] = Field(
        "prediction", description="which class decides whether a pair is alike: the student's prediction (the "
        "authors' code) or the pseudo-label")
    confidence_weight: float = Field(0.1, ge=0, description="weight of the confidence regularizer KL(uniform || "
                                     "prediction) per row (lambda_2, the paper's; the authors' code sums over the C "
                                     "classes, C times stronger, which empties the confident set)")
    lr: Optional[LearningRate] = Field(None, description="learning rate of self-training (default: the run's)")
    warmup_steps: int = Field(0, ge=0, description="warm-up steps of self-training's fresh schedule (the authors: 0)")


class WeakSpec(Section):
    labeling_functions: Optional[str] = Field(None, description="a Python file whose @labeling_function rules label "
                                              "the training rows")
    rules: list[RuleSpec] = Field(default_factory=list, description="declared keyword / regex rules, applied with the "
                                  "labeling functions")
    label_model: Literal["majority", "one-coin", "dawid-skene"] = Field(
        "one-coin", description="turns the rules' votes into labels: majority vote; one-coin (Dawid-Skene EM with one "
        "accuracy per rule: for rules that each vote one class); dawid-skene (a full confusion matrix per source: for "
        "sources that vote many classes)")
    prior_accuracy: float = Field(0.7, gt=0, lt=1, description="one-coin, dawid-skene: how often a rule is assumed "
                                  "right before the data says otherwise (a rule that never overlaps another keeps it)")
    column: Optional[str] = Field(None, description="instead of rules: train's column of weak labels made elsewhere "
                                  "(a label, a list of class probabilities, or an abstain value)")
    abstain: list[str] = Field(default_factory=lambda: ["-1"], description="values of weak.column meaning 'no label' "
                               "(an empty cell always does)")
    gold_column: Optional[str] = Field(None, description="train's gold labels, if some exist: used only to measure the "
                                       "rules and the label model, never trained on")
    unlabeled: Optional[str] = Field(None, description="a file of further rows without labels (data.text_column), used "
                                     "by self-training only")
    soft: bool = Field(True, description="train on the label model's probabilities; false: on its most likely label")
    self_training: Optional[SelfTrainingSpec] = Field(None, description="COSINE self-training after fine-tuning on the "
                                                      "weak labels; omit for none")

    @field_validator("abstain", mode="before")
    @classmethod
    def _names(cls, v):
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_source(self):
        rules = bool(self.labeling_functions or self.rules)
        if rules == bool(self.column):
            raise ValueError("weak: give labeling_functions and/or rules (tuneforge labels the rows), or column (weak "
                             "labels already in the training file), one of the two")
        return self


class DistillSpec(Section):
    """Knowledge distillation (Hinton et al., 2015): loss = alpha * T^2 * KL(teacher_T || student_T)
    + (1 - alpha) * task loss [+ hidden_weight * hidden-state matching]."""
    teacher: str = Field(description="a finished tuneforge run directory, or a model folder / alias fine-tuned for the "
                         "same task (same label names; causal-lm: the same tokenizer)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term; 1 - alpha weighs the task "
                         "loss on the labels")
    temperature: float = Field(2.0, gt=0, description="softens both distributions; the term is scaled by T^2 so its "
                               "gradients keep their size as T changes")
    hidden_weight: float = Field(0.0, ge=0, description="weight of hidden-state matching (1 - cosine similarity between "
                                 "each student block's output and its teacher block's); needs equal widths")
    cache: Optional[bool] = Field(None, description="compute the teacher's outputs on the training rows once, before "
                                  "training, and reuse them (default: on for classification, off for causal-lm, whose "
                                  "outputs are a vocabulary per token)")
    report: bool = Field(True, description="after training, measure teacher and student on the test (else validation) "
                         "split: metric, parameters, inference examples/s")
    unlabeled: list[str] = Field(default_factory=list, description="a transfer set: files of unlabeled text "
                                 "(data.text_column), or rotten-tomatoes-unused, whose rows the student learns from "
                                 "the teacher alone (classification)")

    @field_validator("unlabeled", mode="before")
    @classmethod
    def _files(cls, v):
        return [v] if isinstance(v, str) else v

    def uses_cache(self, generative: bool) -> bool:
        """Whether the teacher's outputs are computed once (`generative`: the task's model is a causal LM)."""
        if self.cache is not None:
            return self.cache
        return not generative and self.hidden_weight == 0


class AdaptSpec(Section):
    """Continued pre-training before the task (DAPT / TAPT, Gururangan et al., 2020)."""
    objective: Literal["auto", "masked-lm", "causal-lm"] = Field(
        "auto", description="masked-lm for encoders, causal-lm for decoders (auto: by the model)")
    data: list[str] = Field(default_factory=lambda: ["task"], description="unlabeled text: files (data.text_column, "
                            "or adapt.text_column), and/or 'task' for the task's own training text (TAPT)")
    text_column: Optional[str] = Field(None, description="the text column of adapt.data files (default: "
                                       "data.text_column)")
    validation_fraction: float = Field(0.05, ge=0, lt=0.5, description="held out from the text to measure the "
                                       "adaptation's loss")
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, gt=0)
    lr: LearningRate = Field(5e-5)
    batch_size: Optional[int] = Field(None, gt=0, description="default: training.batch_size")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: share of tokens chosen for prediction "
                                   "(of which 80% become [MASK], 10% a random token, 10% stay)")

    @field_validator("data", mode="before")
    @classmethod
    def _listed(cls, v):
        return [v] if isinstance(v, str) else v
