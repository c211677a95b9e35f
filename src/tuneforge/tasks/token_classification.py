"""Token classification (named-entity tagging): one tag per word, BIO or BIOES; the loss is cross-entropy over the
labelled sub-tokens, the metrics entity-level precision, recall and F1 (as seqeval computes them) and token
accuracy. Long sentences are split into overlapping windows, never cut; each word is scored in one window."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.dataset import LabelSpace
from ..data.tokens import (TokenExample, encode_token_examples, entity_spans, read_token_examples, tag_scheme,
                           words_with_offsets)
from ..errors import DataError
from ..objectives.tokens import align_to_labels
from .base import Task
from .entity_metrics import EntityMetrics

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_STRIDE = 32


class TokenClassificationTask(Task):
    name = "token-classification"
    problem_type = None  # transformers' token-classification heads read none
    default_metric = "f1"
    peft_task_type = "TOKEN_CLS"
    adaptable = True
    keys = ("data.tokens_column", "data.tags_column", "task.label_all_tokens", "task.stride")

    def check_recipe(self, recipe) -> None:
        if recipe.data.dataset not in (None, "wnut-16"):
            raise ValueError(f"data.dataset {recipe.data.dataset!r} has no per-word tags; give data.train (CoNLL "
                             "token<TAB>tag lines, or rows with a tokens list and a tags list)")
        stride, length = recipe.task.stride, recipe.model.max_length
        if stride is not None and stride >= length - 2:
            raise ValueError(f"task.stride {stride}: consecutive windows of model.max_length {length} tokens (2 of them "
                             "special) would share all their words; use a stride below a quarter of max_length")

    # ------------------------------------------------------------ data

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        fmt = spec.format if fmt is None else fmt
        return read_token_examples(path, "auto" if fmt == "auto" else fmt, spec.tokens_column,
                                   spec.tags_column if with_labels else None)

    def label_space(self, train: Sequence[TokenExample], declared: Optional[list[str]]) -> LabelSpace:
        if declared:
            if len(set(declared)) != len(declared):
                raise DataError([f"data.labels has duplicates: {declared}"])
            names = [str(x) for x in declared]
        else:
            seen = {t for ex in train for t in ex.tags}
            # O first, then by entity type and position (B-LOC, I-LOC, B-PER, ...), as the tags of one entity
            # type belong together in a report.
            names = sorted(seen, key=lambda t: ("" if t == "O" else t[2:], t[:1]))
        tag_scheme(names)  # one scheme, every tag well formed
        if len(names) < 2:
            raise DataError([f"{train[0].source.rsplit(' line', 1)[0] if train else 'train'}: only the tags {names} in "
                             "the training data; tagging needs at least two"])
        return LabelSpace(names)

    def check_labels(self, examples: Sequence[TokenExample], space: LabelSpace, problems: list[str]) -> None:
        known = space.label2id
        for ex in examples:
            unknown = sorted({t for t in ex.tags or [] if t not in known})
            if unknown:
                problems.append(f"{ex.source}: tags {unknown} are not among the training tags "
                                f"({', '.join(space.names[:20])}); fix the rows or list every tag in data.labels")

    def encode(self, recipe, tokenizer, examples: Sequence[TokenExample], space: LabelSpace):
        t = recipe.task
        tagged = bool(examples) and examples[0].tags is not None
        split = encode_token_examples(tokenizer, examples, recipe.model.max_length,
                                      space.label2id if tagged else None, t.label_all_tokens, stride_for(recipe))
        split.label_names = list(space.names)  # what the metrics name entity types by
        return split

    # ------------------------------------------------------------ model

    def load_model(self, recipe, space: LabelSpace, head_seed: int, load_kwargs=None):
        from transformers import AutoModelForTokenClassification

        from ..models.loading import load_for_classification

        m = recipe.model
        return load_for_classification(m.name, len(space.names), self.problem_type, space.id2label, head_seed,
                                       m.trust_remote_code, m.pretrained, load_kwargs,
                                       auto=AutoModelForTokenClassification, head="token-classification")

    def model_skeleton(self, recipe, space: LabelSpace, tokenizer, config):
        from transformers import AutoModelForTokenClassification

        config.num_labels = len(space.names)
        with torch.device("meta"):
            return AutoModelForTokenClassification.from_config(config, trust_remote_code=recipe.model.trust_remote_code)

    def open_saved(self, model_dir):
        from transformers import AutoModelForTokenClassification

        from ..models.loading import load_run_model

        model, tokenizer = load_run_model(model_dir, AutoModelForTokenClassification)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        return model, tokenizer, [id2label[i] for i in range(len(id2label))]

    # ------------------------------------------------------------ loss and metrics

    def batch_loss(self, model, batch: dict, evaluating: bool = False):
        logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits
        outputs = {"logits": logits, "word_ids": batch["word_ids"], "example_ids": batch["example_ids"]}
        labels = batch.get("labels")
        if labels is None:
            return logits.new_zeros(()), outputs
        logits = align_to_labels(logits, labels)  # (prompt tuning's virtual tokens come first)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                               reduction="sum"), outputs

    def make_metrics(self, num_labels: int, threshold: float = 0.5):
        raise TypeError("token-classification metrics need the label names: use metrics_for(split, ...)")

    def metrics_for(self, split, num_labels: int, threshold: float = 0.5):
        return EntityMetrics(split.label_names, tag_scheme(split.label_names))

    def metric_names(self, space: LabelSpace, threshold: float = 0.5) -> list[str]:
        return list(EntityMetrics(space.names, tag_scheme(space.names)).compute())

    # ------------------------------------------------------------ use

    def given_examples(self, recipe, texts, text_pairs) -> list:
        if text_pairs is not None:
            raise DataError(["a token-classification model tags single texts; drop the second texts (--text-pair)"])
        return [words_with_offsets(t, f"text {i + 1}") for i, t in enumerate(texts)]

    def logits(self, model, split, batch_size: int, pad_id: int, runtime) -> torch.Tensor:
        """Every word's logits (one row per word, examples in order): what a merged model must reproduce."""
        rows = word_logits(model, split, batch_size, pad_id, runtime)
        return torch.cat(rows) if rows else torch.empty(0)

    def predictions(self, model, split, examples, space: LabelSpace, recipe, batch_size: int, pad_id: int,
                    runtime) -> list[dict]:
        scheme = tag_scheme(space.names)
        out = []
        for ex, logits in zip(examples, word_logits(model, split, batch_size, pad_id, runtime)):
            probs = torch.softmax(logits.float(), -1)
            best = probs.argmax(-1).tolist()
            tags = [space.names[i] for i in best]
            text, offsets = _text_and_offsets(ex)
            entities = []
            for kind, first, last in entity_spans(tags, scheme):
                start, end = offsets[first][0], offsets[last][1]
                score = float(probs[range(first, last + 1), best[first:last + 1]].mean())
                entities.append({"entity": kind, "text": text[start:end], "start": start, "end": end,
                                 "score": round(score, 6)})
            out.append({"text": text, "tokens": ex.tokens, "tags": tags, "entities": entities})
        return out


def stride_for(recipe) -> int:
    """task.stride, or a quarter of the window up to 32 tokens."""
    return recipe.task.stride if recipe.task.stride is not None else min(DEFAULT_STRIDE, recipe.model.max_length // 4)


def _text_and_offsets(example: TokenExample) -> tuple[str, list[tuple[int, int]]]:
    """The example's text and each word's span in it; words read from a file are joined by spaces."""
    if example.text is not None and example.offsets is not None:
        return example.text, example.offsets
    offsets, at = [], 0
    for token in example.tokens:
        offsets.append((at, at + len(token)))
        at += len(token) + 1
    return " ".join(example.tokens), offsets


@torch.no_grad()
def word_logits(model, split, batch_size: int, pad_id: int, runtime) -> list[torch.Tensor]:
    """Per example, its words' logits (words, labels) in word order, each from the one window that scores it."""
    from ..engine.evaluate import length_batches

    model.eval()
    out = [torch.empty(len(ex.tokens), 0) for ex in split.examples]
    for indices in length_batches(split, batch_size):
        batch = runtime.to_device(split.batch(indices, pad_id))
        with runtime.autocast():
            logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits.float()
        word_ids = batch["word_ids"]
        logits = logits[:, -word_ids.shape[1]:].cpu()  # (prompt tuning's virtual tokens come first)
        word_ids = word_ids.cpu()
        for j, k in enumerate(indices):
            rows = out[split.example_ids[k]]
            if rows.shape[1] == 0:
                rows = out[split.example_ids[k]] = torch.zeros(rows.shape[0], logits.shape[-1])
            scored = word_ids[j] >= 0
            rows[word_ids[j][scored]] = logits[j][scored]
    return out
