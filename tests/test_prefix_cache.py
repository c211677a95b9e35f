"""Frozen-prefix caching (engine/prefix_cache.py): the frozen embeddings and lowest blocks computed once must give
the weights that recomputing them every step gives, and must never serve a stale or unknown row."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from conftest import make_tiny_bert, tiny_recipe
from tuneforge.engine.prefix_cache import FrozenPrefixCache, embedding_owners
from tuneforge.engine.runtime import CPU
from tuneforge.models.layers import find_blocks


@pytest.fixture(scope="module")
def bert3(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert3"), layers=3)


def _train(model_dir, files, out, method, **training):
    result = tuneforge.fine_tune(tiny_recipe(model_dir, files, out, method=method,
                                             training={"epochs": 3, "lr": 1e-2, **training}))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return load_file(result.model_dir / "model.safetensors"), summary, result


@pytest.mark.parametrize("method, blocks", [
    ({"name": "head"}, [3]),
    ({"name": "freeze", "freeze_layers": 2, "freeze_embeddings": True}, [2]),
    ({"name": "gradual"}, [3, 2, 1]),  # rebuilt at every unfreezing stage, dropped once the embeddings train
])
def test_cached_prefix_gives_the_weights_recomputing_gives(bert3, sentiment_files, tmp_path, method, blocks):
    cached, summary, result = _train(bert3, sentiment_files, tmp_path / "cached", method)
    recomputed, plain, plain_result = _train(bert3, sentiment_files, tmp_path / "plain", method,
                                             cache_frozen_prefix=False)
    assert [f["blocks"] for f in summary["frozen_prefix_cache"]] == blocks
    assert all(f["replayed_batches"] > 0 for f in summary["frozen_prefix_cache"])  # served, not just built
    assert summary["frozen_prefix_cache"][0]["rows"] == 64  # 48 training + 16 validation rows, all distinct
    assert "frozen_prefix_cache" not in plain
    for name in recomputed:
        torch.testing.assert_close(cached[name], recomputed[name], rtol=0, atol=1e-6, msg=name)
    for split, metrics in plain_result.metrics.items():
        assert result.metrics[split] == pytest.approx(metrics, abs=1e-6)


def test_full_fine_tuning_and_trainable_embeddings_are_not_cached(bert3, sentiment_files, tmp_path):
    for i, method in enumerate(({"name": "full"}, {"name": "freeze", "freeze_layers": 2})):
        _, summary, _ = _train(bert3, sentiment_files, tmp_path / str(i), method, epochs=1)
        assert "frozen_prefix_cache" not in summary


def test_a_large_cache_lives_in_the_run_folder_and_is_removed(bert3, sentiment_files, tmp_path):
    cached, summary, result = _train(bert3, sentiment_files, tmp_path / "disk", {"name": "head"}, cache_memory_gb=0)
    assert summary["frozen_prefix_cache"][0]["on_disk"]
    assert not list((result.run_dir / "cache").glob("*"))  # the file goes when training ends
    in_memory, _, _ = _train(bert3, sentiment_files, tmp_path / "memory", {"name": "head"})
    for name in in_memory:
        torch.testing.assert_close(cached[name], in_memory[name], rtol=0, atol=0)


def _frozen_model(model_dir):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    for p in model.bert.parameters():
        p.requires_grad_(False)
    model.bert.eval()
    return model


class _Rows:
    """A split of fixed token rows, as the cache reads them."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    @property
    def lengths(self):
        return [len(r) for r in self.rows]

    def batch(self, indices, pad_id, augment=None):
        rows = [self.rows[i] for i in indices]
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([r + [pad_id] * (width - len(r)) for r in rows]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])}


def _computed(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_replay_serves_known_rows_and_computes_unknown_or_stale_ones(bert3, tmp_path):
    model = _frozen_model(bert3)
    rows = _Rows([[2, 5, 6, 3], [2, 7, 3], [2, 8, 9, 10, 11, 3]])
    cache = FrozenPrefixCache(model, CPU, 2, 0, 2**30, tmp_path)
    cache.watch(rows)
    cache.refresh()
    assert cache.depth == 3 and len(cache.rows) == 3
    model.eval()
    batch = rows.batch([2, 0], 0)  # another order and padding than the fill's
    expected = _computed(model, batch)  # (a batch computed while the cache is live is replayed: compare below)
    cache.enabled = False
    really = _computed(model, batch)
    cache.enabled = True
    torch.testing.assert_close(expected, really, rtol=0, atol=1e-5)
    assert cache.hits >= 1

    unknown = _Rows([[2, 5, 6, 3], [2, 12, 13, 3]]).batch([0, 1], 0)
    misses = cache.misses
    out = _computed(model, unknown)
    assert cache.misses == misses + 1  # one unknown row: the whole batch computed
    cache.enabled = False
    torch.testing.assert_close(out, _computed(model, unknown), rtol=0, atol=0)
    cache.enabled = True

    with torch.no_grad():  # a prefix weight changed in place: its version counter moved, the store is stale
        model.bert.embeddings.word_embeddings.weight[5] += 1.0
    stale = _computed(model, batch)
    cache.enabled = False
    torch.testing.assert_close(stale, _computed(model, batch), rtol=0, atol=0)
    cache.enabled = True
    assert not torch.equal(stale, expected)  # a stale replay would give exactly the old logits
    cache.refresh()  # rebuilt from the new weights
    torch.testing.assert_close(_computed(model, batch), stale, rtol=0, atol=1e-5)
    cache.close()
    assert not any("forward" in vars(b) for b in find_blocks(model)[1])  # the blocks' own forward again


def test_embedding_dropout_outside_the_embedding_modules_prevents_caching():
    from transformers import GPT2Config, GPT2LMHeadModel

    with_dropout = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert embedding_owners(with_dropout, find_blocks(with_dropout)[0]) == []  # transformer.drop runs first
    without = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32, embd_pdrop=0.0))
    owners = embedding_owners(without, find_blocks(without)[0])
    assert {type(m).__name__ for m in owners} == {"Embedding"}
