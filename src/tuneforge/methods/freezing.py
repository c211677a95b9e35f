"""Freezing plans for full, head-only, freeze-N/pattern and gradual (top-down) unfreezing."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch.nn as nn

from ..errors import RecipeError
from ..models.layers import LayerGroups


@dataclass
class FreezePlan:
    """Which groups are frozen at each unfreezing stage, plus name patterns frozen throughout."""
    groups: LayerGroups
    frozen_at_stage0: list[str]
    patterns: list[str] = field(default_factory=list)
    gradual: bool = False

    @property
    def num_stages(self) -> int:
        # Gradual: stage s has the top s+1 groups trainable; the last stage trains everything.
        return len(self.groups.order) if self.gradual else 1

    def frozen_groups(self, stage: int) -> set[str]:
        if not self.gradual:
            return set(self.frozen_at_stage0)
        trainable = self.groups.order[::-1][: stage + 1]
        return {g for g in self.groups.order if g not in trainable}

    def frozen_prefix(self, stage: int) -> list[str]:
        """Frozen groups counted from the input with nothing trainable below them (they can run in eval mode)."""
        frozen = self.frozen_groups(stage)
        prefix = []
        for g in self.groups.order:
            if g not in frozen:
                break
            prefix.append(g)
        return prefix


def _full(spec, groups):
    return FreezePlan(groups, [])


def _head(spec, groups):
    return FreezePlan(groups, [g for g in groups.order if g != "head"])


def _freeze(spec, groups):
    n = groups.num_blocks
    if spec.freeze_layers > n:
        raise RecipeError([f"method.freeze_layers: {spec.freeze_layers} is more than the model's {n} blocks; "
                           f"use at most {n} (or method: head)"])
    frozen = (["embeddings"] if spec.freeze_embeddings else []) + [f"layer.{i}" for i in range(spec.freeze_layers)]
    return FreezePlan(groups, frozen, patterns=list(spec.freeze_patterns))


def _gradual(spec, groups):
    return FreezePlan(groups, [], gradual=True)


METHODS = {"full": _full, "head": _head, "freeze": _freeze, "gradual": _gradual}


def build_plan(spec, groups: LayerGroups) -> FreezePlan:
    plan = METHODS[spec.name](spec, groups)
    unknown = [g for g in spec.group_lr if g not in groups.order]
    if unknown:
        raise RecipeError([f"method.group_lr: unknown group(s) {unknown}; this model's groups are {groups.order}"])
    return plan


def apply_plan(model: nn.Module, plan: FreezePlan, stage: int = 0) -> None:
    """Set requires_grad for every parameter from the plan at `stage`."""
    frozen = plan.frozen_groups(stage)
    group_of = plan.groups.group_of()
    matched = set()
    for name, p in model.named_parameters():
        by_pattern = False
        for pattern in plan.patterns:
            if fnmatch.fnmatchcase(name, pattern):
                by_pattern = True
                matched.add(pattern)
        p.requires_grad_(group_of.get(name) not in frozen and not by_pattern)
    unmatched = [p for p in plan.patterns if p not in matched]
    if unmatched:
        example = next(iter(dict(model.named_parameters())))
        raise RecipeError([f"method.freeze_patterns: {unmatched} match no parameter name "
                           f"(names look like {example!r}; patterns are globs, e.g. '*.attention.*')"])


def set_frozen_modules_eval(model: nn.Module, plan: FreezePlan, stage: int) -> None:
    """Put modules whose parameters all lie in the frozen prefix in eval mode.

    Nothing below them learns, so their dropout only costs time (1.9x slower head-only steps measured on
    MiniLM) and changes nothing a frozen layer could adapt to.
    """
    prefix = set(plan.frozen_prefix(stage))
    if not prefix:
        return
    group_of = plan.groups.group_of()
    names = {id(p): n for n, p in model.named_parameters()}

    def visit(module: nn.Module):
        own = [names[id(p)] for p in module.parameters()]
        if own and all(group_of.get(n) in prefix for n in own):
            module.eval()
            return
        for child in module.children():
            visit(child)

    visit(model)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total). PEFT keeps an untouched original of each module it trains fully (the head) beside
    the trained copy; that original is not part of the model that runs, so it is not counted."""
    params = [(n, p) for n, p in model.named_parameters() if ".original_module." not in n]
    return sum(_numel(p) for _, p in params if p.requires_grad), sum(_numel(p) for _, p in params)


def _numel(p) -> int:
    # A 4-bit weight is stored packed, two values per byte: count the values of the matrix it holds.
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return shape.numel() if shape is not None else p.numel()


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every batch-norm layer whose weights are frozen in eval mode.

    In train mode a batch norm normalizes with the batch's statistics and updates its running mean and variance,
    so a "frozen" block would still change: the statistics it was pre-trained with drift toward the new data,
    and the layers above see a shift they were not trained for. Frozen means frozen: running statistics stay
    as loaded and normalization uses them. (Called after every model.train().)
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
