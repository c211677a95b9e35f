"""Where adapters go, found from the architecture rather than from one model family's names.

Inside a transformer block, Hugging Face implementations register their linear layers in the order they
run: the attention's input projections (q, k, v, or one fused qkv), the attention's output projection, the
feed-forward's input projection(s) (up, and gate in gated MLPs), and the feed-forward's output projection.
The output projection is the block's last linear layer; the feed-forward inputs are the linears just before
it whose width equals its input width; the one before those is the attention output; the rest are the
attention inputs. This holds for BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, GPT-2 and Llama-style blocks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from ..errors import RecipeError
from ..models.layers import LayerGroups


def _linear_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # GPT-2's transposed linear


def conv_adaptable(module: nn.Module) -> bool:
    """A 2-D convolution PEFT can put LoRA / (IA)^3 beside: a plain nn.Conv2d, not grouped (depthwise).
    PEFT builds its adapter convolutions with the adapted layer's own type, so subclasses (such as the
    "same padding" convolutions of the EfficientNet package, which pad inside their forward) are left alone;
    tuneforge's EfficientNet-Lite swaps its pointwise ones for plain convolutions for this reason."""
    return type(module) is nn.Conv2d and module.groups == 1


def adaptable(module: nn.Module) -> bool:
    return _linear_like(module) or conv_adaptable(module)


def is_convolutional(model: nn.Module, blocks_prefix: str) -> bool:
    """Blocks made with convolutions (ResNet, EfficientNet, ConvNeXt) rather than attention + feed-forward:
    block 0 holds a 2-D convolution (a ViT's only convolution is its patch embedding, outside the blocks)."""
    block = model.get_submodule(blocks_prefix)[0]
    return any(isinstance(m, nn.Conv2d) for m in block.modules())


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.weight.shape[0]


def output_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.nf


@dataclass
class BlockRoles:
    """Names of a block's linear layers by role, relative to the block (e.g. 'attention.self.query')."""
    blocks_prefix: str             # e.g. 'bert.encoder.layer'
    attention_in: list[str]
    attention_out: str
    ffn_in: list[str]
    ffn_out: str

    @property
    def all(self) -> list[str]:
        return [*self.attention_in, self.attention_out, *self.ffn_in, self.ffn_out]

    def regex(self, names: list[str]) -> str:
        """A regular expression that PEFT full-matches against module names: these names in every block."""
        alternatives = "|".join(re.escape(n) for n in names)
        return rf"(.*\.)?{re.escape(self.blocks_prefix)}\.\d+\.({alternatives})"


def block_roles(model: nn.Module, groups: LayerGroups) -> BlockRoles:
    block = model.get_submodule(groups.blocks_prefix)[0]
    linears = [(name, m) for name, m in block.named_modules() if name and _linear_like(m)]
    if len(linears) < 3:
        raise RecipeError([f"{type(block).__name__} has {len(linears)} linear layer(s); tuneforge cannot tell its "
                           "attention and feed-forward layers apart. Set method.target_modules to the module names "
                           f"to adapt (this block's linears: {[n for n, _ in linears]})"])
    ffn_out_name, ffn_out = linears[-1]
    width = _in_features(ffn_out)
    k = len(linears) - 2
    ffn_in = []
    while k >= 1 and output_width(linears[k][1]) == width:
        ffn_in.insert(0, linears[k][0])
        k -= 1
    if not ffn_in or k < 1:
        raise RecipeError([f"{type(block).__name__}: could not find the feed-forward input layer(s) feeding "
                           f"{ffn_out_name!r}; set method.target_modules (this block's linears: {[n for n, _ in linears]})"])
    return BlockRoles(blocks_prefix=groups.blocks_prefix, attention_in=[n for n, _ in linears[:k]],
                      attention_out=linears[k][0], ffn_in=ffn_in, ffn_out=ffn_out_name)


_KEY = re.compile(r"(^|[._])(k|key|k_proj|k_lin)$")
_VALUE = re.compile(r"(^|[._])(v|value|v_proj|v_lin)$")


def ia3_attention_targets(roles: BlockRoles) -> list[str]:
    """(IA)^3 rescales keys and values; with a fused qkv projection (or unknown names) all attention inputs."""
    keys = [n for n in roles.attention_in if _KEY.search(n)]
    values = [n for n in roles.attention_in if _VALUE.search(n)]
    return keys + values if keys and values else list(roles.attention_in)


def auto_targets(method: str, roles: BlockRoles, placement: str = "houlsby") -> tuple[list[str], list[str]]:
    """(targets, feed-forward targets) relative to a block, for method `method`."""
    if method in ("lora", "dora"):
        return roles.all, []
    if method == "ia3":
        return [*ia3_attention_targets(roles), roles.ffn_out], [roles.ffn_out]
    if method == "bottleneck":
        return ([roles.attention_out, roles.ffn_out] if placement == "houlsby" else [roles.ffn_out]), []
    raise ValueError(method)


def matches(name: str, spec) -> bool:
    """PEFT's matching rule: a list holds name suffixes, a string is a regular expression on the full name."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def head_modules(model: nn.Module, groups: LayerGroups) -> list[str]:
    """Modules holding the head group's parameters (pooler / final norm and the new task head), which train
    fully beside an adapter and are saved with it."""
    base = getattr(model, "base_model_prefix", "")
    names: list[str] = []
    for param in groups.params.get("head", []):
        parts = param.split(".")
        module = ".".join(parts[:2]) if parts[0] == base and len(parts) > 2 else parts[0]
        if module not in names:
            names.append(module)
    return names
