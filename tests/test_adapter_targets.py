"""Where adapters go, found from each architecture's structure; recipe checks of adapter options."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_recipe
from test_layers import CONFIGS
from transformers import AutoModelForSequenceClassification, GPT2Config, LlamaConfig

import tuneforge
from tuneforge.adapters import attach_adapter
from tuneforge.adapters.targets import block_roles, head_modules
from tuneforge.models.layers import find_layer_groups
from tuneforge.recipe import MethodSpec

EXPECTED = {  # attention inputs, attention output, feed-forward inputs, feed-forward output
    "bert": (["attention.self.query", "attention.self.key", "attention.self.value"], "attention.output.dense",
             ["intermediate.dense"], "output.dense"),
    "distilbert": (["attention.q_lin", "attention.k_lin", "attention.v_lin"], "attention.out_lin", ["ffn.lin1"], "ffn.lin2"),
    "mpnet": (["attention.attn.q", "attention.attn.k", "attention.attn.v"], "attention.attn.o", ["intermediate.dense"],
              "output.dense"),
    "gpt2": (["attn.c_attn"], "attn.c_proj", ["mlp.c_fc"], "mlp.c_proj"),
    "llama": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "self_attn.o_proj",
              ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"),
}


def _model(arch):
    if arch == "gpt2":
        config = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=40, pad_token_id=0)
    elif arch == "llama":
        config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    else:
        config = CONFIGS[arch][0]
    config.num_labels = 2
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_block_roles_are_found_from_structure(arch):
    model = _model(arch)
    roles = block_roles(model, find_layer_groups(model))
    assert (roles.attention_in, roles.attention_out, roles.ffn_in, roles.ffn_out) == EXPECTED[arch]


@pytest.mark.parametrize("arch", sorted(EXPECTED))
@pytest.mark.parametrize("method", ["lora", "ia3", "bottleneck"])
def test_auto_targets_cover_every_block_and_never_the_head(arch, method):
    model = _model(arch)
    groups = find_layer_groups(model)
    head = head_modules(model, groups)
    wrapped = attach_adapter(model, MethodSpec(name=method), groups, seed=0)
    adapted = {n.rsplit(".", 1)[0] if method == "bottleneck" else n
               for n, _ in wrapped.named_modules() if n.endswith((".bottleneck", ".lora_A", ".ia3_l"))}
    per_block = {n.split(groups.blocks_prefix + ".")[1].split(".", 1)[1] for n in adapted}
    blocks = {n.split(groups.blocks_prefix + ".")[1].split(".", 1)[0] for n in adapted}
    assert blocks == {str(i) for i in range(groups.num_blocks)}
    assert not any(h in n for n in adapted for h in head)
    roles = EXPECTED[arch]
    wanted = {"lora": [*roles[0], roles[1], *roles[2], roles[3]], "bottleneck": [roles[1], roles[3]]}
    if method in wanted:
        assert {p.rsplit(".lora_A", 1)[0] for p in per_block} == set(wanted[method])
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("score" in n or "classifier" in n for n in trainable)  # the head trains


def _ia3_layers(wrapped) -> dict[str, bool]:
    """Block 0's (IA)^3 layers, relative name -> scaled on the input (feed-forward) or not."""
    from peft.tuners.ia3 import IA3Layer
    return {n.split("layer.0.")[1]: m.is_feedforward for n, m in wrapped.named_modules()
            if isinstance(m, IA3Layer) and "layer.0." in n}


@pytest.mark.parametrize("targets", ["auto", ["key", "value", "output.dense"], r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)"])
def test_ia3_scales_keys_values_and_the_feed_forward_output(targets):
    model = _model("bert")
    wrapped = attach_adapter(model, MethodSpec(name="ia3", target_modules=targets), find_layer_groups(model), 0)
    layers = _ia3_layers(wrapped)
    if targets == "auto" or isinstance(targets, str):
        assert layers == {"attention.self.key": False, "attention.self.value": False, "output.dense": True}
    else:  # the suffix 'output.dense' also names the attention output: both are adapted, only one is feed-forward
        assert layers == {"attention.self.key": False, "attention.self.value": False,
                          "attention.output.dense": False, "output.dense": True}


def test_adapter_options_are_checked(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(tuneforge.RecipeError, match=r"does not read r \(r is read by lora/dora\).*set method.name: lora"):
        tuneforge.load_recipe(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "a", method={"name": "full", "r": 4}))
    bad_target = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "b",
                             method={"name": "lora", "target_modules": ["qkv_proj"]})
    with pytest.raises(tuneforge.RecipeError, match=r"method.target_modules: \['qkv_proj'\] matches no linear layer"):
        tuneforge.fine_tune(bad_target)
    assert not (tmp_path / "b").exists()
    too_long = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "c", model={"max_length": 60},
                           method={"name": "prefix", "num_virtual_tokens": 8})
    with pytest.raises(tuneforge.RecipeError, match="max_length 60 \\+ method.num_virtual_tokens 8"):
        tuneforge.fine_tune(too_long)


def test_user_targets_and_learning_rate_defaults(tiny_bert, sentiment_files, tmp_path):
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "q", method={"name": "lora", "target_modules": ["query", "value"]})
    recipe["training"].pop("lr")
    report = tuneforge.validate(recipe)
    r = tuneforge.load_recipe(recipe)
    assert r.lr == pytest.approx(1e-3)  # LoRA's default rate when training.lr is not given
    # rank 8 on query and value of 2 blocks (32 -> 32), plus the head (pooler 32x32+32, classifier 32x2+2)
    assert report["trainable_parameters"] == 2 * 2 * 8 * (32 + 32) + (32 * 32 + 32) + (32 * 2 + 2)
