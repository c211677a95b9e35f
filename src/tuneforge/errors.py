"""User-facing errors: each says what was wrong, where, the value seen, and the fix."""


class TuneforgeError(Exception):
    """An error caused by the user's input (recipe, data, run directory), not by a bug."""


class RecipeError(TuneforgeError):
    """The recipe is invalid; `problems` holds every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        self.source = source
        lines = [f"{source}: {len(problems)} problem(s):"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class DataError(TuneforgeError):
    """The data is invalid; `problems` holds every problem found (capped in the message)."""

    MAX_SHOWN = 25

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[: self.MAX_SHOWN]
        lines = [f"data: {len(problems)} problem(s):"] + [f"  - {p}" for p in shown]
        if len(problems) > len(shown):
            lines.append(f"  ... and {len(problems) - len(shown)} more")
        super().__init__("\n".join(lines))


class RunDirError(TuneforgeError):
    """The output directory holds a run that would be lost or is not a run."""


class TrainingDiverged(TuneforgeError):
    """A step's loss or gradient, or the weights, stopped being finite; nothing non-finite was saved."""


class RunLocked(TuneforgeError):
    """Another process holds the lock of the folder this command would write."""
