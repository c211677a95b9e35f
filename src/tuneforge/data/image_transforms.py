"""Image preprocessing as the model expects it, and train-only augmentation; Pillow and NumPy only.

Evaluation: resize the shorter side to size / crop_fraction (or, for models pre-trained on squashed
images such as ViT, the whole image to that square), centre-crop size x size. Training (when
augmentation is on): a random resized crop (a random area fraction and aspect ratio, as in Inception and
torchvision's RandomResizedCrop) and a random horizontal flip. Then pixels (0-255) become
(pixels * rescale - mean) / std per channel: EfficientNet-Lite wants (x - 127) / 128, Hugging Face models
say what they want in their preprocessor_config.json.

The random draws of an image depend only on (seed, epoch, row), so a resumed run sees exactly the crops an
uninterrupted run would have seen.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .images import ImageExample

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class Augmentation:
    enabled: bool = True
    crop_scale: tuple[float, float] = (0.25, 1.0)      # area fraction of the random crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)   # aspect ratio range of the random crop
    hflip: bool = True


@dataclass
class ImageProcessing:
    size: int                                  # square input side the model sees
    mean: tuple[float, float, float]           # per channel, after rescale
    std: tuple[float, float, float]
    rescale: float = 1 / 255                   # multiplies 0-255 pixels first
    crop_fraction: float = 0.875               # evaluation: centre crop of the resized image
    resample: int = 2                          # Pillow filter: 2 bilinear, 3 bicubic (what the model was trained with)
    squash: bool = False                       # evaluation: resize to a square ignoring the aspect ratio (ViT's way)
    augment: Augmentation = field(default_factory=Augmentation)
    extra: dict = field(default_factory=dict)  # the model's own preprocessor_config.json keys, kept on save

    # ---- the pipeline
    @staticmethod
    def to_rgb(example: ImageExample):
        """8-bit RGB; a file that fails to decode (e.g. cut short after a valid header) is named."""
        from ..errors import DataError

        try:
            return ImageProcessing._to_rgb(example)
        except (OSError, ValueError, _pillow_bomb_error()) as e:
            raise DataError([f"{example.describe()}: could not decode the image ({e}); fix or remove the file"]) from None

    @staticmethod
    def _to_rgb(example: ImageExample):
        from PIL import Image

        if isinstance(example.image, np.ndarray):
            pixels = example.image
            if pixels.ndim == 3 and pixels.shape[-1] == 1:
                pixels = pixels[..., 0]
            img = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
        else:
            with Image.open(example.image) as opened:
                img = opened.convert("RGBA") if opened.mode in ("P", "PA") and "transparency" in opened.info \
                    else opened.copy()
        if img.mode in ("RGBA", "LA", "PA"):  # transparent areas become white, as most viewers show them
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
            return background
        return img.convert("RGB")

    def eval_image(self, img):
        from PIL import Image

        w, h = img.size
        short = max(1, int(self.size / self.crop_fraction))  # truncated, as transformers' processors do
        if self.squash:
            sx, sy = short / w, short / h
            nw = nh = short
        else:
            sx = sy = short / min(w, h)
            nw, nh = max(short, round(w * sx)), max(short, round(h * sy))
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        # Resize and crop in one step: Pillow resamples only the pixels that end up in the crop.
        box = (left / sx, top / sy, (left + self.size) / sx, (top + self.size) / sy)
        return img.resize((self.size, self.size), self.resample, box=box)

    def train_image(self, img, rng: np.random.Generator):
        from PIL import Image

        a = self.augment
        w, h = img.size
        box = None
        for _ in range(10):
            area = w * h * rng.uniform(*a.crop_scale)
            ratio = math.exp(rng.uniform(math.log(a.crop_ratio[0]), math.log(a.crop_ratio[1])))
            cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
                box = (x0, y0, x0 + cw, y0 + ch)
                break
        if box is None:  # no crop of the drawn shape fits: the whole image
            box = (0, 0, w, h)
        out = img.resize((self.size, self.size), self.resample, box=box)
        if a.hflip and rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return out

    def normalize(self, images) -> torch.Tensor:
        pixels = np.stack([np.asarray(im, dtype=np.float32) for im in images])  # N x H x W x 3, 0-255
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        pixels = (pixels * np.float32(self.rescale) - mean) / std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))

    def __call__(self, examples: Sequence[ImageExample], rngs: Optional[Sequence[np.random.Generator]] = None):
        """pixel_values for `examples`: evaluation preprocessing, or augmented with one generator per image."""
        images = [self.to_rgb(ex) for ex in examples]
        if rngs is not None and self.augment.enabled:
            images = [self.train_image(im, g) for im, g in zip(images, rngs)]
        else:
            images = [self.eval_image(im) for im in images]
        return self.normalize(images)

    # ---- saving, so a run reloads with the same preprocessing and Hugging Face pipelines can read it
    def to_json(self) -> dict:
        """The model's own preprocessor_config.json with tuneforge's values written in the keys it has."""
        data = dict(self.extra)
        data.update(do_rescale=True, rescale_factor=self.rescale, do_normalize=True, image_mean=list(self.mean),
                    image_std=list(self.std), do_resize=True, resample=self.resample)
        resized = int(self.size / self.crop_fraction)
        square = {"height": self.size, "width": self.size}
        if "crop_pct" in data and not self.squash:  # shorter side to size / crop_pct, crop size (ConvNeXt's, ResNet's)
            data["crop_pct"] = self.crop_fraction
            data["size"] = {"shortest_edge": self.size}
        else:  # resize to `size` (a square when squashing, else the shorter side), crop `crop_size` if smaller
            data.pop("crop_pct", None)
            data["size"] = {"height": resized, "width": resized} if self.squash else {"shortest_edge": resized}
            data["do_center_crop"] = resized != self.size
            data["crop_size"] = square
        data["tuneforge"] = {"size": self.size, "crop_fraction": self.crop_fraction, "squash": self.squash,
                             "augment": asdict(self.augment)}
        return data

    def save_pretrained(self, folder) -> None:
        Path(folder, PREPROCESSOR_FILE).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, data: dict, size: Optional[int] = None) -> "ImageProcessing":
        """From a Hugging Face preprocessor_config.json (or one tuneforge wrote); `size` overrides the input side."""
        own = data.get("tuneforge", {})
        crop_size, resize = _side(data.get("crop_size")), _side(data.get("size"))
        # {height, width} sizes squash the whole image to that square; {shortest_edge} keeps the aspect ratio.
        squash = isinstance(data.get("size"), dict) and "shortest_edge" not in data["size"] or isinstance(data.get("size"), int)
        if own:
            side, crop, squash = own["size"], own["crop_fraction"], own.get("squash", squash)
        elif "crop_pct" in data:
            side, crop = resize or 224, float(data["crop_pct"])
            if side >= 384:  # ConvNeXt's processors warp large inputs to a square without cropping
                crop, squash = 1.0, True
        elif data.get("do_center_crop") and crop_size and resize:
            side, crop = crop_size, crop_size / resize
        else:
            side, crop = resize or 224, 1.0
        augment = Augmentation(**{k: tuple(v) if isinstance(v, list) else v for k, v in own.get("augment", {}).items()})
        normalize = data.get("do_normalize", True)
        mean = data.get("image_mean", (0.485, 0.456, 0.406)) if normalize else (0.0, 0.0, 0.0)
        std = data.get("image_std", (0.229, 0.224, 0.225)) if normalize else (1.0, 1.0, 1.0)
        rescale = data.get("rescale_factor", 1 / 255) if data.get("do_rescale", True) else 1.0
        extra = {k: v for k, v in data.items() if k != "tuneforge"}
        return cls(size=int(size or side), mean=_three(mean), std=_three(std), rescale=float(rescale),
                   crop_fraction=float(crop), resample=int(data.get("resample", 2)), squash=bool(squash),
                   augment=augment, extra=extra)


def _pillow_bomb_error():
    """Pillow's refusal of decompression bombs is not an OSError."""
    from PIL import Image
    return Image.DecompressionBombError


def _side(value) -> Optional[int]:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(value.get(key), int):
                return value[key]
    return None


def _three(values) -> tuple[float, float, float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    return tuple(values * 3)[:3] if len(values) == 1 else tuple(values[:3])


def rng_for(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The augmentation draws of one row in one epoch: a function of these three numbers alone."""
    return np.random.default_rng([seed, epoch, row])
