"""Checks every recipe value goes through, whatever its section: no yes/no value where a number is expected (Python
and pydantic's lax mode read `true` as 1), no infinite or NaN number, and learning rates that are finite and
above 0."""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator

LR_HINT = "typical rates are 1e-5 to 1e-3 (full fine-tuning about 5e-5, LoRA about 1e-3)"


def _lr(v: float) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"a learning rate must be a finite number above 0, got {_shown(v)}; {LR_HINT}")
    return v


_LR_CHECK = AfterValidator(_lr)
LearningRate = Annotated[float, _LR_CHECK]  # training.lr, head_lr, method.group_lr, adapt.lr, self_training.lr


def _shown(v: Any) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return ".nan" if math.isnan(v) else (".inf" if v > 0 else "-.inf")
    return repr(v)


def _leaves(ann: Any) -> set:
    """The plain types an annotation is made of: Optional[list[int]] -> {NoneType, list, int}."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _leaves(get_args(ann)[0])
    if origin is Literal:
        return {type(a) for a in get_args(ann)}
    if origin is None:
        return {ann}
    found = {origin} if origin is not Union else set()
    for arg in get_args(ann):
        if arg is not Ellipsis:
            found |= _leaves(arg)
    return found


def _literals(ann: Any) -> list:
    """The values of the Literal types in an annotation."""
    if get_origin(ann) is Literal:
        return list(get_args(ann))
    return [v for arg in get_args(ann) for v in _literals(arg)]


def _is_lr(field) -> bool:
    if any(m is _LR_CHECK for m in field.metadata):
        return True
    return any(m is _LR_CHECK for arg in get_args(field.annotation) for m in getattr(arg, "__metadata__", ()))


def _scalars(v: Any):
    """The scalars in a value: itself, or those inside its lists and mappings (nested sections are left to their
    own checks)."""
    if isinstance(v, (list, tuple, dict)):
        for x in (v.values() if isinstance(v, dict) else v):
            if not isinstance(x, dict):
                yield from _scalars(x)
    else:
        yield v


def check_value(field_name: str, field, v: Any) -> Any:
    """Refuse a yes/no value for a key that takes numbers, and a non-finite number anywhere (learning rates say
    why in their own words)."""
    leaves = _leaves(field.annotation)
    numbers = bool(leaves & {int, float})
    for x in _scalars(v):
        if isinstance(x, bool) and numbers and bool not in leaves:
            words = [a for a in _literals(field.annotation) if isinstance(a, str)]
            takes = "a number" + (f" or {' / '.join(words)}" if words else "") + (" or text" if str in leaves and not words else "")
            raise ValueError(f"got {_shown(x)}, a yes/no value, where {field_name} takes {takes} (YAML reads true, "
                             f"false, yes, no, on and off as yes/no); write the number itself, e.g. {field_name}: 1"
                             + (", or quote text: 'yes'" if str in leaves and not words else ""))
        if isinstance(x, float) and not math.isfinite(x) and numbers:
            if _is_lr(field):
                raise ValueError(f"a learning rate must be a finite number above 0, got {_shown(x)}; {LR_HINT}")
            raise ValueError(f"got {_shown(x)}, which is not a finite number; give a finite value for {field_name}")
    return v
