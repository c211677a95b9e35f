"""A search space over recipe keys, read from YAML, sampled through an Optuna trial.

    training.lr:     {low: 1.0e-5, high: 1.0e-3, log: true}     # float (log scale)
    training.epochs: {low: 1, high: 4}                          # int (both bounds integers)
    method.name:     {choices: [full, freeze, lora]}            # categorical
    method.freeze_layers: {low: 1, high: 5, when: {method.name: freeze}}
    method.r:        {choices: [4, 8, 16], when: {method.name: [lora, dora]}}

Any recipe key can be searched. `when` makes a parameter conditional on another one's value, so options a
method does not read are only drawn for the method that reads it (the recipe refuses them otherwise).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from ..errors import RecipeError
from ..recipe import Recipe, apply_overrides, parse_recipe
from ..recipe.loading import read_yaml

Value = Union[int, float, str, bool, list, None]


@dataclass
class Param:
    key: str                      # a recipe key, e.g. training.lr
    kind: str                     # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: list = field(default_factory=list)
    when: dict[str, list] = field(default_factory=dict)  # key -> values of it under which this one is drawn

    def active(self, values: dict[str, Value]) -> bool:
        return all(k in values and values[k] in allowed for k, allowed in self.when.items())

    def grid(self) -> list:
        """The values a grid search tries: the choices, or every step of an int / stepped float range."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None and self.kind == "float":
            raise RecipeError([f"space {self.key}: a grid search needs a finite set of values; give `choices`, or a "
                               "`step` for this float range"])
        step = self.step or 1
        values, x = [], self.low
        while x <= self.high + 1e-12:
            values.append(int(x) if self.kind == "int" else round(x, 12))
            x += step
        return values


def read_space(source: Union[str, Path, dict], recipe: Optional[Recipe] = None) -> list[Param]:
    """Parameters in file order; each key must be a recipe key (checked by building a recipe with it set)."""
    where = str(source) if not isinstance(source, dict) else "space"
    if isinstance(source, dict):
        data = source
    else:
        # Missing, a folder, not UTF-8, not YAML, a key given twice: each named as for a recipe.
        data = read_yaml(Path(source), "search space") or {}
    if not isinstance(data, dict) or not data:
        raise RecipeError(["the space must map recipe keys (e.g. training.lr) to their ranges or choices"], where)
    problems: list[str] = []
    params = []
    for key, spec in data.items():
        try:
            params.append(_param(str(key), spec))
        except ValueError as e:
            problems.append(f"{key}: {e}")
    keys = {p.key for p in params}
    for p in params:
        for k in p.when:
            if k not in keys:
                problems.append(f"{p.key}: `when` names {k!r}, which is not a searched key; search it too, or drop the "
                                "condition")
    if recipe is not None and not problems:
        problems += _unknown_keys(params, recipe)
    if problems:
        raise RecipeError(problems, where)
    return params


def _param(key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise ValueError("expected a mapping: {low, high[, log, step]} or {choices: [...]}")
    unknown = set(spec) - {"low", "high", "log", "step", "choices", "when"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; use low, high, log, step, choices, when")
    when = {str(k): (v if isinstance(v, list) else [v]) for k, v in (spec.get("when") or {}).items()}
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ValueError("choices must be a non-empty list")
        if "low" in spec or "high" in spec:
            raise ValueError("give either choices or low/high, not both")
        return Param(key, "categorical", choices=list(spec["choices"]), when=when)
    if "low" not in spec or "high" not in spec:
        raise ValueError("a range needs low and high (or give choices)")
    low, high = spec["low"], spec["high"]
    if isinstance(low, str) or isinstance(high, str):
        try:
            low, high = float(low), float(high)
        except ValueError:
            raise ValueError(f"low and high must be numbers, got {spec['low']!r}, {spec['high']!r}") from None
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ValueError("a log-scale range needs low > 0")
    kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool) else "float"
    step = spec.get("step")
    if step is not None and log:
        raise ValueError("step and log cannot be combined")
    return Param(key, kind, float(low) if kind == "float" else low, float(high) if kind == "float" else high,
                 log, step, when=when)


def _recipe_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and k not in ("group_lr",):
            keys += _recipe_keys(v, f"{prefix}{k}.")
    return keys


def _unknown_keys(params: list[Param], recipe: Recipe) -> list[str]:
    """Searched keys that are not recipe keys, with the nearest valid one."""
    import difflib

    valid = _recipe_keys(recipe.model_dump(mode="json"))
    problems = []
    for p in params:
        if p.key not in valid:
            close = difflib.get_close_matches(p.key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else " (keys look like training.lr, method.r)"
            problems.append(f"{p.key}: not a recipe key{hint}")
    return problems


def suggest(trial, params: list[Param]) -> dict[str, Value]:
    """One value per active parameter, in file order (a condition can only name a parameter drawn before it)."""
    values: dict[str, Value] = {}
    for p in params:
        if not p.active(values):
            continue
        if p.kind == "categorical":
            values[p.key] = trial.suggest_categorical(p.key, p.choices)
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.key, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return values


def overrides_for(values: dict[str, Value]) -> list[str]:
    """`key=value` overrides (values written as YAML, so lists and strings survive)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()]


def recipe_with(recipe: Recipe, values: dict[str, Value]) -> Recipe:
    """The recipe with a trial's values set: the recipe's own checks apply (a RecipeError names the problem)."""
    return parse_recipe(apply_overrides(recipe.model_dump(mode="json"), overrides_for(values)), "trial")
