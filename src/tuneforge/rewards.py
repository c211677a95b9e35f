"""GRPO's reward from `task.reward`: the user's Python function, or a trained reward-model run."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from .errors import RecipeError


def load_reward(spec: str) -> Callable[..., list]:
    """`task.reward` as a callable(prompts, completions, **columns) -> rewards: 'file.py:name' or
    'package.module:name' (the user's own code, named in their recipe), or a reward-model run directory."""
    if ":" not in spec and Path(spec).is_dir():
        from .data.preference import PreferenceExample
        from .scoring import Scorer

        scorer = Scorer(spec)

        def score(prompts, completions, **_):
            examples = [PreferenceExample(p, c, c, f"completion {i + 1}") for i, (p, c) in enumerate(zip(prompts, completions))]
            return scorer.scores(examples, list(completions))
        return score
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise RecipeError([f"task.reward: {spec!r} is neither 'file.py:function', 'module:function' nor a "
                           "reward-model run directory"])
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise RecipeError([f"task.reward: no file {where!r}"])
            print(f"running Python code from {path.resolve()} (task.reward)", file=sys.stderr, flush=True)
            module_spec = importlib.util.spec_from_file_location(f"tuneforge_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            print(f"importing Python module {where} (task.reward)", file=sys.stderr, flush=True)
            module = importlib.import_module(where)
    except RecipeError:
        raise
    except Exception as e:  # the user's module failed to import: say where
        raise RecipeError([f"task.reward: importing {where!r} failed: {type(e).__name__}: {e}"]) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RecipeError([f"task.reward: {where!r} has no function {name!r}"])
    return fn
