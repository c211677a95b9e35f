"""The teacher: a finished tuneforge run, or a model folder / alias fine-tuned for the same task. Its label
names must be the student's (in any order: its outputs are reordered to the student's), and a causal LM teacher
must share the student's tokenizer, since their distributions are compared token by token."""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import RecipeError


@dataclass
class Teacher:
    model: torch.nn.Module
    tokenizer: object
    source: str                      # what distill.teacher named, resolved
    label_names: list[str]
    order: Optional[torch.Tensor]    # student label j is the teacher's output order[j] (None: same order)
    same_tokenizer: bool
    blocks: int
    hidden_size: Optional[int]
    fingerprint: str                 # changes when the teacher's weights do: keys the output cache
    method: str = "full"             # a teacher run's method (prefix / prompt shift its hidden states)

    def outputs(self, inputs: dict, hidden_states: bool = False):
        """(logits in the student's label order, hidden states or None) of one batch, without gradients."""
        with torch.no_grad():
            out = self.model(**inputs, **({"output_hidden_states": True} if hidden_states else {}))
        logits = out.logits if self.order is None else out.logits[..., self.order]
        return logits, (out.hidden_states if hidden_states else None)


def _fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".json") and p.is_file())
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_teacher(recipe, space_names: list[str], student_tokenizer, device: str = "cpu") -> Teacher:
    """`device`: where a teacher that is a run loads (a quantized base is placed as it loads)."""
    from ..models.sources import resolve_model_path
    from ..models.layers import find_blocks
    from ..models.loading import quiet_transformers

    quiet_transformers()
    name = recipe.distill.teacher
    generative = recipe.task_kind.generative
    folder = Path(name).expanduser()
    if folder.is_dir() and (folder / "recipe.yaml").exists():  # a tuneforge run: model or adapter, as it saved it
        from ..runs import open_run
        run = open_run(folder, device)
        run_kind = run.recipe.task_kind
        if run_kind.generative != generative or not (run_kind.distillable or run_kind.generative):
            raise RecipeError([f"distill.teacher: {name} is a {run_kind.name} run; this recipe's task is "
                               f"{recipe.task.type}"])
        model, tokenizer, labels, where = run.model, run.tokenizer, run.space.names, folder
        method = run.recipe.method.name
    else:
        try:
            where = resolve_model_path(name)
        except Exception as e:
            raise RecipeError([f"distill.teacher: {e}"]) from None
        model, tokenizer, labels = _load_model(where, generative, name)
        method = "full"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    order = None
    if not generative:
        order = _label_order(labels, space_names, name)
    same = tokenizer.get_vocab() == student_tokenizer.get_vocab()
    if generative and not same:
        raise RecipeError([f"distill.teacher: {name}'s tokenizer differs from the student's ({recipe.model.name}); "
                           "token-level distillation compares their next-token distributions, so both need the same "
                           "vocabulary"])
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return Teacher(model=model, tokenizer=tokenizer, source=str(where), label_names=labels, order=order,
                   same_tokenizer=same, blocks=len(find_blocks(base)[1]),
                   hidden_size=getattr(base.config, "hidden_size", None), fingerprint=_fingerprint(Path(where)),
                   method=method)


def _load_model(path: Path, generative: bool, name: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from ..models.weights_check import header_shapes, weights_files

    who = f"distill.teacher {name!r}"  # missing, pickled-only or cut-short weights: named before anything loads
    header_shapes(weights_files(path, name, who=who), name, who=who)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if generative:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        return model, tokenizer, []
    model, info = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True,
                                                                     output_loading_info=True)
    if info.get("missing_keys"):
        raise RecipeError([f"distill.teacher: {name} has no trained classification head (its checkpoint lacks "
                           f"{', '.join(sorted(info['missing_keys'])[:3])}); a teacher must be fine-tuned for the task: "
                           "give a finished tuneforge run or a fine-tuned model folder"])
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    return model, tokenizer, [str(id2label[i]) for i in range(len(id2label))]


def _label_order(teacher_labels: list[str], student_labels: list[str], name: str) -> Optional[torch.Tensor]:
    if teacher_labels == student_labels:
        return None
    if sorted(teacher_labels) == sorted(student_labels):
        return torch.tensor([teacher_labels.index(n) for n in student_labels], dtype=torch.long)
    raise RecipeError([f"distill.teacher: {name} predicts labels {teacher_labels}, the student's data has "
                       f"{student_labels}; the teacher must be trained for the same labels (set data.labels if only "
                       "their names differ)"])


def teacher_outputs(teacher: Teacher, examples, max_length: int, batch_size: int, space) -> tuple[torch.Tensor, str]:
    """The teacher's logits (in the student's label order) for every training row, tokenized the teacher's way;
    computed once and kept in the cache folder, keyed by the teacher's weights and the rows."""
    from safetensors.torch import load_file, save_file

    from ..assets import cache_dir
    from ..data.collate import encode_texts
    from ..engine.evaluate import run_prediction

    # Keyed by everything the stored numbers depend on, the student's label order included (they are reordered).
    h = hashlib.sha256(json.dumps([teacher.source, teacher.fingerprint, max_length, list(space.names),
                                   [[ex.text, ex.text_pair] for ex in examples]]).encode()).hexdigest()[:24]
    path = cache_dir() / "teacher-outputs" / f"{h}.safetensors"
    if path.exists():
        return load_file(str(path))["logits"], f"teacher outputs of {len(examples)} rows read from the cache ({path})"
    started = time.perf_counter()
    from ..data.dataset import TextExample
    unlabelled = [TextExample(text=ex.text, text_pair=ex.text_pair) for ex in examples]  # transfer rows have none
    split = encode_texts(teacher.tokenizer, unlabelled, max_length)
    pad = getattr(teacher.tokenizer, "pad_token_id", None) or 0
    logits = run_prediction(ReorderedTeacher(teacher), split, batch_size, pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # parallel workers: own file
    save_file({"logits": logits.contiguous()}, str(tmp))
    tmp.replace(path)
    return logits, (f"teacher outputs of {len(examples)} rows computed once in {time.perf_counter() - started:.1f} s "
                    f"(cached in {path})")


class ReorderedTeacher(torch.nn.Module):
    """The teacher as a module whose logits come in the student's label order."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher
        self.inner = teacher.model

    def forward(self, **inputs):
        from types import SimpleNamespace
        return SimpleNamespace(logits=self.teacher.outputs(inputs)[0])
