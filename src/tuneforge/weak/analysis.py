"""What a set of labeling functions does on a corpus: per function, the labels it votes, its coverage (rows it
votes on), overlaps (rows where another function votes too), conflicts (rows where another function votes a
different label), and, where gold labels exist, how often it is right. Fractions are of all rows."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .labeling import ABSTAIN_ID


@dataclass
class FunctionStats:
    name: str
    labels: list[str]          # the labels it voted, most frequent first
    votes: int
    coverage: float
    overlaps: float
    conflicts: float
    correct: Optional[int] = None      # on rows with a gold label
    incorrect: Optional[int] = None
    accuracy: Optional[float] = None
    estimated_accuracy: Optional[float] = None  # the label model's estimate, without gold


@dataclass
class Analysis:
    rows: int
    functions: list[FunctionStats]
    coverage: float            # rows with at least one vote
    overlaps: float            # rows with two or more votes
    conflicts: float           # rows with two or more different labels voted
    gold_rows: int = 0

    def to_json(self) -> dict:
        return {**asdict(self), "functions": [asdict(f) for f in self.functions]}


def analyze(matrix: np.ndarray, names: Sequence[str], label_names: Sequence[str],
            gold: Optional[Sequence[int]] = None, estimated: Optional[Sequence[float]] = None) -> Analysis:
    """`gold`: a class id per row, -1 where unknown (only those rows count for accuracy)."""
    matrix = np.asarray(matrix)
    n, m = matrix.shape
    voted = matrix != ABSTAIN_ID
    per_row = voted.sum(1)
    distinct = np.array([len(set(row[row != ABSTAIN_ID].tolist())) for row in matrix]) if n else np.zeros(0)
    gold_arr = np.asarray(gold) if gold is not None else None
    known = gold_arr != ABSTAIN_ID if gold_arr is not None else None
    stats = []
    for j in range(m):
        col = matrix[:, j]
        v = voted[:, j]
        others = voted & (matrix != col[:, None])
        others[:, j] = False
        conflict = v & others.any(1)
        overlap = v & (per_row > 1)
        labels, counts = np.unique(col[v], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        s = FunctionStats(name=names[j], labels=[label_names[labels[i]] for i in order], votes=int(v.sum()),
                          coverage=float(v.mean()) if n else 0.0, overlaps=float(overlap.mean()) if n else 0.0,
                          conflicts=float(conflict.mean()) if n else 0.0)
        if gold_arr is not None:
            scored = v & known
            s.correct = int((col[scored] == gold_arr[scored]).sum())
            s.incorrect = int(scored.sum()) - s.correct
            s.accuracy = s.correct / scored.sum() if scored.any() else None
        if estimated is not None and not np.isnan(estimated[j]):
            s.estimated_accuracy = float(estimated[j])
        stats.append(s)
    return Analysis(rows=n, functions=stats, coverage=float((per_row > 0).mean()) if n else 0.0,
                    overlaps=float((per_row > 1).mean()) if n else 0.0,
                    conflicts=float((distinct > 1).mean()) if n else 0.0,
                    gold_rows=int(known.sum()) if known is not None else 0)


def label_accuracy(probs: np.ndarray, covered: np.ndarray, gold: Sequence[int]) -> dict:
    """Accuracy of a label model's argmax against gold, on covered rows with a gold label; and its coverage."""
    gold = np.asarray(gold)
    scored = covered & (gold != ABSTAIN_ID)
    hard = np.where(covered, np.nan_to_num(probs).argmax(1), ABSTAIN_ID)
    return {"accuracy": float((hard[scored] == gold[scored]).mean()) if scored.any() else None,
            "coverage": float(covered.mean()) if len(covered) else 0.0, "scored_rows": int(scored.sum())}


def _pct(x: Optional[float]) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def table_rows(analysis: Analysis) -> list[list[str]]:
    rows = []
    for f in analysis.functions:
        rows.append([f.name, ", ".join(f.labels[:3]) + (" ..." if len(f.labels) > 3 else ""), _pct(f.coverage),
                     _pct(f.overlaps), _pct(f.conflicts),
                     "" if f.accuracy is None else f"{_pct(f.accuracy)} ({f.correct}/{f.correct + f.incorrect})",
                     _pct(f.estimated_accuracy)])
    return rows


HEADERS = ["function", "labels", "coverage", "overlaps", "conflicts", "accuracy (gold)", "estimated accuracy"]


def print_analysis(console, analysis: Analysis, title: str = "labeling functions") -> None:
    from rich.table import Table

    table = Table(title=f"{title}: {analysis.rows} rows")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("function", "labels") else "right")
    for row in table_rows(analysis):
        table.add_row(*row)
    console.print(table)
    console.print(f"  any vote {_pct(analysis.coverage)} of rows; two or more {_pct(analysis.overlaps)}; "
                  f"disagreeing votes {_pct(analysis.conflicts)}"
                  + (f"; gold labels on {analysis.gold_rows} rows" if analysis.gold_rows else ""))


def write_analysis(analysis: Analysis, folder: Path, extra: Optional[dict] = None) -> dict[str, Path]:
    """analysis.json (everything), analysis.csv (one row per function) and analysis.md (the table)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "analysis.json", "csv": folder / "analysis.csv", "md": folder / "analysis.md"}
    paths["json"].write_text(json.dumps({**analysis.to_json(), **(extra or {})}, indent=1))
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["function", "labels", "votes", "coverage", "overlaps", "conflicts", "correct", "incorrect",
                         "accuracy", "estimated_accuracy"])
        for s in analysis.functions:
            writer.writerow([s.name, " ".join(s.labels), s.votes, s.coverage, s.overlaps, s.conflicts, s.correct,
                             s.incorrect, s.accuracy, s.estimated_accuracy])
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(analysis)]
    lines.append("")
    lines.append(f"{analysis.rows} rows; any vote {_pct(analysis.coverage)}; two or more votes "
                 f"{_pct(analysis.overlaps)}; disagreeing votes {_pct(analysis.conflicts)}.")
    paths["md"].write_text("\n".join(lines) + "\n")
    return paths
