"""Optional stages of a run, one module each, named by their recipe section in STAGES (in the order their hooks
run)."""
from __future__ import annotations

from .adapt import AdaptStage
from .base import RunContext, Stage
from .distill import DistillStage
from .weak import WeakStage

STAGES: dict[str, type[Stage]] = {"adapt": AdaptStage, "distill": DistillStage, "weak": WeakStage}


def stages_for(recipe) -> list[Stage]:
    """The stages the recipe asks for."""
    return [cls(recipe) for key, cls in STAGES.items() if getattr(recipe, key) is not None]


__all__ = ["STAGES", "RunContext", "Stage", "stages_for"]
