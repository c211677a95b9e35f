"""Image data: readers (image folders, tables of paths, .npz arrays, idx files) and validation.

Every image is checked when the data loads, before training: a file that is missing, unreadable, or in a
pixel format tuneforge cannot turn into 8-bit RGB is reported with the file (and the table row) named.
Opening an image with Pillow reads only its header, so checking a folder of photos is fast; pixels are
decoded batch by batch during training, and a file whose body turns out to be broken (cut short after a
valid header) stops the run there with the file named.
"""
from __future__ import annotations

import gzip
import itertools
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import DataError
from .readers import EXTENSIONS, read_table

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Modes Pillow converts to RGB without losing meaning. 16/32-bit integer and float images ("I", "I;16", "F")
# have no agreed mapping to 0-255: converting them would silently clip, so they are refused.
ACCEPTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass
class ImageExample:
    image: Union[Path, np.ndarray]   # a file, or pixels (H x W grey or H x W x 3 RGB, uint8)
    label: Optional[str] = None
    source: str = ""                 # "train.csv row 12" / "train/cat/1.png", for messages

    def describe(self) -> str:
        return str(self.image) if isinstance(self.image, Path) else self.source


def check_image_file(path: Path, where: str) -> Optional[str]:
    """None when `path` opens as an image in an accepted mode; otherwise the problem, naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return f"{where}: no such image file {str(path)!r}"
    try:
        with Image.open(path) as img:
            mode = img.mode
    except UnidentifiedImageError:
        return f"{where}: {str(path)!r} is not an image Pillow can read (unknown or corrupt format)"
    except (OSError, Image.DecompressionBombError) as e:
        return f"{where}: {str(path)!r} could not be read: {e}"
    if mode not in ACCEPTED_MODES:
        return (f"{where}: {str(path)!r} has pixel mode {mode!r} (16/32-bit or floating point), which has no "
                "standard mapping to 8-bit RGB; save it as 8-bit grey or RGB")
    return None


def check_array(pixels: np.ndarray, where: str) -> Optional[str]:
    if pixels.dtype != np.uint8:
        return (f"{where}: pixels are {pixels.dtype}, expected uint8 (0-255); convert with "
                "(x * 255).round().astype('uint8') if they are floats in [0, 1]")
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (1, 3)):
        return None
    return f"{where}: an image must be H x W (grey) or H x W x 1/3 (RGB); got shape {tuple(pixels.shape)}"


def _label_name(value) -> Optional[str]:
    from .dataset import is_missing, label_text
    return None if is_missing(value) else label_text(value)


# ---------------------------------------------------------------- readers

def read_image_folder(folder: Path, with_labels: bool) -> list[ImageExample]:
    """One sub-folder per class (the sub-folder's name is the label); or, without labels, every image inside."""
    problems: list[str] = []
    examples = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if with_labels:
        if not classes:
            raise DataError([f"{folder}: an image folder needs one sub-folder per class (e.g. {folder}/cat/1.jpg); "
                             "found none"])
        per_class = [[(f, c.name) for f in sorted(c.rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS] for c in classes]
        # Classes interleaved (one image of each in turn), so data.limit_train's first N rows hold every class.
        pairs = [p for round_ in itertools.zip_longest(*per_class) for p in round_ if p is not None]
        for c in classes:
            if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in c.rglob("*")):
                problems.append(f"{c}: class folder {c.name!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    else:
        pairs = [(f, None) for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
        if not pairs:
            problems.append(f"{folder}: no images found ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    for path, label in pairs:
        problem = check_image_file(path, str(path))
        if problem:
            problems.append(problem)
        else:
            examples.append(ImageExample(image=path, label=label, source=str(path)))
    if problems:
        raise DataError(problems)
    return examples


def read_image_table(path: Path, fmt: str, image_col: str, label_col: Optional[str]) -> list[ImageExample]:
    """A CSV/TSV/JSON(L)/Parquet table with an image-path column (relative paths: from the table's folder)."""
    df = read_table(path, fmt)
    problems = [f"{path}: no column {c!r} (columns are: {', '.join(map(str, df.columns))}); set data.{key}"
                for c, key in ((image_col, "image_column"), (label_col, "label_column")) if c and c not in df.columns]
    if problems:
        raise DataError(problems)
    examples = []
    labels = df[label_col].tolist() if label_col else [None] * len(df)
    for i, (value, label) in enumerate(zip(df[image_col].tolist(), labels), start=1):
        where = f"{path} row {i}, column {image_col!r}"
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: expected an image path, got {value!r}")
            continue
        image = Path(value.strip()).expanduser()
        image = image if image.is_absolute() else path.parent / image
        problem = check_image_file(image, where)
        name = _label_name(label) if label_col else None
        if label_col and name is None:
            problems.append(f"{path} row {i}, column {label_col!r}: missing label (got {label!r})")
        elif problem:
            problems.append(problem)
        else:
            examples.append(ImageExample(image=image, label=name, source=f"{path} row {i}"))
    if problems:
        raise DataError(problems)
    return examples


def read_npz(path: Path, with_labels: bool) -> list[ImageExample]:
    """Arrays in an .npz: images under x / images / X, labels under y / labels / Y (N x H x W[x C] uint8)."""
    try:
        archive = np.load(path, allow_pickle=False)  # never unpickle: an .npz may come from anywhere
    except (ValueError, OSError) as e:
        raise DataError([f"{path}: could not read as .npz: {e}"]) from None
    keys = list(archive.keys())
    image_key = next((k for k in ("x", "images", "X", "image") if k in keys), None)
    label_key = next((k for k in ("y", "labels", "Y", "label") if k in keys), None)
    if image_key is None:
        raise DataError([f"{path}: no image array (looked for x, images, X, image; found {keys})"])
    if with_labels and label_key is None:
        raise DataError([f"{path}: no label array (looked for y, labels, Y, label; found {keys})"])
    images = archive[image_key]
    labels = archive[label_key] if with_labels else None
    return _array_examples(images, labels, f"{path}", image_key, label_key)


def _array_examples(images: np.ndarray, labels: Optional[np.ndarray], where: str, image_key: str,
                    label_key: Optional[str]) -> list[ImageExample]:
    problem = check_array(images[0] if len(images) else images, f"{where} [{image_key}]") if len(images) else \
        f"{where}: no images"
    if problem:
        raise DataError([problem])
    if labels is not None and len(labels) != len(images):
        raise DataError([f"{where}: {len(images)} images but {len(labels)} labels ([{label_key}])"])
    out = []
    for i in range(len(images)):
        label = None
        if labels is not None:
            value = labels[i]
            multi = isinstance(value, np.ndarray) and value.ndim > 0
            label = None if multi else _label_name(value.item() if hasattr(value, "item") else value)
            if label is None:
                raise DataError([f"{where} image {i}: label {value!r} is not one class name or integer (one-hot or "
                                 "multi-dimensional labels are not read; store class indices or names)"])
        out.append(ImageExample(image=images[i], label=label, source=f"{where} image {i}"))
    return out


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST / Fashion-MNIST format), optionally gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError([f"{path}: could not read: {e}"]) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError([f"{path}: not an unsigned-byte idx file (bad magic number)"])
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError([f"{path}: the idx header is cut short (truncated file?)"])
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError([f"{path}: header says {shape} but the file holds {body.size} values (truncated?)"])
    return body.reshape(shape)


IDX_NAME = re.compile(r"idx\d-ubyte")


def idx_labels_path(images: Path) -> Path:
    """train-images-idx3-ubyte.gz -> train-labels-idx1-ubyte.gz (also train-images.idx3-ubyte), beside it."""
    return images.with_name(IDX_NAME.sub("idx1-ubyte", images.name.replace("images", "labels")))


def read_idx_pair(path: Path, with_labels: bool) -> list[ImageExample]:
    images = read_idx(path)
    labels = None
    if with_labels:
        label_path = idx_labels_path(path)
        if label_path == path or "images" not in path.name:
            raise DataError([f"{path}: give the images file (…-images-idx3-ubyte); its labels are read from the "
                             "…-labels-idx1-ubyte file beside it"])
        if not label_path.exists():
            raise DataError([f"{path}: its labels are read from {label_path.name} beside it, which does not exist"])
        labels = read_idx(label_path)
    return _array_examples(images, labels, str(path), "idx", label_path.name if with_labels else None)


def is_idx(path: Path) -> bool:
    return IDX_NAME.search(path.name) is not None


def read_image_examples(path: str | Path, fmt: str, image_col: str, label_col: Optional[str]) -> list[ImageExample]:
    """Any supported image source; `label_col` None reads images only (prediction)."""
    path = Path(path)
    with_labels = label_col is not None
    if path.is_dir():
        return read_image_folder(path, with_labels)
    if not path.exists():
        raise DataError([f"{path}: no such file or folder"])
    if fmt == "npz" or (fmt == "auto" and path.suffix.lower() == ".npz"):
        return read_npz(path, with_labels)
    if fmt == "idx" or (fmt == "auto" and is_idx(path)):
        return read_idx_pair(path, with_labels)
    if fmt == "auto" and path.suffix.lower() in IMAGE_EXTENSIONS:
        problem = check_image_file(path, str(path))
        if problem:
            raise DataError([problem])
        if with_labels:
            raise DataError([f"{path}: a single image has no label; give a folder, a table or arrays"])
        return [ImageExample(image=path, source=str(path))]
    if fmt == "auto" and not any(s.lower() in EXTENSIONS for s in path.suffixes):
        raise DataError([f"{path}: not an image source tuneforge reads; give a folder of class sub-folders, a table "
                         f"({', '.join(sorted(EXTENSIONS))}) of image paths, an .npz, or an idx file"])
    return read_image_table(path, fmt, image_col, label_col)
