"""The recipe schema: five independent choices (model, task, data, method, training) plus output.

Typed with pydantic; every problem is reported at once with the user's value and a fix, and unknown
keys get the nearest valid key suggested.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError
from .tasks import TASKS, owned_keys
from .tasks.preference import REFERENCE_FREE  # noqa: F401  (the reference-free losses, for callers)


def _epoch_or_steps(v):
    if isinstance(v, int) and v <= 0:
        raise ValueError(f"must be 'epoch' or a positive number of steps, got {v}")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    name: str = Field("minilm-l6", description="alias of a packaged model (minilm-l6, mpnet-base, efficientnet-lite0) "
                      "or a local Hugging Face folder")
    max_length: int = Field(128, gt=0, description="tokens per text (or text pair); longer inputs are truncated")
    image_size: Optional[int] = Field(None, ge=16, description="images: side of the square input (default: the model's "
                                      "own, 224 for efficientnet-lite0); smaller is faster")
    pretrained: bool = Field(True, description="start from the pre-trained weights; false: the same architecture "
                             "randomly initialized (to measure what pre-training buys)")
    trust_remote_code: bool = Field(False, description="run code shipped inside the model folder (off: never by default)")
    quantization: Optional[Literal["4bit", "8bit"]] = Field(None, description="QLoRA: load the frozen base in 4-bit "
                                                            "NF4 (double quantization, bf16 compute) or 8-bit with "
                                                            "bitsandbytes; adapter methods only")
    attn_implementation: str = Field("auto", description="attention kernel for transformers: auto (FlashAttention-2 on a "
                                     "CUDA GPU in bf16/fp16 when flash-attn is installed, else transformers' choice: "
                                     "sdpa where the model has it), eager, sdpa, flash_attention_2, flex_attention, ...")
    keep_layers: Optional[list[int]] = Field(None, description="a smaller student: keep only these transformer blocks "
                                             "(0-based, in order) of the loaded model, e.g. [0, 2, 4]")
    keep_every: Optional[int] = Field(None, ge=2, description="a smaller student, DistilBERT-style: keep one block in "
                                      "every k (blocks 0, k, 2k, ...) of the loaded model")

    @field_validator("keep_layers")
    @classmethod
    def _kept(cls, v):
        if v is not None and (not v or any(i < 0 for i in v) or v != sorted(set(v))):
            raise ValueError(f"expected block indices in increasing order without repeats, at least one, got {v}")
        return v

    @model_validator(mode="after")
    def _one_way_to_shrink(self):
        if self.keep_layers is not None and self.keep_every is not None:
            raise ValueError("give model.keep_layers or model.keep_every, not both")
        return self


TaskType = Literal[tuple(TASKS)]  # type: ignore[valid-type]  (the registry's names)
# Each loss's usual strength: DPO and IPO (Rafailov et al., Azar et al.) 0.1; SimPO's reward scale 2.0 (Meng et
# al.); ORPO's weight of the odds-ratio term 0.1 (Hong et al.).
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "orpo": 0.1, "grpo": 0.04}  # grpo: KL weight (Shao et al.)


class TaskSpec(_Section):
    type: TaskType = "classification"
    threshold: float = Field(0.5, gt=0, lt=1, description="multi-label: probability above which a label is predicted")
    sample_prompts: list[str] = Field(default_factory=list, description="causal-lm: prompts answered (greedily) before "
                                      "training and at each evaluation, saved in RUN_DIR/samples.jsonl")
    max_new_tokens: int = Field(64, gt=0, description="causal-lm, preference: length limit of those sample replies; "
                                "grpo: also of the completions sampled in training")
    # Preference tuning (task.type: preference)
    loss: Literal["dpo", "ipo", "simpo", "orpo"] = Field(
        "dpo", description="preference: dpo (sigmoid), ipo, or the reference-free simpo and orpo")
    beta: Optional[float] = Field(None, ge=0, description="preference: strength (dpo/ipo: beta, default 0.1; simpo: reward "
                                  "scale, default 2.0; orpo: weight of the odds-ratio term, default 0.1); grpo: weight of "
                                  "the KL penalty towards the reference, default 0.04 (0: no reference needed)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="preference, dpo: assumed fraction of flipped pairs "
                                   "(conservative DPO)")
    gamma: float = Field(0.5, ge=0, description="preference, simpo: target reward margin")
    reference: Literal["auto", "copy", "precomputed", "none"] = Field(
        "auto", description="preference, grpo: the reference policy. auto: adapters use the network with the adapter "
        "disabled (no second copy), other methods a frozen copy (dpo/ipo, grpo with beta > 0) or none (simpo/orpo); "
        "copy: a frozen copy (whole-network methods); precomputed (dpo/ipo): its log-probs computed once before "
        "training, no copy kept; none: no reference (the KL estimate is then not reported)")
    disable_dropout: bool = Field(True, description="preference, reward-model, grpo: turn dropout off, so the policy "
                                  "and its reference agree at the start and rewards are not noise")
    # GRPO (task.type: grpo)
    reward: Optional[str] = Field(None, description="grpo: the reward, a Python function 'file.py:name' or "
                                  "'module:name' called as fn(prompts, completions, **other_columns) -> numbers, or a "
                                  "reward-model run directory")
    num_generations: int = Field(4, ge=2, description="grpo: completions sampled per prompt (the group)")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature of those completions")
    # Token classification and question answering
    label_all_tokens: bool = Field(False, description="token-classification: every sub-token of a word carries its "
                                   "tag in the loss (B- turned into I- after the first); default: the first only")
    stride: Optional[int] = Field(None, ge=0, description="token-classification, question-answering: tokens shared by "
                                  "consecutive windows of an input longer than model.max_length (default: 32 for "
                                  "tagging, 128 for question answering)")
    n_best: int = Field(20, gt=0, description="question-answering: start and end candidates searched per window")
    max_answer_length: int = Field(30, gt=0, description="question-answering: longest answer, in tokens")
    max_question_length: int = Field(64, gt=0, description="question-answering: questions are cut to this many tokens")
    # Continued pre-training (task.type: masked-lm)
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: share of tokens chosen for prediction "
                                   "(80% of them become the mask token, 10% a random token, 10% stay as they are)")

    @property
    def preference_beta(self) -> float:
        if self.beta is not None:
            return self.beta
        return DEFAULT_BETA["grpo" if self.type == "grpo" else self.loss]


class AugmentSpec(_Section):
    enabled: bool = Field(True, description="augment training images (never validation or test)")
    crop_scale: tuple[float, float] = Field((0.25, 1.0), description="random resized crop: range of the area fraction kept")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="random resized crop: range of aspect ratios")
    hflip: bool = Field(True, description="flip horizontally with probability 0.5")

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _range(cls, v):
        if not (0 < v[0] <= v[1]):
            raise ValueError(f"expected [low, high] with 0 < low <= high, got {list(v)}")
        return v

    @field_validator("crop_scale")
    @classmethod
    def _fraction(cls, v):
        if v[1] > 1:
            raise ValueError(f"an area fraction is at most 1, got {list(v)}")
        return v


class DataSpec(_Section):
    dataset: Optional[Literal["rotten-tomatoes", "fashion-mnist", "wnut-16", "squad"]] = Field(
        None, description="a packaged dataset instead of files: rotten-tomatoes (sentiment), fashion-mnist (images), "
        "wnut-16 (tweets tagged for 10 entity types), squad (SQuAD v1.1 questions)")
    train: Optional[str] = None
    validation: Optional[str] = None
    test: Optional[str] = None
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="carved from train (stratified) when no validation file")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="carved from train (stratified) when no test file")
    split_seed: int = 42
    text_column: str = Field("text", description="the text column (causal-lm: plain text for language modelling)")
    prompt_column: str = Field("prompt", description="causal-lm: the prompt of prompt/completion rows")
    completion_column: str = Field("completion", description="causal-lm: the completion (what the model learns to write)")
    messages_column: str = Field("messages", description="causal-lm: chat rows, a list of {role, content}")
    chosen_column: str = Field("chosen", description="preference, reward-model: the preferred response (text, or "
                               "chat messages)")
    rejected_column: str = Field("rejected", description="preference, reward-model: the other response")
    drop_invalid_pairs: bool = Field(False, description="preference, reward-model: skip (and report) pairs whose "
                                     "responses are empty or identical, instead of stopping with an error")
    train_on: Literal["assistant", "last", "all"] = Field(
        "assistant", description="causal-lm: which tokens have loss: the completion / every assistant turn (assistant), "
        "the final assistant turn (last), or every token (all)")
    chat_template: bool = Field(True, description="causal-lm: render prompt/completion rows with the tokenizer's chat "
                                "template when it has one")
    packing: bool = Field(False, description="causal-lm: pack short examples into rows of model.max_length tokens, "
                          "attention kept within each example")
    image_column: str = Field("image", description="images in a table: the column of image paths (relative to the table's folder)")
    text_pair_column: Optional[str] = None
    tokens_column: str = Field("tokens", description="token-classification, rows of a table: the list of words")
    tags_column: str = Field("tags", description="token-classification, rows of a table: the list of tags, one per "
                             "word")
    question_column: str = Field("question", description="question-answering: the question")
    context_column: str = Field("context", description="question-answering: the text the answer is a span of")
    answer_column: str = Field("answer", description="question-answering: the answer's text (or Hugging Face's "
                               "`answers` dict of texts and starts)")
    answer_start_column: str = Field("answer_start", description="question-answering: the answer's first character "
                                     "in the context")
    id_column: str = Field("id", description="question-answering: the question's id (default: its row number)")
    allow_unanswerable: bool = Field(False, description="question-answering: questions without an answer in their "
                                     "context (SQuAD 2.0) are data, not errors; the model may then answer nothing")
    label_column: str = "label"
    label_separator: str = Field(",", description="multi-label labels given as one string are split on this")
    labels: Optional[list[Union[str, int]]] = Field(None, description="label names in id order; default: sorted labels of train")

    @field_validator("labels")
    @classmethod
    def _names(cls, v):
        return None if v is None else [str(x) for x in v]
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "npz", "idx", "conll"] = "auto"
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="images: train-only augmentation")
    limit_train: Optional[int] = Field(None, gt=0, description="use only the first N training rows (after splitting)")
    limit_eval: Optional[int] = Field(None, gt=0, description="use only the first N validation and test rows (after "
                                      "splitting): quicker evaluations on a large data set")

    @model_validator(mode="after")
    def _one_source(self):
        if self.dataset is None and self.train is None:
            raise ValueError("give data.train (a file) or data.dataset (a packaged dataset, e.g. rotten-tomatoes)")
        if self.dataset is not None and self.train is not None:
            raise ValueError(f"give data.train ({self.train!r}) or data.dataset ({self.dataset!r}), not both")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.validation_fraction + data.test_fraction leave under 10% for training; lower them")
        return self


MethodName = Literal["full", "head", "freeze", "gradual", "lora", "dora", "ia3", "prefix", "prompt", "bottleneck"]
ADAPTER_METHODS = ("lora", "dora", "ia3", "prefix", "prompt", "bottleneck")

# Adapters train few, freshly initialized weights and need a larger step than full fine-tuning; these are the
# usual rates from each method's paper and PEFT's examples. training.lr, when given, overrides them.
DEFAULT_LR = {"full": 5e-5, "head": 5e-5, "freeze": 5e-5, "gradual": 5e-5, "lora": 1e-3, "dora": 1e-3,
              "ia3": 3e-3, "prefix": 1e-2, "prompt": 3e-2, "bottleneck": 1e-3}

# Which methods read which option: an option changed from its default under another method is an error.
_OPTION_OWNERS = {
    "freeze_embeddings": ("freeze",), "freeze_layers": ("freeze",), "freeze_patterns": ("freeze",),
    "unfreeze_every": ("gradual",),
    "r": ("lora", "dora"), "alpha": ("lora", "dora"), "dropout": ("lora", "dora", "bottleneck"),
    "target_modules": ("lora", "dora", "ia3", "bottleneck"), "feedforward_modules": ("ia3",),
    "num_virtual_tokens": ("prefix", "prompt"), "prefix_projection": ("prefix",),
    "bottleneck_size": ("bottleneck",), "placement": ("bottleneck",), "non_linearity": ("bottleneck",),
    "layer_lr_decay": ("full", "freeze", "gradual"), "group_lr": ("full", "head", "freeze", "gradual"),
}


class MethodSpec(_Section):
    name: MethodName = Field("full", description="full | head (head only) | freeze (embeddings / first N layers / patterns) | "
                             "gradual (top-down unfreezing) | lora | dora | ia3 | prefix | prompt | bottleneck (adapters: "
                             "the pre-trained weights stay frozen)")
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="freeze the first N transformer blocks (with method freeze)")
    freeze_patterns: list[str] = Field(default_factory=list, description="glob patterns of parameter names to freeze")
    unfreeze_every: Union[Literal["epoch"], int] = Field("epoch", description="gradual: unfreeze one more group every epoch or every N optimizer steps")
    layer_lr_decay: Optional[float] = Field(None, gt=0, le=1, description="layer-wise LR decay: group k below the head gets lr * decay**k")
    group_lr: dict[str, float] = Field(default_factory=dict, description="explicit learning rate per layer group (embeddings, layer.0, ..., head)")
    # Adapter options
    r: int = Field(8, gt=0, description="lora/dora: rank of the update")
    alpha: float = Field(16.0, gt=0, description="lora/dora: scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.1, ge=0, lt=1, description="lora/dora: dropout on the adapter's input; bottleneck: inside the adapter")
    target_modules: Union[Literal["auto"], list[str], str] = Field(
        "auto", description="lora/dora/ia3/bottleneck: 'auto' (found from the architecture), a list of module-name "
        "suffixes (e.g. [query, value]) or one regular expression matched against full module names")
    feedforward_modules: Union[Literal["auto"], list[str], str] = Field(
        "auto", description="ia3: which targets are feed-forward layers (scaled on their input); 'auto' = the block's output projection")
    num_virtual_tokens: int = Field(20, gt=0, description="prefix/prompt: number of virtual tokens")
    prefix_projection: bool = Field(False, description="prefix: reparameterize the prefix through a two-layer MLP")
    bottleneck_size: int = Field(64, gt=0, description="bottleneck: width of the adapter's bottleneck")
    placement: Literal["houlsby", "pfeiffer"] = Field("houlsby", description="bottleneck: after attention and feed-forward (houlsby) or after feed-forward only (pfeiffer)")
    non_linearity: Literal["relu", "gelu", "tanh", "swish"] = Field("relu", description="bottleneck: activation between down and up projection")

    _every = field_validator("unfreeze_every")(classmethod(lambda cls, v: _epoch_or_steps(v)))

    @property
    def is_adapter(self) -> bool:
        return self.name in ADAPTER_METHODS

    @model_validator(mode="after")
    def _consistent(self):
        misplaced = [k for k, owners in _OPTION_OWNERS.items()
                     if self.name not in owners and getattr(self, k) != type(self).model_fields[k].get_default(call_default_factory=True)]
        if misplaced:
            where = "; ".join(f"{k} is read by {'/'.join(_OPTION_OWNERS[k])}" for k in misplaced)
            common = [m for m in _OPTION_OWNERS[misplaced[0]] if all(m in _OPTION_OWNERS[k] for k in misplaced)]
            fix = f"set method.name: {common[0]}" if common else "change method.name"
            raise ValueError(f"method.name is {self.name!r}, which does not read {', '.join(misplaced)} ({where}); "
                             f"remove them or {fix}")
        if self.name == "freeze" and not (self.freeze_layers or self.freeze_embeddings or self.freeze_patterns):
            raise ValueError("method 'freeze' freezes nothing; set freeze_embeddings, freeze_layers or freeze_patterns")
        return self


class EarlyStoppingSpec(_Section):
    patience: int = Field(2, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


class TrainingSpec(_Section):
    epochs: int = Field(3, ge=1)
    max_steps: Optional[int] = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(32, gt=0, description="examples per forward pass")
    grad_accum: int = Field(1, gt=0, description="forward passes per optimizer step; the effective batch is batch_size * grad_accum")
    eval_batch_size: int = Field(64, gt=0)
    group_by_length: bool = Field(False, description="batch rows of similar length together (less padding, faster)")
    lr: Optional[float] = Field(None, gt=0, description="learning rate of what trains in the network (default: 5e-5 for "
                                "full/head/freeze/gradual; per adapter method: lora/dora 1e-3, ia3 3e-3, prefix 1e-2, "
                                "prompt 3e-2, bottleneck 1e-3)")
    head_lr: Optional[float] = Field(None, gt=0, description="learning rate of the new head (default: lr)")
    weight_decay: float = Field(0.01, ge=0, description="not applied to biases and norm weights")
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    warmup_steps: Optional[int] = Field(None, ge=0, description="overrides warmup_ratio")
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    eval_every: Union[Literal["epoch"], int] = "epoch"
    log_every: int = Field(10, gt=0)
    checkpoint_every: Optional[int] = Field(None, gt=0, description="also checkpoint every N optimizer steps (always at each epoch end)")
    keep_checkpoints: int = Field(1, ge=1)
    metric: Optional[str] = Field(None, description="validation metric that picks the best model (default: task's)")
    early_stopping: Optional[EarlyStoppingSpec] = None
    restore_best: bool = True
    seed: int = 42
    head_seed: Optional[int] = Field(None, description="seed of the new head's initialization (default: seed)")
    data_seed: Optional[int] = Field(None, description="seed of the data order (default: seed)")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps; under torchrun "
                        "each process takes the GPU of its local rank")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype; fp16 adds a gradient scaler")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="with several processes: ddp (a full copy of the "
                                                "model per process) or fsdp (FSDP2: weights, gradients and optimizer "
                                                "state sharded across processes, for models that do not fit one device)")
    collective_timeout: int = Field(60, gt=0, description="minutes a process waits for the others (e.g. while rank 0 "
                                    "saves a big model) before the run is ended")
    tf32: bool = Field(True, description="TF32 matmuls on GPUs that have them (Ampere and newer); false: exact fp32")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, "
                                         "about a third more time")
    threads: Optional[int] = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    progress: bool = True

    _every = field_validator("eval_every")(classmethod(lambda cls, v: _epoch_or_steps(v)))


class RuleSpec(_Section):
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


class SelfTrainingSpec(_Section):
    """COSINE (Yu et al., 2021) after the weak-label fine-tuning; defaults from the paper's released settings."""
    steps: int = Field(1000, gt=0, description="optimizer steps of self-training (the paper's T2)")
    update_every: int = Field(50, gt=0, description="steps between refreshes of the pseudo-labels by the current "
                              "model, on every row (T3)")
    threshold: float = Field(0.6, ge=0, lt=1, description="rows whose pseudo-label confidence 1 - H/log C is at most "
                             "this are left out of the step (xi)")
    power: float = Field(2.0, gt=0, description="sharpening exponent of the soft pseudo-labels")
    contrastive_weight: float = Field(1.0, ge=0, description="weight of the contrastive regularizer on encoder "
                                      "features (lambda_1; 0 turns it off)")
    margin: float = Field(1.0, gt=0, description="contrastive margin gamma: rows of different pseudo-labels are pushed "
                          "at least this far apart (scaled squared Euclidean distance)")
    confidence_weight: float = Field(0.1, ge=0, description="weight of the confidence regularizer KL(uniform || "
                                     "prediction) (lambda_2)")
    lr: Optional[float] = Field(None, gt=0, description="learning rate of self-training (default: the run's)")


class WeakSpec(_Section):
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


class DistillSpec(_Section):
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


class AdaptSpec(_Section):
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
    lr: float = Field(5e-5, gt=0)
    batch_size: Optional[int] = Field(None, gt=0, description="default: training.batch_size")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked-lm: share of tokens chosen for prediction "
                                   "(of which 80% become [MASK], 10% a random token, 10% stay)")

    @field_validator("data", mode="before")
    @classmethod
    def _listed(cls, v):
        return [v] if isinstance(v, str) else v


class OutputSpec(_Section):
    dir: str = "runs/run"


class Recipe(_Section):
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    data: DataSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    weak: Optional[WeakSpec] = Field(None, description="weak supervision: labels from rules or a weak-label column, "
                                     "and optional COSINE self-training")
    distill: Optional[DistillSpec] = Field(None, description="knowledge distillation from a teacher into this "
                                           "recipe's model (the student)")
    adapt: Optional[AdaptSpec] = Field(None, description="domain adaptation: continued pre-training on unlabeled "
                                       "in-domain text before the task's fine-tuning")
    output: OutputSpec = Field(default_factory=OutputSpec)

    @property
    def task_kind(self):
        """The task this recipe trains (tasks/): what it reads, loads and checks."""
        return TASKS[self.task.type]

    @model_validator(mode="after")
    def _task_and_data(self):
        task = self.task_kind
        task.check_recipe(self)  # the task's own checks (its data columns, its losses, the methods it allows)
        from .assets import DATASET_TASK
        made_for, holds = DATASET_TASK.get(self.data.dataset, (None, None))
        if made_for is not None and made_for != self.task.type:
            raise ValueError(f"data.dataset {self.data.dataset!r} is {holds}; set task.type: {made_for} "
                             f"(it is {self.task.type!r})")
        if not task.images and self.model.image_size is not None:
            raise ValueError(f"model.image_size is for image tasks; task.type is {self.task.type!r}")
        if not self.model.pretrained and self.method.name != "full":
            raise ValueError(f"model.pretrained is false (random initialization) and method.name is "
                             f"{self.method.name!r}: only full training makes sense from random weights (the frozen "
                             "parts would stay random); set method.name: full")
        if self.method.is_adapter and not task.trained_by_adapters:
            raise ValueError(f"task {self.task.type} trains the network a task will start from; method "
                             f"{self.method.name!r} leaves it unchanged beside an adapter. Use full or a freezing method")
        return self

    @model_validator(mode="after")
    def _quantized_base(self):
        """A quantized base cannot learn: only an adapter beside it can (PEFT's k-bit training)."""
        q = self.model.quantization
        if q is None:
            return self
        if self.method.name not in ("lora", "dora", "ia3", "prefix", "prompt"):
            raise ValueError(f"model.quantization {q!r} freezes the base in {q} weights, which cannot be trained; "
                             f"method.name is {self.method.name!r}: use lora, dora, ia3, prefix or prompt, or drop "
                             "model.quantization")
        if not self.task_kind.quantizable:
            raise ValueError(f"model.quantization is for transformers text models; task.type is {self.task.type}")
        return self

    @model_validator(mode="after")
    def _keys_of_the_task(self):
        """Options set for a task that does not read them are errors, not silently ignored."""
        kind = self.task.type
        by_owners: dict[tuple, list[str]] = {}
        for key, owners in owned_keys(TASKS).items():
            if kind not in owners and _changed(self, key):
                by_owners.setdefault(owners, []).append(key)
        for owners, keys in by_owners.items():
            names = " and ".join([", ".join(owners[:-1]), owners[-1]]) if len(owners) > 1 else owners[0]
            raise ValueError(f"{', '.join(keys)}: for {names} tasks only; task.type is {kind!r}")
        return self

    @model_validator(mode="after")
    def _stages(self):
        """Which stages run with which task, and with each other."""
        task, kind = self.task_kind, self.task.type
        if self.weak is not None:
            if not task.weakly_supervised:
                raise ValueError(f"weak supervision is for task.type {_names(lambda t: t.weakly_supervised)}; it is "
                                 f"{kind!r}")
            if self.data.dataset:
                raise ValueError(f"weak supervision reads data.train (rows to label); data.dataset {self.data.dataset!r} "
                                 "has gold labels already")
            if self.weak.self_training and self.method.name in ("prefix", "prompt"):
                raise ValueError(f"weak.self_training reads the encoder's features at the first token, which method "
                                 f"{self.method.name!r} shifts by its virtual tokens; use full, a freezing method, lora, "
                                 "dora, ia3 or bottleneck")
        d = self.distill
        if d is not None:
            if not task.distillable:
                raise ValueError(f"distill: for task.type {_names(lambda t: t.distillable, ', ')}; it is {kind!r}")
            if self.weak is not None:
                raise ValueError("distill and weak in one recipe: train on the weak labels first, then distill that "
                                 "run (distill.teacher: its run directory) in a second recipe")
            if d.cache and d.hidden_weight:
                raise ValueError("distill.cache stores the teacher's outputs, not its hidden states, which "
                                 "distill.hidden_weight needs at every step; set cache: false or hidden_weight: 0")
            if d.cache and task.generative:
                raise ValueError("distill.cache: a causal LM teacher's outputs are a vocabulary-wide distribution per "
                                 "token, too large to store; set cache: false (the teacher then runs beside the student)")
            if d.unlabeled and not task.transfer_set:
                raise ValueError(f"distill.unlabeled: a transfer set of single texts, for task.type classification; "
                                 f"it is {kind!r}")
            if d.hidden_weight and self.method.name in ("prefix", "prompt"):
                raise ValueError(f"distill.hidden_weight matches hidden states position by position, which method "
                                 f"{self.method.name!r} shifts by its virtual tokens; use another method")
        if self.adapt is not None:
            if not task.adaptable:
                raise ValueError(f"adapt: continued pre-training before a task's fine-tuning; task.type {kind!r} is "
                                 "not such a task (to only adapt, use task.type masked-lm or causal-lm)")
            if not self.model.pretrained:
                raise ValueError("adapt continues pre-training; model.pretrained is false")
            if self.weak is not None:
                raise ValueError("adapt and weak in one recipe: adapt first (a task.type masked-lm run on the "
                                 "training file's text), then name that run as model.name in the weak recipe")
        return self

    @property
    def lr(self) -> float:
        """The learning rate in effect: training.lr, or the method's default."""
        return self.training.lr if self.training.lr is not None else DEFAULT_LR[self.method.name]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _changed(recipe: Recipe, key: str) -> bool:
    """Whether recipe key 'section.name' differs from its default."""
    section, name = key.split(".")
    part = getattr(recipe, section)
    return getattr(part, name) != type(part).model_fields[name].get_default(call_default_factory=True)


def _names(wanted, sep: str = " and ") -> str:
    """The registry's task names for which `wanted(task)` holds."""
    return sep.join(n for n, t in TASKS.items() if wanted(t))


# ---------------------------------------------------------------- loading, overrides, error messages

def _valid_keys(model_cls: type[BaseModel]) -> list[str]:
    return list(model_cls.model_fields)


def _section_class(loc: tuple) -> Optional[type[BaseModel]]:
    cls: Any = Recipe
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return None
        cls = sub
    return cls


def _format_error(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "str"))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _section_class(loc[:-1])
        valid = _valid_keys(parent) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
        return f"{key}: unknown key{hint} (valid keys here: {', '.join(valid)})"
    if err["type"] == "missing":
        return f"{key}: required but missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        return f"{key}: {msg} (got {err['input']!r})"
    return f"{key}: {msg}"


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError([f"the recipe must be a mapping of sections (model, task, data, method, training, output), got {type(data).__name__}"], source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError([_format_error(err) for err in e.errors()], source) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.lr=3e-5` -> (['training', 'lr'], 3e-5). The value is read as YAML."""
    if "=" not in text:
        raise RecipeError([f"override {text!r}: expected key=value, e.g. training.lr=3e-5"], "command line")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError([f"override {text!r}: empty key"], "command line")
    parsed = yaml.safe_load(value) if value.strip() else None
    return path, _floatify(parsed)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return data


def _floatify(node):
    """YAML 1.1 leaves `5e-5` (no dot) as a string; turn such strings into floats."""
    if isinstance(node, dict):
        return {k: _floatify(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floatify(v) for v in node]
    if isinstance(node, str):
        if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", node.strip()):
            return float(node)
    return node


def load_recipe(source: Union[str, Path, dict, Recipe], overrides: Optional[list[str]] = None) -> Recipe:
    """Read a recipe from a YAML file, a dict or a Recipe, apply `key=value` overrides, validate."""
    overrides = list(overrides or [])
    if isinstance(source, Recipe):
        if not overrides:
            return source
        data, name = source.model_dump(mode="json"), "recipe"
    elif isinstance(source, dict):
        data, name = source, "recipe"
    else:
        path = Path(source)
        if not path.is_file():
            raise RecipeError([f"no recipe file at {str(path)!r}; check the path"], str(path))
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError([f"not valid YAML: {e}"], str(path)) from None
        name = str(path)
        # Relative data paths in a recipe file are relative to the recipe's folder.
        data = _resolve_data_paths(data, path.parent)
    data = apply_overrides(_floatify(data), overrides)
    return parse_recipe(data, name)


def _relative_to(base: Path, value: str) -> str:
    """A path written in a recipe file, resolved against the recipe's folder (unless it only exists as given)."""
    if Path(value).is_absolute():
        return value
    candidate = base / value
    return str(candidate.resolve()) if candidate.exists() or not Path(value).exists() else value


def _resolve_data_paths(data: Any, base: Path) -> Any:
    """Data files, and a grpo reward's file or run directory, relative to the recipe's folder; stored absolute in
    the run's recipe.yaml, so evaluate and resume work from any folder."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(data.get("data"), dict):
        section = dict(data["data"])
        for key in ("train", "validation", "test"):
            if isinstance(section.get(key), str):
                section[key] = _relative_to(base, section[key])
        out["data"] = section
    weak = data.get("weak")
    if isinstance(weak, dict):
        out["weak"] = {**weak, **{k: _relative_to(base, weak[k]) for k in ("labeling_functions", "unlabeled")
                                  if isinstance(weak.get(k), str)}}
    distill = data.get("distill")
    if isinstance(distill, dict) and isinstance(distill.get("teacher"), str):
        from .assets import MODEL_ALIASES
        teacher = distill["teacher"]  # a packaged model's alias is a name, not a path
        out["distill"] = {**distill, "teacher": teacher if teacher in MODEL_ALIASES else _relative_to(base, teacher)}
    if isinstance(distill, dict) and distill.get("unlabeled"):
        from .assets import UNLABELED_DATASETS
        files = distill["unlabeled"] if isinstance(distill["unlabeled"], list) else [distill["unlabeled"]]
        out["distill"] = {**out.get("distill", distill), "unlabeled": [
            f if f in UNLABELED_DATASETS or not isinstance(f, str) else _relative_to(base, f) for f in files]}
    adapt = data.get("adapt")
    if isinstance(adapt, dict) and adapt.get("data") is not None:
        files = adapt["data"] if isinstance(adapt["data"], list) else [adapt["data"]]
        out["adapt"] = {**adapt, "data": [f if f == "task" or not isinstance(f, str) else _relative_to(base, f)
                                          for f in files]}
    task = data.get("task")
    if isinstance(task, dict) and isinstance(task.get("reward"), str):
        where, sep, name = task["reward"].rpartition(":")
        if sep and where.endswith(".py"):
            out["task"] = {**task, "reward": f"{_relative_to(base, where)}:{name}"}
        elif not sep:
            out["task"] = {**task, "reward": _relative_to(base, task["reward"])}
    return out
