"""A recipe's data as validated splits: each file read by the task, validation / test carved from train when
no file is given, labels mapped and checked."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import DataError
from .class_counts import rare_class_notes, rows_named
from .dataset import LabelSpace
from .reading import note, reading
from .source_splits import plan_splits


def stratified_split(examples: list, fractions: dict[str, float], seed: int, stratify: bool, where: str,
                     stratum=lambda example: example.label) -> dict[str, list]:
    """Carve named fractions out of `examples`; the rest is 'train'. Per-class when `stratify`."""
    rng = np.random.default_rng(seed)
    wanted = {k: f for k, f in fractions.items() if f > 0}
    out: dict[str, list[int]] = {"train": [], **{k: [] for k in wanted}}
    if stratify:
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            groups.setdefault(stratum(ex), []).append(i)
    else:
        groups = {"": list(range(len(examples)))}
    problems = []
    for label, idx in sorted(groups.items()):
        idx = [idx[j] for j in rng.permutation(len(idx))]
        counts = {k: max(1, int(round(len(idx) * f))) for k, f in wanted.items()}
        if sum(counts.values()) >= len(idx):
            what = f"class {label!r} has" if stratify else "there are"
            rows = f" ({rows_named([examples[i] for i in sorted(idx)])})" if stratify and len(idx) <= 5 else ""
            problems.append(f"{where}: {what} only {len(idx)} row(s){rows}; a split into train + {', '.join(wanted)} needs "
                            f"at least {sum(counts.values()) + 1}. Add rows, remove the class, or give "
                            f"{'/'.join('data.' + k for k in wanted)} file(s)")
            continue
        start = 0
        for k, n in counts.items():
            out[k].extend(idx[start:start + n])
            start += n
        out["train"].extend(idx[start:])
    if problems:
        raise DataError(problems)
    return {k: [examples[i] for i in sorted(v)] for k, v in out.items()}


def load_examples(data_spec, task, notes: Optional[list] = None) -> tuple[dict[str, list], LabelSpace, dict[str, str]]:
    """Every split of `task`'s rows validated, labels mapped; returns (splits, label space, where each split came
    from). Tasks without labels have an empty label space and splits carved at random. What the readers note on the
    way (data.drop_invalid_pairs' skipped rows, a chat layout mapped, a class too rare to learn) is appended to
    `notes`."""
    from ..assets import DATASET_LABELS, DATASETS

    spec = data_spec
    label_names = None
    with reading(skip_rows=getattr(spec, "skip_rows", 0), notes=notes):
        if spec.dataset:
            files = {k: str(v) for k, v in DATASETS[spec.dataset]().items()}
        else:
            plan = plan_splits(spec, _label_columns(spec, task))
            if plan.problems:
                raise DataError(plan.problems)
            files, label_names = plan.files, plan.label_names

        problems: list[str] = []
        splits: dict[str, list] = {}
        for name, path in files.items():
            try:
                splits[name] = task.read_file(spec, path, notes)
            except DataError as e:
                problems.extend(e.problems)
        if problems:
            raise DataError(problems)

        origin = {k: str(v) for k, v in files.items()}
        carve = {k: getattr(spec, f"{k}_fraction") for k in ("validation", "test") if k not in splits}
        carve = {k: f for k, f in carve.items() if f > 0}
        if carve:
            parts = stratified_split(splits["train"], carve, spec.split_seed, stratify=task.stratify,
                                     where=files["train"], stratum=task.stratum)
            splits.update(parts)
            for k, f in carve.items():
                origin[k] = f"{f:.0%} of {files['train']} (seed {spec.split_seed})"
        space = LabelSpace([])
        if task.named_labels:
            # Label names in id order: the recipe's, a packaged dataset's, or those a ClassLabel column stores.
            declared = spec.labels or (DATASET_LABELS.get(spec.dataset) if spec.dataset else None) or label_names
            space = task.label_space(splits["train"], declared)  # from all rows, before limit_train
            for message in rare_class_notes(splits["train"], task):
                note(message)
    if spec.limit_train:
        splits["train"] = splits["train"][: spec.limit_train]
    if spec.limit_eval:
        splits.update({k: v[: spec.limit_eval] for k, v in splits.items() if k != "train"})
    if task.named_labels:
        for name, examples in splits.items():
            task.check_labels(examples, space, problems)
    if problems:
        raise DataError(problems)
    return splits, space, origin


def _label_columns(spec, task) -> list[str]:
    """The columns whose ClassLabel names give the label order: the task's label column, then per-word tags."""
    columns = [task.columns(spec)[2], getattr(spec, "tags_column", None)]
    return [c for c in columns if c]
