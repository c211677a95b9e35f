"""On a CUDA GPU (skipped elsewhere; `benchmarks/gpu_vs_trainer.py` runs these first): training on the device in
bf16 and fp16, exact resume with the CUDA generator in the checkpoint, the attention choice, QLoRA, and a model
trained on the GPU predicting the same on the CPU."""
from __future__ import annotations

import pytest
import torch

import tuneforge

from conftest import make_tiny_bert, tiny_recipe
from helpers import InterruptAt
from test_engine import assert_same_weights, weights

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_on_the_gpu_resumes_exactly(precision, tiny_bert, sentiment_files, tmp_path):
    # dropout on: the CUDA generator's state must be in the checkpoint for the resumed run to draw the same masks
    training = {"device": "cuda", "precision": precision, "checkpoint_every": 2, "epochs": 2}
    full = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "full", training=training))
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "cut", training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(5)])
    rng = torch.load(tmp_path / "cut" / "checkpoints" / "step-00000004" / "rng.pt", weights_only=True)
    assert "cuda" in rng["ranks"][0]
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))


def test_a_gpu_trained_model_predicts_alike_on_cpu_and_gpu(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"device": "cuda"}))
    texts = ["good film", "dull plot", "a lovely story"]
    on_gpu = tuneforge.predict(r.run_dir, texts=texts, device="cuda")
    on_cpu = tuneforge.predict(r.run_dir, texts=texts, device="cpu")
    for a, b in zip(on_gpu, on_cpu):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)


class _Where:
    def on_train_start(self, loop):
        self.device = next(loop.model.parameters()).device
        self.kernel = loop.model.config._attn_implementation


def test_auto_attention_on_the_gpu_is_fast_and_the_model_lives_there(tiny_bert, sentiment_files, tmp_path):
    seen = _Where()
    tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                    training={"precision": "bf16", "epochs": 1}), callbacks=[seen])
    assert seen.device.type == "cuda"  # training.device auto
    assert seen.kernel in ("sdpa", "flash_attention_2")


def test_qlora_on_the_gpu(sentiment_files, tmp_path):
    pytest.importorskip("bitsandbytes")
    from test_quantization import QuantizedNames

    kinds = QuantizedNames()
    bert64 = make_tiny_bert(tmp_path / "bert64", dropout=0.0, hidden=64)
    r = tuneforge.fine_tune(tiny_recipe(bert64, sentiment_files, tmp_path / "run",
                                        model={"quantization": "4bit"}, method={"name": "lora"},
                                        training={"device": "cuda", "precision": "bf16", "epochs": 2, "lr": 1e-2}),
                            callbacks=[kinds])
    assert kinds.names
    report = tuneforge.merge(r.run_dir)
    assert report.quantized_max_abs_diff is not None
