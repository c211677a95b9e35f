"""Reading a recipe: YAML files, dicts and `key=value` overrides, validated, with every problem reported at once
(the user's value and a fix; unknown keys get the nearest valid key suggested)."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import RecipeError
from .schema import Recipe

def _valid_keys(model_cls: type[BaseModel]) -> list[str]:
    return list(model_cls.model_fields)


def _section_class(loc: tuple) -> Optional[type[BaseModel]]:
    cls: Any = Recipe
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return None
        cls = sub
    return cls


def _format_error(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("int", "str"))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _section_class(loc[:-1])
        valid = _valid_keys(parent) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
        return f"{key}: unknown key{hint} (valid keys here: {', '.join(valid)})"
    if err["type"] == "missing":
        return f"{key}: required but missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and err["type"] not in ("value_error",) and not isinstance(err["input"], dict):
        return f"{key}: {msg} (got {err['input']!r})"
    return f"{key}: {msg}"


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError([f"the recipe must be a mapping of sections ({SECTIONS}), got {type(data).__name__}"], source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError([_format_error(err) for err in e.errors()], source) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.lr=3e-5` -> (['training', 'lr'], 3e-5). The value is read as YAML."""
    if "=" not in text:
        raise RecipeError([f"override {text!r}: expected key=value, e.g. training.lr=3e-5"], "command line")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError([f"override {text!r}: empty key"], "command line")
    parsed = yaml.safe_load(value) if value.strip() else None
    return path, _floatify(parsed)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return data


def _floatify(node):
    """YAML 1.1 leaves `5e-5` (no dot) as a string; turn such strings into floats."""
    if isinstance(node, dict):
        return {k: _floatify(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floatify(v) for v in node]
    if isinstance(node, str):
        if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", node.strip()):
            return float(node)
    return node


def load_recipe(source: Union[str, Path, dict, Recipe], overrides: Optional[list[str]] = None) -> Recipe:
    """Read a recipe from a YAML file, a dict or a Recipe, apply `key=value` overrides, validate."""
    overrides = list(overrides or [])
    if isinstance(source, Recipe):
        if not overrides:
            return source
        data, name = source.model_dump(mode="json"), "recipe"
    elif isinstance(source, dict):
        data, name = source, "recipe"
    else:
        path = Path(source)
        data, name = read_recipe_file(path), str(path)
    data = apply_overrides(_floatify(data), overrides)
    return parse_recipe(data, name)


SECTIONS = "model, task, data, method, training, output"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_document(self, node):
        problems: list[str] = []
        _find_repeats(node, [], problems)
        if problems:
            raise _RepeatedKeys(problems)
        return super().construct_document(node)


class _RepeatedKeys(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems


def _find_repeats(node, path: list[str], problems: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                name = ".".join([*path, key.value])
                line = key.start_mark.line + 1
                if (key.tag, key.value) in seen:
                    first = seen[key.tag, key.value]
                    where = f"on line {first} and on line {line}" if first != line else f"on line {line}"
                    problems.append(f"{name}: given twice, {where} (the last would silently win); keep one of them")
                else:
                    seen[key.tag, key.value] = line
                _find_repeats(value, [*path, key.value], problems)
            else:
                _find_repeats(value, path, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _find_repeats(item, [*path[:-1], f"{path[-1]}[{i}]"] if path else [f"[{i}]"], problems)


def read_yaml(path: Path, what: str = "recipe") -> Any:
    """A YAML file's content, every problem a RecipeError naming the file: missing, a folder, unreadable, not UTF-8,
    not YAML, a key given twice."""
    source = str(path)
    if path.is_dir():
        inside = f" (a run folder's own is {path / 'recipe.yaml'})" if (path / "recipe.yaml").is_file() else ""
        raise RecipeError([f"{source!r} is a folder; give the {what} YAML file{inside}"], source)
    if not path.is_file():
        raise RecipeError([f"no {what} file at {source!r}; check the path"], source)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RecipeError([f"cannot read {source!r}: {e.strerror}; check the file's permissions"], source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise RecipeError([f"not UTF-8 text: byte 0x{raw[e.start]:02x} on line {line}, column {column} (byte offset "
                           f"{e.start}); save the file as UTF-8"], source) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _RepeatedKeys as e:
        raise RecipeError(e.problems, source) from None
    except yaml.YAMLError as e:
        raise RecipeError([f"not valid YAML: {e}"], source) from None


def read_recipe_file(path: Path) -> dict:
    """A recipe file's sections, with relative data paths resolved against the recipe's folder."""
    data = read_yaml(path)
    source = str(path)
    if data is None:
        raise RecipeError([f"the file is empty (or only comments); a recipe is a mapping of sections ({SECTIONS}) "
                           "and needs at least data:, e.g. `data: {train: train.csv}`"], source)
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a single text"}.get(type(data), f"a single {type(data).__name__} value")
        raise RecipeError([f"the recipe is {kind} ({_excerpt(data)}); it must be a mapping of sections ({SECTIONS}), "
                           "e.g. `data: {train: train.csv}` on the first line"], source)
    # Relative data paths in a recipe file are relative to the recipe's folder.
    return _resolve_data_paths(data, path.parent)


def _excerpt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _relative_to(base: Path, value: str) -> str:
    """A path written in a recipe file, resolved against the recipe's folder (unless it only exists as given)."""
    if Path(value).is_absolute():
        return value
    candidate = base / value
    return str(candidate.resolve()) if candidate.exists() or not Path(value).exists() else value


def _data_path(base: Path, value: str) -> str:
    """A data file or save_to_disk folder, resolved as `_relative_to` does; a Hub dataset name (org/name) that is no
    path, next to the recipe or here, stays a name."""
    from ..data.sources import looks_like_hub_name

    if Path(value).is_absolute() or (base / value).exists() or not looks_like_hub_name(value):
        return _relative_to(base, value)
    return value


def _resolve_data_paths(data: Any, base: Path) -> Any:
    """Data files, and a grpo reward's file or run directory, relative to the recipe's folder; stored absolute in
    the run's recipe.yaml, so evaluate and resume work from any folder."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    if isinstance(data.get("data"), dict):
        from ..assets import DATASETS
        section = dict(data["data"])
        for key in ("train", "validation", "test", "dataset"):
            value = section.get(key)
            if isinstance(value, str) and not (key == "dataset" and value in DATASETS):
                section[key] = _data_path(base, value)
        out["data"] = section
    weak = data.get("weak")
    if isinstance(weak, dict):
        out["weak"] = {**weak, **{k: _relative_to(base, weak[k]) for k in ("labeling_functions", "unlabeled")
                                  if isinstance(weak.get(k), str)}}
    distill = data.get("distill")
    if isinstance(distill, dict) and isinstance(distill.get("teacher"), str):
        from ..assets import MODEL_ALIASES
        teacher = distill["teacher"]  # a packaged model's alias, or a Hub ID, is a name, not a path
        named = teacher in MODEL_ALIASES or not ((base / teacher).exists() or Path(teacher).expanduser().exists())
        out["distill"] = {**distill, "teacher": teacher if named else _relative_to(base, teacher)}
    if isinstance(distill, dict) and distill.get("unlabeled"):
        from ..assets import UNLABELED_DATASETS
        files = distill["unlabeled"] if isinstance(distill["unlabeled"], list) else [distill["unlabeled"]]
        out["distill"] = {**out.get("distill", distill), "unlabeled": [
            f if f in UNLABELED_DATASETS or not isinstance(f, str) else _relative_to(base, f) for f in files]}
    adapt = data.get("adapt")
    if isinstance(adapt, dict) and adapt.get("data") is not None:
        files = adapt["data"] if isinstance(adapt["data"], list) else [adapt["data"]]
        out["adapt"] = {**adapt, "data": [f if f == "task" or not isinstance(f, str) else _relative_to(base, f)
                                          for f in files]}
    task = data.get("task")
    if isinstance(task, dict) and isinstance(task.get("reward"), str):
        where, sep, name = task["reward"].rpartition(":")
        if sep and where.endswith(".py"):
            out["task"] = {**task, "reward": f"{_relative_to(base, where)}:{name}"}
        elif not sep:
            out["task"] = {**task, "reward": _relative_to(base, task["reward"])}
    return out
