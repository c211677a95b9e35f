"""Bad model folders (and broken image files) through the real CLI: `validate` and `train` each refuse with exit 2, no
traceback, a message naming the folder or file, what was seen and the fix, and nothing created under the run's
parent folder. The broken folders are copies of the tiny BERT (and a tiny ViT), damaged one way each."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from badinput import Case, assert_refused, run_cli
from conftest import sentiment_rows, tiny_recipe, write_rows


class _Unpickled:
    """A pickle that leaves a marker file when anything unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _tiny_vit(folder: Path, hidden: int = 16) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=2 * hidden), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _images(root: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("horizontal", "vertical"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tiny_bert, tmp_path_factory) -> dict[str, Path]:
    """Broken model folders, data, and one recipe file per case (validate and train read the same file)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2Model

    root = tmp_path_factory.mktemp("bad-models")
    m = root / "models"
    m.mkdir()
    shape = _copy(tiny_bert, m / "shape")  # config says hidden 64, the weights hold 32
    _edit_config(shape, hidden_size=64, intermediate_size=128)
    other = _copy(tiny_bert, m / "other-architecture")  # GPT-2's weights under BERT's config
    GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=29, n_positions=64)).save_pretrained(root / "gpt2")
    shutil.copy(root / "gpt2" / "model.safetensors", other / "model.safetensors")
    no_tok = _copy(tiny_bert, m / "no-tokenizer")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / name).unlink(missing_ok=True)
    whole = (tiny_bert / "model.safetensors").read_bytes()
    (_copy(tiny_bert, m / "truncated") / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    (_copy(tiny_bert, m / "garbage") / "model.safetensors").write_bytes(b"<html>404 not found</html>")
    (_copy(tiny_bert, m / "no-weights") / "model.safetensors").unlink()
    pickled = _copy(tiny_bert, m / "bin-only")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Unpickled(root / "UNPICKLED")))
    sharded = _copy(tiny_bert, m / "missing-shard")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "embeddings.word_embeddings.weight": "model-00001-of-00002.safetensors",
        "pooler.dense.weight": "model-00002-of-00002.safetensors"}}))
    custom = _copy(tiny_bert, m / "custom-code")
    _edit_config(custom, model_type="tinyforge", architectures=["TinyForgeModel"],
                 auto_map={"AutoConfig": "configuration_tinyforge.TinyForgeConfig",
                           "AutoModelForSequenceClassification": "modeling_tinyforge.TinyForgeForSequenceClassification"})
    (custom / "modeling_tinyforge.py").write_text("raise SystemExit('custom code ran')\n")
    vit = _tiny_vit(m / "vit")
    vit_shape = _copy(vit, m / "vit-shape")
    _edit_config(vit_shape, hidden_size=32, intermediate_size=64)
    # Good folders that must still pass: a checkpoint saved without a pooler (from a masked-LM model).
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(tiny_bert)).save_pretrained(_copy(tiny_bert, m / "mlm-no-pooler"))

    files = {"train": write_rows(root / "data" / "train.csv", sentiment_rows(24, seed=1)),
             "validation": write_rows(root / "data" / "validation.csv", sentiment_rows(8, seed=2))}
    images = _images(root / "images")
    broken_images = _copy(images, root / "broken-images")
    cut = broken_images / "vertical" / "1.png"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - 200])  # the header reads; the pixel data is cut short
    runs = root / "runs"
    runs.mkdir()
    recipes = root / "recipes"
    recipes.mkdir()
    fast = {"epochs": 1, "progress": False}
    for folder in m.iterdir():
        recipe = tiny_recipe(folder, files, runs / folder.name, training=fast)
        (recipes / f"{folder.name}.yaml").write_text(yaml.safe_dump(recipe))
    for name, model, train in (("images", vit, images), ("broken-images", vit, broken_images),
                               ("vit-shape-images", vit_shape, images)):
        recipe = {"model": {"name": str(model)}, "task": {"type": "image-classification"},
                  "data": {"train": str(train), "validation_fraction": 0.25},
                  "training": {**fast, "batch_size": 4}, "output": {"dir": str(runs / name)}}
        (recipes / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    # A finished run whose saved weights were cut short (used by predict, and as another recipe's model.name).
    import tuneforge
    tuneforge.fine_tune(tiny_recipe(tiny_bert, files, root / "finished", training=fast))
    cut_run = _copy(root / "finished", root / "cut-run")
    saved = cut_run / "model" / "model.safetensors"
    saved.write_bytes(saved.read_bytes()[:1000])
    (recipes / "from-cut-run.yaml").write_text(yaml.safe_dump(tiny_recipe(cut_run, files, runs / "from-cut-run",
                                                                          training=fast)))
    (recipes / "overwrite-truncated.yaml").write_text(yaml.safe_dump(tiny_recipe(m / "truncated", files,
                                                                                 root / "finished", training=fast)))
    return {"root": root, "models": m, "recipes": recipes, "runs": runs, "tiny_bert": tiny_bert, "cut_run": cut_run,
            "finished": root / "finished"}


def _cases(w: dict[str, Path]) -> list[Case]:
    m, r = w["models"], w["recipes"]
    watch = [w["runs"], m]
    rows = [
        # 1. weights that do not fit their config
        ("shape", [str(m / "shape"), "model.safetensors", "do not fit", "another shape", "[29, 64]", "[29, 32]",
                   "config.json"]),
        ("other-architecture", [str(m / "other-architecture"), "missing from the file", "no place for", "h.0.",
                                "config.json"]),
        # 2. no tokenizer
        ("no-tokenizer", [str(m / "no-tokenizer"), "no tokenizer vocabulary", "vocab.txt", "tokenizer.json",
                          "[UNK]", "save_pretrained"]),
        # 3. weights files that cannot be read, or are not safetensors
        ("truncated", ["model.safetensors", "not a readable safetensors", "cut short", str(m / "truncated")]),
        ("garbage", ["model.safetensors", "not a readable safetensors", str(m / "garbage")]),
        ("no-weights", [str(m / "no-weights"), "no weights", "model.safetensors", "model.pretrained"]),
        ("bin-only", [str(m / "bin-only"), "pytorch_model.bin", "never unpickles", "safe_serialization=True"]),
        ("missing-shard", ["model.safetensors.index.json", "model-00002-of-00002.safetensors", "not in"]),
        # 5. custom code
        ("custom-code", [str(m / "custom-code"), "its own Python code", "model.trust_remote_code",
                         "modeling_tinyforge.py", "configuration_tinyforge.py", "tinyforge"]),
        # 6. an image model given to a text task
        ("vit", [str(m / "vit"), "image model", "'vit'", "text model", "image-classification"]),
    ]
    cases = [Case(f"{command}-{name}", [command, r / f"{name}.yaml"], words, watch)
             for name, words in rows for command in ("validate", "train")]
    # 4. (and 1. for image models) image data and image models
    for command in ("validate", "train"):
        cases.append(Case(f"{command}-broken-image", [command, r / "broken-images.yaml"],
                          ["1.png", "could not decode the image", "cut short", "data.train"], watch))
        cases.append(Case(f"{command}-vit-shape", [command, r / "vit-shape-images.yaml"],
                          [str(m / "vit-shape"), "do not fit", "ViTForImageClassification", "another shape"], watch))
    # a finished run's saved model, cut short: as a recipe's model.name, and to predict with
    saved = str(w["cut_run"] / "model" / "model.safetensors")
    for command in ("validate", "train"):
        cases.append(Case(f"{command}-from-cut-run", [command, r / "from-cut-run.yaml"],
                          [saved, "not a readable safetensors", "model.name"], watch))
    cases.append(Case("predict-cut-run", ["predict", w["cut_run"], "--text", "a good film"],
                      [saved, "not a readable safetensors", "the saved model"], [w["cut_run"]]))
    # --overwrite: the finished run it would replace is left whole when the model is refused
    cases.append(Case("train-overwrite-truncated", ["train", r / "overwrite-truncated.yaml", "--overwrite"],
                      ["model.safetensors", "not a readable safetensors"], [w["finished"], m]))
    return cases


CASE_IDS = [c.id for c in _cases({k: Path(k) for k in ("models", "recipes", "runs", "cut_run", "finished")})]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_refused(world, case_id, capsys):
    case = next(c for c in _cases(world) if c.id == case_id)
    assert_refused(case, capsys)
    assert not (world["root"] / "UNPICKLED").exists(), "a pickled weights file was unpickled"


@pytest.mark.parametrize("name", ["mlm-no-pooler", "images"])
def test_good_folders_still_validate(world, name, capsys):
    code, out, err = run_cli(["validate", str(world["recipes"] / f"{name}.yaml")], capsys)
    assert code == 0, err
    assert "valid" in out
    assert not (world["runs"] / name).exists()


def test_the_tiny_model_validates(world, capsys):
    recipe = world["recipes"] / "good.yaml"
    data = yaml.safe_load((world["recipes"] / "shape.yaml").read_text())
    data["model"]["name"] = str(world["tiny_bert"])
    recipe.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(["validate", str(recipe)], capsys)
    assert code == 0, err
    assert "recipe and data are valid" in out


def test_the_weights_check_agrees_with_transformers(world):
    """Where the header check says a folder fits, transformers' own loading finds nothing but the head new; where it
    refuses, transformers would have started base weights from random."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from tuneforge.models.weights_check import header_shapes, weights_files, weights_misfit

    for folder in ("mlm-no-pooler", "shape", "other-architecture"):  # fits; every shape differs; nothing named alike
        path = world["models"] / folder
        config = AutoConfig.from_pretrained(path)
        for auto in (AutoModelForSequenceClassification, AutoModelForTokenClassification):
            with torch.device("meta"):
                skeleton = auto.from_config(config)
            misfit = weights_misfit(skeleton, header_shapes(weights_files(path, folder), folder))
            _, info = auto.from_pretrained(path, config=config, output_loading_info=True, use_safetensors=True,
                                           ignore_mismatched_sizes=True)
            new = set(info["missing_keys"]) | {k[0] if isinstance(k, (tuple, list)) else k
                                               for k in info["mismatched_keys"]}
            base_new = {k for k in new if k.startswith(skeleton.base_model_prefix + ".") and ".pooler." not in k}
            mine = set() if misfit is None else set(misfit["missing"]) | {k for k, _, _ in misfit["mismatched"]}
            assert mine == base_new, (folder, auto.__name__)


def test_a_causal_lm_keeps_its_own_output_head(tmp_path):
    """A causal LM's output head is pre-trained, not a task head: weights saved without it (an untied base model)
    are refused for causal-LM training, while a tied one needs none."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaModel

    from tuneforge.models.weights_check import header_shapes, weights_files, weights_misfit

    for tied in (False, True):
        config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tied)
        folder = tmp_path / f"tied-{tied}"
        LlamaModel(config).save_pretrained(folder)  # the base network alone: no lm_head.weight in the file
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        misfit = weights_misfit(skeleton, header_shapes(weights_files(folder, "llama"), "llama"))
        assert (misfit is None) == tied
        if not tied:
            assert misfit["missing"] == ["lm_head.weight"]
