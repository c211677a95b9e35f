"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), which PEFT does not provide.

An adapter is a small residual MLP, h + up(act(down(h))), applied to the output of a block's output
projection: before the dropout, residual sum and layer norm that follow it, which is where Houlsby places
it. Houlsby placement adapts the attention output and the feed-forward output of every block; Pfeiffer
placement only the feed-forward output. `up` starts at zero, so training starts from the pre-trained model.

The adapter is a child module of the layer it follows (`...output.dense.bottleneck.down.weight`) and runs
from a forward hook, so the pre-trained weights keep their names and the base model is untouched.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .targets import output_width

CONFIG_NAME = "bottleneck_config.json"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}


@dataclass
class BottleneckConfig:
    targets: list[str]                 # full module names the adapters follow
    bottleneck_size: int = 64
    non_linearity: str = "relu"
    dropout: float = 0.1
    placement: str = "houlsby"
    modules_to_save: list[str] = field(default_factory=list)  # the head, trained fully and saved with the adapter
    base_model_name_or_path: str = ""
    format: str = "tuneforge-bottleneck"
    version: int = 1

    def to_json(self) -> dict:
        return asdict(self)


class Bottleneck(nn.Module):
    def __init__(self, dim: int, size: int, non_linearity: str, dropout: float):
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.act = ACTIVATIONS[non_linearity]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)  # identity at the start
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.dropout(self.act(self.down(hidden))))


def _apply_adapter(module: nn.Module, inputs, output):
    adapter = module.bottleneck
    return adapter(output) if adapter.enabled else output


def inject(model: nn.Module, config: BottleneckConfig) -> None:
    """Add an adapter after each target module."""
    for name in config.targets:
        target = model.get_submodule(name)
        if hasattr(target, "bottleneck"):
            raise ValueError(f"{name} already has a bottleneck adapter")
        target.add_module("bottleneck", Bottleneck(output_width(target), config.bottleneck_size,
                                                   config.non_linearity, config.dropout))
        target.register_forward_hook(_apply_adapter)


def adapters(model: nn.Module) -> list[Bottleneck]:
    return [m for m in model.modules() if isinstance(m, Bottleneck)]


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Run the model without its bottleneck adapters (the head stays as trained)."""
    found = adapters(model)
    for a in found:
        a.enabled = False
    try:
        yield model
    finally:
        for a in found:
            a.enabled = True
