"""Data that the `datasets` library holds, read as the tables the file readers give: a folder written by
`Dataset.save_to_disk` or `DatasetDict.save_to_disk`, a Hub dataset by name (org/name), an `.arrow` file.

Each becomes a pandas DataFrame of the same shape as a Parquet file's, so the tasks' column options and row checks
apply unchanged; class labels stored as `ClassLabel` ids come back as their names (-1, datasets' "no label", as a
missing label). A split of a DatasetDict folder is its sub-folder (`folder/train`), itself a saved Dataset. A split
of a Hub dataset has no path, so it is read under a name of its own (`org/name (train split)`), kept here once
loaded: messages name it with the row, and every reader that takes a path takes it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..errors import DataError
from .formats import EXTENSIONS
from .hub import HUB_NAME, load_hub_dataset, quiet

SAVED_DATASET = "state.json"        # what Dataset.save_to_disk writes beside its .arrow shards
SAVED_DICT = "dataset_dict.json"    # what DatasetDict.save_to_disk writes beside one folder per split
NOT_HUB_SUFFIXES = {".txt", ".conll", ".iob", ".iob2", ".bio", ".bioes", ".npz", ".gz", ".bz2", ".xz", ".zip",
                    ".zst", ".tar", ".yaml", ".yml", ".py"}

_HUB_SPLITS: dict[str, Any] = {}    # the name a Hub split is read under -> its (memory-mapped) Dataset


def is_saved_dataset(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SAVED_DATASET).is_file()


def is_saved_dict(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SAVED_DICT).is_file()


def looks_like_hub_name(value: str) -> bool:
    """org/name that is no existing path and does not end like a data file (data/train.csv is a missing file)."""
    value = str(value)
    if not HUB_NAME.fullmatch(value) or Path(value).exists():
        return False
    suffix = Path(value).suffix.lower()
    return suffix not in EXTENSIONS and suffix not in NOT_HUB_SUFFIXES and suffix != ".arrow"


def is_dataset_source(path) -> bool:
    """Whether `path` is read through `datasets` (a saved folder, a Hub split or name) rather than as a file."""
    return str(path) in _HUB_SPLITS or is_saved_dataset(path) or is_saved_dict(path) or looks_like_hub_name(str(path))


def hub_split_name(name: str, config: Optional[str], split: str) -> str:
    return f"{name} ({config + ', ' if config else ''}{split} split)"


def saved_splits(path) -> list[str]:
    try:
        splits = json.loads((Path(path) / SAVED_DICT).read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError([f"{path}: {SAVED_DICT} does not read as DatasetDict.save_to_disk writes it ({e}); save "
                         "the dataset again"]) from None
    return [str(s) for s in splits]


def load_saved(path):
    """The Dataset saved in folder `path` (memory-mapped, not read into memory)."""
    import datasets

    try:
        with quiet():
            return datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged folder raises from arrow, json or fsspec
        raise DataError([f"{path}: the folder saved with datasets does not load ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); save it again"]) from None


def open_hub(name: str, config: Optional[str]) -> dict[str, str]:
    """Each split of a Hub dataset, by split name: the name it is read under."""
    loaded = load_hub_dataset(name, config)
    names = {}
    for split, ds in loaded.items():
        key = hub_split_name(name, config, split)
        _HUB_SPLITS[key] = ds
        names[str(split)] = key
    return names


def dataset_of(path):
    """The Dataset behind a path that `is_dataset_source`, as one table; DataError when it holds several splits."""
    key = str(path)
    if key in _HUB_SPLITS:
        return _HUB_SPLITS[key]
    if is_saved_dataset(path):
        return load_saved(path)
    if is_saved_dict(path):
        splits = saved_splits(path)
        if len(splits) == 1:
            return load_saved(Path(path) / splits[0])
        raise DataError([f"{path}: a DatasetDict of splits {', '.join(splits)}; one table is read here: give one "
                         f"split's folder (e.g. {Path(path) / splits[0]})"])
    splits = open_hub(key, None)
    if len(splits) == 1:
        return _HUB_SPLITS[next(iter(splits.values()))]
    raise DataError([f"{key}: a Hub dataset of splits {', '.join(splits)}; one table is read here: name it in a "
                     "recipe (data.train with data.train_split / validation_split / test_split), or save one split "
                     "as a file"])


def class_names(feature) -> Optional[list[str]]:
    """The names of a ClassLabel feature, or of the ClassLabel items of a list feature (per-word tags)."""
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    return None


def _name(names: list[str], value):
    """A ClassLabel id as its name; -1 (no label) as None; any other id outside the names is kept for the row check
    to name."""
    if value is None or isinstance(value, float) and value != value:
        return None
    i = int(value)
    if i == -1:
        return None
    return names[i] if 0 <= i < len(names) else i


def dataset_frame(ds) -> pd.DataFrame:
    """A Dataset as the DataFrame the file readers give (what pandas makes of a Parquet file), ClassLabel ids as
    names."""
    from datasets import ClassLabel

    with quiet():
        df = ds.to_pandas()
    for column, feature in ds.features.items():
        names = class_names(feature)
        if names is None:
            continue
        if isinstance(feature, ClassLabel):
            df[column] = pd.Series([_name(names, v) for v in df[column].tolist()], index=df.index, dtype=object)
        else:
            df[column] = pd.Series([None if v is None else [_name(names, x) for x in v] for v in df[column].tolist()],
                                   index=df.index, dtype=object)
    return df


def read_arrow(path: Path) -> pd.DataFrame:
    """An .arrow file: the stream format that `datasets` writes (its features, ClassLabel names included, ride in the
    schema's metadata), or Arrow's IPC file format (pyarrow.feather / ipc.new_file)."""
    import datasets
    import pyarrow as pa

    try:
        with quiet():
            return dataset_frame(datasets.Dataset.from_file(str(path)))
    except Exception:  # noqa: BLE001 - not the stream format: try the file format below
        pass
    try:
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all().to_pandas()
    except Exception as e:  # noqa: BLE001
        raise DataError([f"{path}: not an Arrow file (neither the stream format datasets writes nor Arrow's IPC "
                         f"file format: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); "
                         "give a file written by datasets or pyarrow, or name the file by its real format"]) from None


def dataset_table(path) -> Optional[pd.DataFrame]:
    """The rows of a datasets source as a DataFrame; None when `path` is not one (a file is read by its format)."""
    if not is_dataset_source(path):
        return None
    df = dataset_frame(dataset_of(path))
    if len(df) == 0:
        raise DataError([f"{path}: no data rows (the split is empty)"])
    return df
