"""What the tasks that read one text (or a text pair) and give one output per row share: reading the rows,
tokenizing them, a sequence-classification head, and the record of a prediction."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..data.collate import encode_texts
from ..data.dataset import LabelSpace, TextExample, build_label_space, check_labels, read_examples_from_file
from ..errors import DataError
from .base import Task


class SequenceTask(Task):
    stratify = True
    adaptable = True

    # ------------------------------------------------------------ data

    def label_parser(self, spec):
        """label cell -> (label, problem)."""
        raise NotImplementedError

    def label_values(self, example) -> list[str]:
        """The label names an example carries."""
        return [example.label]

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        text, pair, label = self.columns(spec)
        return read_examples_from_file(path, self.label_parser(spec), text, pair, label if with_labels else None,
                                       spec.format if fmt is None else fmt)

    def label_space(self, train: Sequence, declared: Optional[list[str]]) -> LabelSpace:
        return build_label_space(train, declared, self.label_values)

    def check_labels(self, examples: Sequence, space: LabelSpace, problems: list[str]) -> None:
        check_labels(examples, space, self.label_values, problems)

    def label_tensor(self, examples: Sequence, space: LabelSpace) -> Optional[torch.Tensor]:
        if not examples or examples[0].label is None:
            return None
        ids = space.label2id
        return torch.tensor([ids[ex.label] for ex in examples], dtype=torch.long)

    def encode(self, recipe, tokenizer, examples: Sequence, space: LabelSpace):
        return encode_texts(tokenizer, examples, recipe.model.max_length, self.label_tensor(examples, space))

    # ------------------------------------------------------------ model

    def load_model(self, recipe, space: LabelSpace, head_seed: int, load_kwargs=None):
        from ..models.loading import load_for_classification

        m = recipe.model
        return load_for_classification(m.name, self.num_outputs(len(space.names)), self.problem_type,
                                       space.id2label if space.names else None, head_seed, m.trust_remote_code,
                                       m.pretrained, load_kwargs)

    def model_skeleton(self, recipe, space: LabelSpace, tokenizer, config):
        from transformers import AutoModelForSequenceClassification

        config.num_labels = self.num_outputs(len(space.names))
        with torch.device("meta"):  # structure only: no memory, no weights read
            return AutoModelForSequenceClassification.from_config(config,
                                                                  trust_remote_code=recipe.model.trust_remote_code)

    def open_saved(self, model_dir):
        from ..models.loading import load_run_model

        model, tokenizer = load_run_model(model_dir)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        return model, tokenizer, self.saved_labels([id2label[i] for i in range(len(id2label))])

    # ------------------------------------------------------------ use

    def given_examples(self, recipe, texts, text_pairs) -> list:
        _, pair_col, _ = self.columns(recipe.data)
        if pair_col and text_pairs is None:
            raise DataError([f"this model reads text pairs; give the second text too (column {pair_col!r})"])
        if not pair_col and text_pairs is not None:
            raise DataError(["this model reads single texts, not pairs; drop the second texts (--text-pair)"])
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise DataError([f"{len(texts)} text(s) but {len(text_pairs)} second text(s); give one --text-pair per --text"])
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        return [TextExample(text=t, text_pair=p, source=f"text {i + 1}") for i, (t, p) in enumerate(zip(texts, pairs))]

    def record(self, example, output, space: LabelSpace, recipe) -> dict:
        record = {"text": example.text}
        if example.text_pair is not None:
            record["text_pair"] = example.text_pair
        return {**record, **self.predicted(output, space, recipe)}

    def predicted(self, output: torch.Tensor, space: LabelSpace, recipe) -> dict:
        """What the model says of one row, from its logits."""
        probs = torch.softmax(output, -1)
        best = int(probs.argmax())
        return {"label": space.names[best], "score": round(float(probs[best]), 6),
                "scores": {space.names[i]: round(float(p), 6) for i, p in enumerate(probs)}}
