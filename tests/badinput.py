"""The bad-input corpus's runner: a command through the real CLI entry point (`tuneforge.cli.main`, the function
the `tuneforge` script calls), which must refuse with exit code 2, a message holding the expected words, no
traceback, and nothing created, changed or removed under the watched folders."""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One row of the corpus: the command (after `tuneforge`), the words its message must contain (case-insensitive),
    and an id for the test report."""
    id: str
    argv: list[str]
    words: list[str]
    watch: list[Path] = field(default_factory=list)  # folders that must be left exactly as they were


def snapshot(roots) -> dict[str, tuple]:
    """Every file and folder under `roots`: its kind, size and modification time (ns)."""
    seen: dict[str, tuple] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            seen[str(root)] = ("absent",)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            st = os.stat(dirpath)
            seen[dirpath] = ("dir",)
            for name in filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                seen[p] = ("file", st.st_size, st.st_mtime_ns)
    return seen


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tuneforge ARGV`; argparse's exits count as exit codes. Any other exception
    is a traceback the user would have seen: the test fails with it."""
    from tuneforge.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage errors exit 2 with a one-line message
        code = e.code if isinstance(e.code, int) else 1
    except Exception:  # noqa: BLE001 - a traceback is exactly the failure this corpus guards against
        captured = capsys.readouterr()
        raise AssertionError(f"tuneforge {' '.join(map(str, argv))} raised instead of refusing:\n"
                             f"{traceback.format_exc()}\nstderr: {captured.err}") from None
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(case: Case, capsys) -> str:
    """Run the case; return its message (stderr) once every promise holds."""
    before = snapshot(case.watch)
    code, out, err = run_cli([str(a) for a in case.argv], capsys)
    assert code == 2, f"{case.id}: exit code {code}, expected 2\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in out, f"{case.id}: a traceback was printed:\n{err}"
    missing = [w for w in case.words if w.lower() not in err.lower()]
    assert not missing, f"{case.id}: the message lacks {missing}:\n{err}"
    after = snapshot(case.watch)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"{case.id}: the disk changed under {case.watch}: {changed[:10]}"
    return err
