"""What a recipe's reading of its data files shares with every reader below it: rows to skip before a table's header
(data.skip_rows) and the notes readers make along the way (a chat format mapped, type rows dropped).

Tasks read one file at a time through `task.read_file(spec, path)`, which hands the readers only the path and the
format. Rather than thread two more arguments through every task and reader, `load_examples` opens a scope with
`reading(...)` and the readers ask it; outside a scope (evaluate or predict on a file) nothing is skipped and notes
are printed as warnings, so none is lost."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator, Optional


@dataclass
class ReadingScope:
    skip_rows: int = 0
    notes: Optional[list] = None
    seen: set = field(default_factory=set)  # notes already made: one per file, however often it is read


_SCOPE: ContextVar[Optional[ReadingScope]] = ContextVar("tuneforge_reading_scope", default=None)


@contextmanager
def reading(skip_rows: int = 0, notes: Optional[list] = None) -> Iterator[ReadingScope]:
    scope = ReadingScope(skip_rows=skip_rows, notes=notes)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def skip_rows() -> int:
    """Lines before the header of a CSV/TSV file, as the recipe says (0 outside a recipe's reading)."""
    scope = _SCOPE.get()
    return scope.skip_rows if scope is not None else 0


def note(message: str) -> None:
    """A warning about the data that does not stop the run: to the recipe's notes (validate and train print them),
    or to stderr outside a recipe's reading."""
    scope = _SCOPE.get()
    if scope is None:
        print(f"warning: {message}", file=sys.stderr)
        return
    if message in scope.seen:
        return
    scope.seen.add(message)
    if scope.notes is not None:
        scope.notes.append(message)
    else:
        print(f"warning: {message}", file=sys.stderr)
