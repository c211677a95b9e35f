"""`tuneforge weak analyze` / `tuneforge weak label` and their Python equivalents: the rules and label model of a
recipe's `weak` section applied to its training rows, without training."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import RecipeError
from ..recipe import load_recipe
from .analysis import print_analysis, write_analysis
from .data import WeakData, load_weak_data, write_weak_labels


def weak_labels(recipe, overrides: Optional[list[str]] = None, out: Optional[str | Path] = None) -> WeakData:
    """Label the recipe's training rows (rules + label model, or its weak-label column); with `out`, write them as
    JSONL (text, label or null, class probabilities, and each rule's vote)."""
    recipe = load_recipe(recipe, overrides)
    if recipe.weak is None:
        raise RecipeError(["this recipe has no weak section: add weak.labeling_functions, weak.rules or weak.column"])
    data, _, _ = load_weak_data(recipe)
    if out is not None:
        write_weak_labels(data, Path(out))
    return data


def analyze_weak(recipe, overrides: Optional[list[str]] = None, out: Optional[str | Path] = None,
                 console=None) -> WeakData:
    """Print, and write under `out` (default: the recipe's output.dir + '-weak'), each rule's coverage, overlaps,
    conflicts and accuracy against weak.gold_column, and every label model's accuracy."""
    from ..report import console as default_console

    console = console or default_console()
    recipe = load_recipe(recipe, overrides)
    data = weak_labels(recipe)
    folder = Path(out or f"{recipe.output.dir}-weak")
    summary = data.summary()
    if data.analysis is not None:
        print_analysis(console, data.analysis)
        write_analysis(data.analysis, folder, {"label_quality": data.quality, "summary": summary})
    write_weak_labels(data, folder / "labels.jsonl")
    console.print(f"{summary['labelled']} of {summary['rows']} rows labelled; {summary['unlabelled']} without a label")
    for name, q in data.quality.items():
        if isinstance(q, dict) and q.get("accuracy") is not None:
            shown = q.get("name", name)
            console.print(f"  {shown}: {q['accuracy']:.1%} right on {q['scored_rows']} rows with a gold label "
                          f"(coverage {q['coverage']:.1%})")
    console.print(f"written to {folder}")
    return data
