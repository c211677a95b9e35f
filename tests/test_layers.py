import pytest
import torch
from transformers import (AutoModelForSequenceClassification, BertConfig, DistilBertConfig, ElectraConfig,
                          MPNetConfig, RobertaConfig)

from tuneforge.models.layers import find_layer_groups

SMALL = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32, max_position_embeddings=40)

CONFIGS = {
    "bert": (BertConfig(num_hidden_layers=3, **SMALL), "bert.encoder.layer"),
    "roberta": (RobertaConfig(num_hidden_layers=3, pad_token_id=1, **SMALL), "roberta.encoder.layer"),
    "electra": (ElectraConfig(num_hidden_layers=3, embedding_size=8, **SMALL), "electra.encoder.layer"),
    "mpnet": (MPNetConfig(num_hidden_layers=3, **SMALL), "mpnet.encoder.layer"),
    "distilbert": (DistilBertConfig(vocab_size=64, dim=16, n_layers=3, n_heads=2, hidden_dim=32,
                                    max_position_embeddings=40), "distilbert.transformer.layer"),
}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_groups_are_found_from_structure(arch):
    config, prefix = CONFIGS[arch]
    config.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    groups = find_layer_groups(model)
    assert groups.order == ["embeddings", "layer.0", "layer.1", "layer.2", "head"]
    assert groups.blocks_prefix == prefix
    every = [n for n, _ in model.named_parameters()]
    assigned = [n for names in groups.params.values() for n in names]
    assert sorted(assigned) == sorted(every)  # each parameter in exactly one group
    assert any("word_embeddings" in n for n in groups.params["embeddings"])
    assert all(n.startswith(prefix + ".1.") for n in groups.params["layer.1"])
    if arch == "mpnet":  # shared by all blocks: input-side, not head
        assert "mpnet.encoder.relative_attention_bias.weight" in groups.params["embeddings"]
    head_out = [n for n in groups.params["head"] if n.endswith("weight")][-1]
    assert dict(model.named_parameters())[head_out].shape[0] == 3  # the new classifier is in the head
