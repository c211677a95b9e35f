"""tuneforge: fine-tune pre-trained models with new task heads.

    import tuneforge
    result = tuneforge.fine_tune("examples/demo.yaml")
    result.metrics["test"]["accuracy"], result.model_dir
"""
from .errors import DataError, RecipeError, RunDirError, TuneforgeError
from .generation import GenerationOptions, Generator, generate
from .inference import Predictor, evaluate, predict
from .merging import MergeError, MergeReport, merge
from .recipe import Recipe, load_recipe
from .run import RunResult, fine_tune, validate
from .scoring import Scorer, score
from .studies import CompareResult, SeedStudy, TuneResult, compare, seed_study, tune
from . import weak  # noqa: E402 - tuneforge.weak: labeling functions, label models, analysis

__version__ = "0.10.0"
__all__ = ["fine_tune", "validate", "evaluate", "predict", "Predictor", "merge", "MergeReport", "compare",
           "CompareResult", "load_recipe", "Recipe", "RunResult", "TuneforgeError", "RecipeError", "DataError",
           "RunDirError", "MergeError", "generate", "Generator", "GenerationOptions", "score", "Scorer", "tune", "TuneResult",
           "seed_study", "SeedStudy", "weak"]
