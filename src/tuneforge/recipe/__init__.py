"""The recipe: what a run does, as one validated document (model, task, data, method, training, the optional
stages, output). Sections in sections.py, method.py and stages.py; the whole in schema.py; reading in loading.py."""
from .loading import apply_overrides, load_recipe, parse_override, parse_recipe
from .method import ADAPTER_METHODS, DEFAULT_LR, EarlyStoppingSpec, MethodSpec, TrainingSpec
from .schema import Recipe
from .sections import AugmentSpec, DataSpec, ModelSpec, OutputSpec, TaskSpec
from .stages import AdaptSpec, DistillSpec, RuleSpec, SelfTrainingSpec, WeakSpec

__all__ = ["Recipe", "load_recipe", "parse_recipe", "parse_override", "apply_overrides", "ModelSpec", "TaskSpec",
           "DataSpec", "AugmentSpec", "OutputSpec", "MethodSpec", "TrainingSpec", "EarlyStoppingSpec",
           "ADAPTER_METHODS", "DEFAULT_LR", "WeakSpec", "RuleSpec", "SelfTrainingSpec", "DistillSpec", "AdaptSpec"]
