"""Whether every image file of the data decodes, checked before a run starts.

Reading the data opens each image's header only (data/images.py); a file cut short after a valid header passes that
and would stop a run mid-training. Here each file is decoded once, as cheaply as its format allows: PNG by its
chunks' checksums (no inflating), JPEG at 1/8 scale (the whole file is read, few pixels are made), other formats
fully (they are small in practice). Each file is checked once however many splits name it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence


def decode_problem(path: Path) -> Optional[str]:
    """None when the image file decodes to its end; otherwise why not, in Pillow's words."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format == "PNG":
                img.verify()  # every chunk read and its CRC checked, up to IEND
            else:
                if img.format == "JPEG":
                    img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        return str(e).strip() or type(e).__name__
    return None


def undecodable_images(splits: Mapping[str, Sequence]) -> list[str]:
    """A problem for each image file (an example's `image` that is a Path) that does not decode, naming the file and
    the split that reads it."""
    problems, seen = [], set()
    for split, examples in splits.items():
        for example in examples:
            path = getattr(example, "image", None)
            if not isinstance(path, Path) or path in seen:
                continue
            seen.add(path)
            problem = decode_problem(path)
            if problem:
                problems.append(f"{path}: could not decode the image ({problem}): its header reads but its body is "
                                f"cut short or corrupt. Copy or export it again, or remove it from data.{split}")
    return problems
