"""Image classification: an image model (a CNN or a transformers vision model) with a new class head; images
decoded and preprocessed batch by batch, augmented when training."""
from __future__ import annotations

from typing import Optional

from ..data.collate import ImageSplit
from ..errors import DataError
from .classification import ClassificationTask

# Methods that need a transformer's token sequence, and why an image model has none.
IMAGE_UNSUPPORTED = {
    "prefix": "its virtual tokens extend a transformer's token sequence, which a CNN does not have",
    "prompt": "its soft prompt is input embeddings of tokens, which an image model does not read",
    "bottleneck": "tuneforge's bottleneck adapters sit on transformer sub-layer outputs",
}


class ImageClassificationTask(ClassificationTask):
    name = "image-classification"
    images = True
    adaptable = False
    distillable = False
    weakly_supervised = False
    transfer_set = False
    quantizable = False
    peft_task_type = None  # PEFT has no image-classification task type: a plain PeftModel passes pixel_values on
    keys = ("model.image_size",)

    def check_recipe(self, recipe) -> None:
        if recipe.data.dataset == "rotten-tomatoes":
            raise ValueError("data.dataset 'rotten-tomatoes' is text; an image-classification task needs images "
                             "(e.g. data.dataset: fashion-mnist)")
        if recipe.method.name in IMAGE_UNSUPPORTED:
            raise ValueError(f"method {recipe.method.name!r} does not apply to image models: "
                             f"{IMAGE_UNSUPPORTED[recipe.method.name]}. Use lora, dora or ia3, or a freezing method")

    def read_file(self, spec, path, notes: Optional[list] = None, with_labels: bool = True, fmt: Optional[str] = None):
        from ..data.images import read_image_examples

        fmt = fmt if fmt is not None else "auto" if spec.dataset else spec.format
        return read_image_examples(path, fmt, spec.image_column, self.columns(spec)[2] if with_labels else None)

    def encode(self, recipe, tokenizer, examples, space):
        """`tokenizer` is the run's ImageProcessing."""
        return ImageSplit(list(examples), tokenizer, self.label_tensor(examples, space))

    def load_model(self, recipe, space, head_seed: int, load_kwargs=None):
        from ..data.image_transforms import Augmentation
        from ..models.vision import load_for_image_classification

        m = recipe.model
        loaded = load_for_image_classification(m.name, len(space.names), space.id2label if space.names else None,
                                               head_seed, m.image_size, m.pretrained, m.trust_remote_code)
        augment = recipe.data.augment
        loaded.tokenizer.augment = Augmentation(augment.enabled, tuple(augment.crop_scale), tuple(augment.crop_ratio),
                                                augment.hflip)
        return loaded

    def model_skeleton(self, recipe, space, tokenizer, config):
        return None  # image models load with their weights (no meta-device path)

    def open_saved(self, model_dir):
        from ..models.vision import load_image_run_model

        model, processing = load_image_run_model(model_dir)
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        return model, processing, [id2label[i] for i in range(len(id2label))]

    def inputs(self, recipe, run_dir, data=None, texts=None, text_pairs=None, images=None, with_labels=True) -> list:
        if texts is not None:
            raise DataError([f"{run_dir} classifies images; give images (--image) or --data, not texts"])
        sources = [data] if data is not None else list(images or [])
        if not sources:
            raise ValueError("give data (a folder, table or arrays) or images")
        fmt = recipe.data.format if data is not None and not recipe.data.dataset else "auto"
        examples, problems = [], []
        for source in sources:
            try:
                examples.extend(self.read_file(recipe.data, source, with_labels=with_labels, fmt=fmt))
            except DataError as e:
                problems.extend(e.problems)
        if problems:
            raise DataError(problems)
        return examples

    def record(self, example, output, space, recipe) -> dict:
        return {"image": example.describe(), **self.predicted(output, space, recipe)}
