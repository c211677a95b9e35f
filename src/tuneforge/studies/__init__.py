"""Studies: several runs of one recipe, compared: methods (compare), a hyperparameter search (tune), seeds."""
from .compare import CompareResult, MethodChoice, compare, parse_methods
from .seeds import SeedStudy, seed_study
from .tune import TuneResult, tune

__all__ = ["CompareResult", "MethodChoice", "compare", "parse_methods", "SeedStudy", "seed_study", "TuneResult", "tune"]
