"""Optimizer parameter groups: per layer group learning rates, no weight decay on biases and norms.

Every parameter of the model goes into the optimizer from the start, keyed by name, even while frozen:
AdamW skips parameters without gradients, so gradual unfreezing needs no optimizer surgery and a resumed
run finds the same groups in the same order.
"""
from __future__ import annotations

import torch.nn as nn

from ..models.layers import LayerGroups


def no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)) or \
            "norm" in type(module).__name__.lower()
        for pname, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if is_norm or pname.endswith("bias") or p.ndim < 2:
                names.add(full)
    return names


def group_learning_rates(groups: LayerGroups, lr: float, head_lr: float | None, layer_lr_decay: float | None,
                         group_lr: dict[str, float]) -> dict[str, float]:
    """lr per layer group: head_lr for the head, lr * decay**k for the k-th group below it, explicit overrides."""
    rates = {}
    below_head = [g for g in groups.order if g != "head"][::-1]  # top block first
    for k, g in enumerate(below_head, start=1):
        rates[g] = lr * (layer_lr_decay ** k if layer_lr_decay else 1.0)
    if "head" in groups.order:
        rates["head"] = head_lr if head_lr is not None else lr
    rates.update(group_lr)
    return rates


def build_param_groups(model: nn.Module, groups: LayerGroups, rates: dict[str, float], weight_decay: float) -> list[dict]:
    no_decay = no_decay_names(model)
    group_of = groups.group_of()
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        g = group_of.get(name, "head")
        buckets.setdefault((g, name in no_decay), []).append((name, p))
    param_groups = []
    for g in groups.order:
        for decayed in (True, False):
            items = buckets.get((g, not decayed))
            if not items:
                continue
            param_groups.append({
                "name": f"{g}{'' if decayed else '.no_decay'}",
                "params": [p for _, p in items],
                "param_names": [n for n, _ in items],
                "lr": rates[g],
                "weight_decay": weight_decay if decayed else 0.0,
            })
    return param_groups
