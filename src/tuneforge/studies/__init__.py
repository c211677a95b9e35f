"""Studies: several runs of one recipe, compared (methods now; searches and seed studies build on it)."""
from .compare import CompareResult, MethodChoice, compare, parse_methods

__all__ = ["CompareResult", "MethodChoice", "compare", "parse_methods"]
