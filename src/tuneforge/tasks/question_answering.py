"""Extractive question answering: the answer is a span of the context. A long context is split into overlapping
windows (the question repeated in each); the model scores every token as the answer's start and end, the loss is
the mean of the two cross-entropies per window, and answers are decoded over all windows of a question (n-best
start and end search, a maximum answer length). Metrics: SQuAD's exact match and F1."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.dataset import LabelSpace
from ..data.qa_windows import decode_answers, encode_qa_examples
from ..data.squad import QAExample, read_qa_examples
from ..errors import DataError
from .base import Task
from .qa_metrics import QAMetrics

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_STRIDE = 128


@dataclass
class QuestionAnsweringTask(Task):
    n_best: int = 20
    max_answer_length: int = 30
    allow_unanswerable: bool = False

    name = "question-answering"
    problem_type = None
    default_metric = "f1"
    named_labels = False
    peft_task_type = "QUESTION_ANS"
    adaptable = True
    keys = ("data.question_column", "data.context_column", "data.answer_column", "data.answer_start_column",
            "data.id_column", "data.allow_unanswerable", "task.stride", "task.n_best", "task.max_answer_length",
            "task.max_question_length")

    def check_recipe(self, recipe) -> None:
        t = recipe.task
        if recipe.data.dataset not in (None, "squad"):
            raise ValueError(f"data.dataset {recipe.data.dataset!r} has no questions; give data.train (SQuAD JSON, or "
                             "rows with question, context, answer and answer_start columns)")
        room = recipe.model.max_length - t.max_question_length - 3  # [CLS] question [SEP] context [SEP]
        stride = DEFAULT_STRIDE if t.stride is None else t.stride
        if stride >= room:
            raise ValueError(f"task.stride {stride} leaves no new context per window: model.max_length "
                             f"{recipe.model.max_length} - task.max_question_length {t.max_question_length} - 3 special "
                             f"tokens is {room}; raise model.max_length (384 is usual) or lower task.stride")

    def configured(self, recipe) -> "QuestionAnsweringTask":
        t = recipe.task
        return QuestionAnsweringTask(n_best=t.n_best, max_answer_length=t.max_answer_length,
                                     allow_unanswerable=recipe.data.allow_unanswerable)

    # ------------------------------------------------------------ data

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        return read_qa_examples(path, spec.format if fmt is None else fmt, spec.question_column, spec.context_column,
                                spec.answer_column, spec.answer_start_column, spec.id_column, spec.allow_unanswerable,
                                with_answers=with_labels)

    def encode(self, recipe, tokenizer, examples: Sequence[QAExample], space: LabelSpace):
        t = recipe.task
        return encode_qa_examples(tokenizer, examples, recipe.model.max_length,
                                  DEFAULT_STRIDE if t.stride is None else t.stride, t.max_question_length)

    # ------------------------------------------------------------ model

    def num_outputs(self, num_labels: int) -> int:
        return 2  # start and end

    def load_model(self, recipe, space: LabelSpace, head_seed: int, load_kwargs=None):
        from transformers import AutoModelForQuestionAnswering

        from ..models.loading import load_for_classification

        m = recipe.model
        return load_for_classification(m.name, 2, self.problem_type, None, head_seed, m.trust_remote_code,
                                       m.pretrained, load_kwargs, auto=AutoModelForQuestionAnswering,
                                       head="question-answering")

    def model_skeleton(self, recipe, space: LabelSpace, tokenizer, config):
        from transformers import AutoModelForQuestionAnswering

        config.num_labels = 2
        with torch.device("meta"):
            return AutoModelForQuestionAnswering.from_config(config, trust_remote_code=recipe.model.trust_remote_code)

    def open_saved(self, model_dir):
        from transformers import AutoModelForQuestionAnswering

        from ..models.loading import load_run_model

        model, tokenizer = load_run_model(model_dir, AutoModelForQuestionAnswering)
        return model, tokenizer, []

    # ------------------------------------------------------------ loss and metrics

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        start, end = span_logits(model, batch)
        outputs = {"start_logits": start, "end_logits": end, "window_ids": batch["window_ids"]}
        if "start_positions" not in batch:
            return start.new_zeros(()), outputs
        loss = (F.cross_entropy(start.float(), batch["start_positions"], reduction="sum")
                + F.cross_entropy(end.float(), batch["end_positions"], reduction="sum")) / 2
        return loss, outputs

    def make_metrics(self, num_labels: int = 0, threshold: float = 0.5):
        raise TypeError("question-answering metrics decode answers from the split's windows: use metrics_for(split, ...)")

    def metrics_for(self, split, num_labels: int = 0, threshold: float = 0.5):
        return QAMetrics(split, self.n_best, self.max_answer_length, self.allow_unanswerable)

    def metric_names(self, space: LabelSpace, threshold: float = 0.5) -> list[str]:
        return ["exact_match", "f1", "examples"]

    # ------------------------------------------------------------ use

    def given_examples(self, recipe, texts, text_pairs) -> list:
        """`texts`: questions; `text_pairs`: their contexts (`--question ... --context ...`)."""
        if text_pairs is None or len(text_pairs) != len(texts):
            raise DataError([f"{len(texts)} question(s) and {len(text_pairs or [])} context(s); give one --context "
                             "per --question"])
        return [QAExample(question=q, context=c, answers=None, id=str(i + 1), source=f"question {i + 1}")
                for i, (q, c) in enumerate(zip(texts, text_pairs))]

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        """Every window's start and end logits, concatenated: what a merged model must reproduce."""
        starts, ends = window_logits(model, split, batch_size, pad_id, runtime)
        return torch.cat([torch.stack([s, e], -1) for s, e in zip(starts, ends)]) if starts else torch.empty(0, 2)

    def predictions(self, model, split, examples, space: LabelSpace, recipe, batch_size: int, pad_id: int,
                    runtime) -> list[dict]:
        starts, ends = window_logits(model, split, batch_size, pad_id, runtime)
        answers = decode_answers(split, starts, ends, self.n_best, self.max_answer_length, self.allow_unanswerable)
        return [{"id": ex.id, "question": ex.question, "answer": a["answer"], "start": a["start"], "end": a["end"],
                 "score": None if a["score"] is None else round(float(a["score"]), 6)}
                for ex, a in zip(examples, answers)]


def span_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) logits of a batch's windows, (B, T) each; prompt tuning's virtual tokens (first) left out."""
    out = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    width = batch["input_ids"].shape[1]
    return out.start_logits[:, -width:], out.end_logits[:, -width:]


@torch.no_grad()
def window_logits(model, split, batch_size: int, pad_id: int, runtime) -> tuple[list, list]:
    """Every window's start and end logits (its own length), in split order, on the CPU."""
    from ..engine.evaluate import length_batches

    model.eval()
    starts, ends = [None] * len(split), [None] * len(split)
    lengths = split.lengths
    for indices in length_batches(split, batch_size):
        batch = runtime.to_device(split.batch(indices, pad_id))
        with runtime.autocast():
            start, end = span_logits(model, batch)
        start, end = start.float().cpu(), end.float().cpu()
        for j, w in enumerate(indices):
            starts[w], ends[w] = start[j, :lengths[w]], end[j, :lengths[w]]
    return starts, ends
