"""Models: loading (local folders, packaged aliases), heads, and the layer groups of an architecture."""
from .layers import LayerGroups, find_layer_groups
from .loading import LoadedModel, load_for_classification, load_for_recipe, load_run_model

__all__ = ["LayerGroups", "find_layer_groups", "LoadedModel", "load_for_classification", "load_for_recipe", "load_run_model"]
