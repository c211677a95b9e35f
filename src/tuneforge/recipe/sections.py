"""The recipe's model, task, data and output sections."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..tasks import TASKS
from .values import check_value

def epoch_or_steps(v):
    if isinstance(v, int) and v <= 0:
        raise ValueError(f"must be 'epoch' or a positive number of steps, got {v}")
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_value(cls, v, info: ValidationInfo):
        """Every key of every section: no yes/no value for a number, no infinite or NaN number (values.py)."""
        return check_value(info.field_name, cls.model_fields[info.field_name], v)


class ModelSpec(Section):
    name: str = Field("minilm-l6", description="the model: an alias of a packaged model (minilm-l6, mpnet-base, "
                      "smollm2-135m, efficientnet-lite0), a local Hugging Face folder, a Hugging Face Hub ID "
                      "(org/name, or org/name@revision; from the local Hugging Face cache when HF_HUB_OFFLINE=1), or "
                      "a GGUF file (or a folder holding exactly one), converted once into tuneforge's cache")
    revision: Optional[str] = Field(None, description="Hub IDs: the branch, tag or commit to load (default: main; "
                                    "org/name@revision says the same)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="the dtype the weights are loaded in: float32 (what training.precision's autocast "
        "expects of trained weights), bfloat16 or float16 (half the memory; best for a frozen base under an "
        "adapter), or auto (the checkpoint's own dtype)")
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

    @model_validator(mode="after")
    def _revision_in_name(self):
        """model.revision is folded into the name (org/name@revision), the one string every loader resolves."""
        if self.revision is None:
            return self
        repo, at, written = self.name.partition("@")
        if at and written != self.revision:
            raise ValueError(f"model.name {self.name!r} names revision {written!r} and model.revision says "
                             f"{self.revision!r}; give one")
        if not at:
            self.__dict__["name"] = f"{repo}@{self.revision}"  # not an assignment: that would validate again
        return self


TaskType = Literal[tuple(TASKS)]  # type: ignore[valid-type]  (the registry's names)


class TaskSpec(Section):
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
    standardize_targets: bool = Field(True, description="regression: train on (target - mean) / std of the training "
                                      "targets (a head without a bias: target / std); metrics, predictions and "
                                      "the saved model give the targets' own units")
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
        return TASKS[self.type].default_beta(self)


class AugmentSpec(Section):
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


class DataSpec(Section):
    dataset: Optional[str] = Field(
        None, description="the data by one name: a packaged dataset (rotten-tomatoes: sentiment, fashion-mnist: "
        "images, wnut-16: tweets tagged for 10 entity types, squad: SQuAD v1.1 questions), a folder written by "
        "datasets' save_to_disk, or a Hugging Face Hub dataset (org/name; offline, from the local Hugging Face "
        "cache). Anything but a packaged name is read as data.train, with its splits")
    dataset_config: Optional[str] = Field(None, description="Hub datasets: the configuration (subset) to load, e.g. "
                                          "sst2 of nyu-mll/glue (load_dataset's second argument)")
    train: Optional[str] = Field(None, description="the training data: a file (csv, tsv, json, jsonl, parquet, "
                                 "arrow), a folder written by datasets' save_to_disk, or a Hub dataset (org/name); "
                                 "a source of several splits also gives validation and test where it has them")
    validation: Optional[str] = Field(None, description="validation data, as data.train (default: data.train's "
                                      "validation split, else carved from train)")
    test: Optional[str] = Field(None, description="test data, as data.train (default: data.train's test split, if "
                                "any)")
    train_split: str = Field("train", description="save_to_disk DatasetDicts and Hub datasets: the split trained on")
    validation_split: Optional[str] = Field(None, description="save_to_disk DatasetDicts and Hub datasets: the split "
                                            "validated on (default: the first of validation, valid, dev, val there "
                                            "is)")
    test_split: Optional[str] = Field(None, description="save_to_disk DatasetDicts and Hub datasets: the split tested "
                                      "on (default: test, if there is one whose labels are not all -1)")
    skip_rows: int = Field(0, ge=0, description="CSV/TSV files: lines above the header to skip (notes or comments "
                           "that an export writes before the column names)")
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
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "arrow", "npz", "idx", "conll"] = Field(
        "auto", description="the data files' format (default: from each file's extension); save_to_disk folders and "
        "Hub datasets are read as what they are")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="images: train-only augmentation")
    limit_train: Optional[int] = Field(None, gt=0, description="use only the first N training rows (after splitting)")
    limit_eval: Optional[int] = Field(None, gt=0, description="use only the first N validation and test rows (after "
                                      "splitting): quicker evaluations on a large data set")

    @model_validator(mode="before")
    @classmethod
    def _named_source(cls, data):
        """A data.dataset that is no packaged name is a datasets source read as data.train: tasks keep their fixed
        columns and splits for the packaged names alone, and the recipe's column options apply to the rest."""
        if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
            return data
        from ..assets import DATASETS

        name = data["dataset"]
        if name in DATASETS:
            return data
        if data.get("train") is not None:
            raise ValueError(f"give data.train ({data['train']!r}) or data.dataset ({name!r}), not both")
        close = difflib.get_close_matches(name, list(DATASETS), n=1, cutoff=0.8)
        if close and "/" not in name and not Path(name).exists():
            raise ValueError(f"data.dataset {name!r} is no packaged dataset; did you mean {close[0]!r}? (packaged: "
                             f"{', '.join(DATASETS)}; or give a save_to_disk folder or a Hub name, org/name)")
        return {**data, "dataset": None, "train": name}

    @model_validator(mode="after")
    def _one_source(self):
        if self.dataset is None and self.train is None:
            raise ValueError("give data.train (a file, a save_to_disk folder or a Hub dataset) or data.dataset (a "
                             "packaged dataset, e.g. rotten-tomatoes)")
        if self.dataset is not None and self.train is not None:
            raise ValueError(f"give data.train ({self.train!r}) or data.dataset ({self.dataset!r}), not both")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.validation_fraction + data.test_fraction leave under 10% for training; lower them")
        return self


class OutputSpec(Section):
    dir: str = Field("runs/run", description="the run's folder. A relative output.dir is resolved against the "
                     "current directory when the command runs (unlike data paths, which are resolved against the "
                     "recipe file's folder); `tuneforge validate` prints the absolute folder it stands for")
