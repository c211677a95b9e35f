"""QLoRA (model.quantization): a 4-bit / 8-bit bitsandbytes base with an adapter that trains beside it, reloaded
for prediction as it trained, merged after dequantizing, and refused where it cannot run."""
from __future__ import annotations

import json

import pytest
import torch

import tuneforge
from tuneforge.errors import RecipeError

from conftest import make_tiny_bert, tiny_recipe
from helpers import Snapshot

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'tuneforge[quantization]')")


@pytest.fixture(scope="module")
def bert64(tmp_path_factory):
    # bitsandbytes' CPU kernels quantize in blocks of 64 values along a row: the tiny model's rows are 64 wide.
    return make_tiny_bert(tmp_path_factory.mktemp("bert64"), dropout=0.0, hidden=64)


def qlora(model, files, out, bits="4bit", **training):
    return tiny_recipe(model, files, out, model={"quantization": bits}, method={"name": "lora", "dropout": 0.0},
                       training={"epochs": 4, "lr": 1e-2, "eval_every": 1, **training})


class QuantizedNames:
    def on_train_start(self, loop):
        self.names = {n for n, p in loop.model.named_parameters() if type(p).__name__ in ("Params4bit", "Int8Params")}


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_the_adapter_and_leaves_the_quantized_base(bits, bert64, sentiment_files, tmp_path):
    snap, kinds = Snapshot(), QuantizedNames()
    r = tuneforge.fine_tune(qlora(bert64, sentiment_files, tmp_path / bits, bits), callbacks=[snap, kinds])
    quantized = kinds.names
    assert quantized, "the base should hold bitsandbytes weights"
    changed = snap.changed()
    assert changed and changed <= snap.trainable_at_start             # only what trains moved
    assert any("lora_" in n for n in changed) and not changed & quantized
    history = json.loads((r.run_dir / "summary.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]                    # it learned
    # reloaded for use, the base is quantized again the same way: the same metrics
    again = tuneforge.evaluate(r.run_dir, sentiment_files["validation"])
    assert again["loss"] == pytest.approx(r.metrics["validation"]["loss"], abs=1e-6)


def test_quantized_merge_dequantizes_first_and_reports_the_difference(bert64, sentiment_files, tmp_path):
    from transformers import pipeline

    r = tuneforge.fine_tune(qlora(bert64, sentiment_files, tmp_path / "run"))
    report = tuneforge.merge(r.run_dir)
    assert report.max_abs_diff <= report.tolerance                     # the merge itself is exact
    assert report.quantized_max_abs_diff is not None and 0 < report.quantized_max_abs_diff < 0.1
    config = json.loads((r.run_dir / "merged" / "config.json").read_text())
    assert "quantization_config" not in config                         # a plain full-precision model
    out = pipeline("text-classification", model=str(r.run_dir / "merged"))("good film")
    assert out[0]["label"] in ("pos", "neg")


def test_quantization_needs_an_adapter_method(bert64, sentiment_files, tmp_path):
    recipe = tiny_recipe(bert64, sentiment_files, tmp_path / "run", model={"quantization": "4bit"})
    with pytest.raises(RecipeError, match="model.quantization '4bit'.*method.name is 'full'"):
        tuneforge.fine_tune(recipe)


def test_quantization_is_refused_where_it_cannot_run(bert64, sentiment_files, tmp_path, monkeypatch):
    from tuneforge.models import quantization

    with pytest.raises(RecipeError, match="no 4bit kernels"):
        quantization.check_quantization("4bit", torch.device("mps"))
    monkeypatch.setattr(quantization, "bitsandbytes_version", lambda: (0, 43))
    with pytest.raises(RecipeError, match="upgrade bitsandbytes"):
        quantization.check_quantization("8bit", torch.device("cpu"))
    monkeypatch.setattr(quantization, "bitsandbytes_version", lambda: None)
    with pytest.raises(RecipeError, match=r"pip install 'tuneforge\[quantization\]'"):
        tuneforge.fine_tune(qlora(bert64, sentiment_files, tmp_path / "run"))
    assert not (tmp_path / "run" / "recipe.yaml").exists()
