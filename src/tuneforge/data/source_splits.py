"""Which split of a datasets source each of a recipe's splits is read from.

data.train / validation / test may each name a folder written by save_to_disk or a Hub dataset. A source of several
splits gives the recipe's split of the same name: data.train_split (default train), data.validation_split (default
the first of validation, valid, dev, val), data.test_split (default test). When data.train is such a source and
data.validation or data.test is not given, those splits come from it too (where it has them; else they are carved
from train as for files)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .reading import note
from .sources import class_names, dataset_of, is_saved_dataset, is_saved_dict, looks_like_hub_name, open_hub, \
    saved_splits

KEYS = ("train", "validation", "test")
DEFAULT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


@dataclass
class SplitPlan:
    files: dict[str, str] = field(default_factory=dict)    # recipe split -> what its task reads
    problems: list[str] = field(default_factory=list)
    label_names: Optional[list[str]] = None                  # ClassLabel names of train's label column, in id order


def _splits_of(value: str, config: Optional[str]) -> Optional[dict[str, str]]:
    """A multi-split source's splits (split name -> what is read); None for a file or a single saved Dataset."""
    if is_saved_dict(value):
        return {s: str(Path(value) / s) for s in saved_splits(value)}
    if not is_saved_dataset(value) and looks_like_hub_name(value):
        return open_hub(value, config)
    return None


def _chosen(spec, key: str) -> Optional[str]:
    value = getattr(spec, f"{key}_split", None)
    return None if key == "train" and value == "train" else value


def _pick(splits: dict[str, str], spec, key: str) -> tuple[Optional[str], bool]:
    """(split name, named in the recipe) for recipe split `key`; None when the source has no such split."""
    named = _chosen(spec, key)
    if named is not None:
        return (named if named in splits else None), True
    return next((n for n in DEFAULT_NAMES[key] if n in splits), None), False


def _unlabelled(path: str, columns: list[str]) -> Optional[str]:
    """The label column whose every value is -1 (datasets' 'no label', as Hub test splits hide theirs), if any."""
    from datasets import ClassLabel

    ds = dataset_of(path)
    for column in columns:
        if isinstance(ds.features.get(column), ClassLabel):
            values = ds[column]
            if values and all(v == -1 for v in values):
                return column
    return None


def plan_splits(spec, label_columns: list[str]) -> SplitPlan:
    """The path each of the recipe's splits is read from, with the problems of split names that do not exist."""
    plan = SplitPlan()
    config = getattr(spec, "dataset_config", None)
    opened: dict[str, dict[str, str]] = {}
    for key in KEYS:
        value = getattr(spec, key)
        if not value:
            continue
        splits = _splits_of(str(value), config)
        if splits is None:
            plan.files[key] = str(value)
            continue
        opened[key] = splits
        name, _ = _pick(splits, spec, key)
        if name is None:
            wanted = _chosen(spec, key) or " or ".join(DEFAULT_NAMES[key])
            plan.problems.append(f"data.{key}: {value} has no split {wanted!r} (its splits are: {', '.join(splits)}); "
                                 f"set data.{key}_split to one of them")
            continue
        plan.files[key] = splits[name]
    if "train" in opened:
        for key in ("validation", "test"):
            if key in plan.files or getattr(spec, key):
                continue
            name, named = _pick(opened["train"], spec, key)
            if name is None:
                if named:
                    plan.problems.append(f"data.{key}_split: {spec.train} has no split {_chosen(spec, key)!r} (its "
                                         f"splits are: {', '.join(opened['train'])})")
                continue
            path = opened["train"][name]
            empty = None if named else _unlabelled(path, label_columns)
            if empty:
                note(f"{path}: every {empty!r} is -1 (no label), so it is not used as the {key} split; name a "
                     f"labelled split with data.{key}_split, or give data.{key}")
                continue
            plan.files[key] = path
    for key in KEYS:
        if _chosen(spec, key) is not None and not opened:
            plan.problems.append(f"data.{key}_split: {_chosen(spec, key)!r} names a split of a datasets source (a "
                                 "save_to_disk folder or a Hub dataset), but the recipe's data are files; remove it")
            break
    if "train" in plan.files and not plan.problems:
        plan.label_names = _label_names(plan.files["train"], label_columns)
    return plan


def _label_names(path: str, columns: list[str]) -> Optional[list[str]]:
    from .sources import is_dataset_source

    if not is_dataset_source(path) and not path.lower().endswith(".arrow"):
        return None
    if path.lower().endswith(".arrow"):
        import datasets

        try:
            features = datasets.Dataset.from_file(path).features
        except Exception:  # noqa: BLE001 - an Arrow file datasets did not write: no ClassLabel names
            return None
    else:
        features = dataset_of(path).features
    for column in columns:
        if column in features:
            names = class_names(features[column])
            if names is not None:
                return names
    return None
