"""Image data: readers (image folders, tables of paths, .npz arrays, idx files) and validation.

Every image is checked when the data loads, before training: a file that is missing, unreadable, or in a
pixel format tuneforge cannot turn into 8-bit RGB is reported with the file (and the table row) named.
Opening an image with Pillow reads only its header, so checking a folder of photos is fast; before a run folder is
made, `validate` and `train` also decode every file cheaply (data/image_check.py: PNG verified, JPEG decoded at 1/8
scale), so a body cut short after a valid header is refused then, not mid-training; pixels are decoded batch by
batch during training.
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


def pixel_type_problem(pixels: np.ndarray, where: str) -> str:
    head = f"{where}: pixels are {pixels.dtype}, expected uint8 (0-255)"
    if pixels.dtype == np.bool_:
        return f"{head}; for black and white images use (x * 255).astype('uint8')"
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        return f"{head}; store the pixels as numbers: np.asarray(x, dtype='uint8')"
    if pixels.size == 0:
        return f"{head}; the array is empty"
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        return f"{head}; {bad} value(s) are NaN or infinite: fix or drop those images, then convert"
    lo, hi = pixels.min().item(), pixels.max().item()
    span = f"values span {lo:g} to {hi:g}"
    if lo >= 0 and hi <= 1:
        return f"{head}; the {span}, so they look like 0-1 floats: convert with (x * 255).round().astype('uint8')"
    if lo >= 0 and hi <= 255:
        return (f"{head}; the {span}, already the 0-255 scale: convert with np.clip(x, 0, 255).round().astype('uint8') "
                "(do not multiply by 255)")
    if lo >= 0 and hi <= 65535 and np.issubdtype(pixels.dtype, np.integer):
        return (f"{head}; the {span}, like 16-bit images: scale to 0-255 with (x // 257).astype('uint8') (or by "
                "the largest value: (x * 255 // x.max()).astype('uint8'))")
    return (f"{head}; the {span}, outside 0-255: they look normalized (mean/std) or of another scale. Store the "
            "original 0-255 pixels, or rescale: ((x - x.min()) / (x.max() - x.min()) * 255).round().astype('uint8')")


def as_uint8(pixels: np.ndarray) -> Optional[np.ndarray]:
    """The same pixels as uint8 when that is lossless and unambiguous: integers within 0-255 of any integer type, or
    whole-number floats within 0-255 with some value above 1 (so not 0-1 data). Otherwise None."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.size == 0 or not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        return None
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all() or pixels.max() <= 1 or not (pixels == np.round(pixels)).all():
            return None
    if pixels.min() < 0 or pixels.max() > 255:
        return None
    return pixels.astype(np.uint8)


def shape_problem(shape: tuple, where: str) -> Optional[str]:
    """None for a stack of N images H x W (grey) or H x W x 1/3; else the shape seen and the reshape that fits."""
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3)):
        return None
    head = f"{where}: images must be N x H x W (grey) or N x H x W x 1/3 (RGB); got shape {tuple(shape)}"
    if len(shape) == 2:
        n, d = shape
        side, rgb = int(round(d ** 0.5)), int(round((d / 3) ** 0.5))
        if side * side == d:
            return f"{head}: rows of {d} pixels look like flat {side} x {side} images; reshape: x.reshape(-1, {side}, {side})"
        if d % 3 == 0 and rgb * rgb * 3 == d:
            return (f"{head}: rows of {d} values look like flat {rgb} x {rgb} RGB images; reshape: "
                    f"x.reshape(-1, {rgb}, {rgb}, 3) if each pixel's 3 values are together, or "
                    f"x.reshape(-1, 3, {rgb}, {rgb}).transpose(0, 2, 3, 1) if the rows hold one channel after another "
                    "(as CIFAR does)")
        return f"{head}: rows of {d} values are flat images; reshape to N x H x W (x C): x.reshape(-1, H, W)"
    if len(shape) == 4 and shape[1] in (1, 3):
        return f"{head}: channels come first (N x C x H x W); move them last: x.transpose(0, 2, 3, 1)"
    return head


def _label_name(value) -> Optional[str]:
    from .dataset import is_missing, is_missing_marker, label_text
    return None if is_missing(value) or is_missing_marker(value) else label_text(value)


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
        keys = list(archive.keys())
    except Exception as e:  # noqa: BLE001 - BadZipFile, ValueError, OSError, EOFError ...
        raise DataError([f"{path}: could not read as .npz ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "it may be cut short or not an .npz: write it again with np.savez(path, x=images, "
                         "y=labels)"]) from None
    image_key = next((k for k in ("x", "images", "X", "image") if k in keys), None)
    label_key = next((k for k in ("y", "labels", "Y", "label") if k in keys), None)
    if image_key is None:
        raise DataError([f"{path}: no image array (looked for x, images, X, image; found {keys})"])
    if with_labels and label_key is None:
        raise DataError([f"{path}: no label array (looked for y, labels, Y, label; found {keys})"])
    images = _npz_array(archive, path, image_key, "images")
    labels = _npz_array(archive, path, label_key, "labels") if with_labels else None
    return _array_examples(images, labels, f"{path}", image_key, label_key)


def _npz_array(archive, path: Path, key: str, what: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise DataError([f"{path}: array {key!r} does not read ({e})"]) from None
        fix = ("stack same-sized images into one uint8 array: np.savez(path, x=np.stack(images).astype('uint8'), "
               "y=labels); images of different sizes go in a folder of files instead") if what == "images" else \
              "store labels as integers or names: np.array(labels, dtype=int) or np.array(labels, dtype=str)"
        raise DataError([f"{path}: array {key!r} holds Python objects (dtype=object), which tuneforge does not load "
                         f"(unpickling a file can run code in it); {fix}"]) from None
    except Exception as e:  # noqa: BLE001 - a damaged member: zlib.error, EOFError, BadZipFile ...
        raise DataError([f"{path}: array {key!r} is damaged ({str(e) or type(e).__name__}); write the file "
                         "again"]) from None


def _array_examples(images: np.ndarray, labels: Optional[np.ndarray], where: str, image_key: str,
                    label_key: Optional[str]) -> list[ImageExample]:
    from .dataset import grouped_problems

    name = f"{where} [{image_key}]"
    if images.ndim == 0 or len(images) == 0:
        raise DataError([f"{name}: no images"])
    problem = shape_problem(images.shape, name)
    if problem:
        raise DataError([problem])
    if images.dtype != np.uint8:
        converted = as_uint8(images)
        if converted is None:
            raise DataError([pixel_type_problem(images, name)])
        images = converted
    if labels is not None and len(labels) != len(images):
        raise DataError([f"{where}: {len(images)} images but {len(labels)} labels ([{label_key}])"])
    out, bad = [], {}
    for i in range(len(images)):
        label = None
        if labels is not None:
            value = labels[i]
            multi = isinstance(value, np.ndarray) and value.ndim > 0
            raw = None if multi else (value.item() if hasattr(value, "item") else value)
            label = None if multi else _label_name(raw)
            if label is None:
                from .dataset import is_missing, is_missing_marker
                err = (f"missing label (got {raw!r}); fill in the label or drop the image"
                       if not multi and (is_missing(raw) or is_missing_marker(raw)) else
                       f"label {value!r} is not one class name or integer (one-hot or multi-dimensional labels are "
                       "not read; store class indices or names)")
                bad.setdefault(err, []).append(i)
                continue
        out.append(ImageExample(image=images[i], label=label, source=f"{where} image {i}"))
    if bad:
        raise DataError(grouped_problems(f"{where} [{label_key}]", None, bad, noun="image"))
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
    from .sources import is_dataset_source, looks_like_hub_name

    # A Hub split or saved folder; a missing image folder named like org/name is still reported as missing below.
    if is_dataset_source(path) and not looks_like_hub_name(str(path)):
        raise DataError([f"{path}: a datasets source (a save_to_disk folder or a Hub dataset); image-classification "
                         "reads image files: a folder of class sub-folders, a table of image paths, .npz or idx "
                         "files. Save the images as files (e.g. ds[i]['image'].save(...)) and list them in a table"])
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
