"""Folder locks: one process at a time writes a run (or a study's or a merge's output) folder.

The lock is an OS-level advisory lock (`flock`) on a small file beside the folder, `.NAME.tuneforge-lock`, which
also says who holds it (process id, host, command, start time). The kernel drops the lock when its process ends,
however it ends, so the file a killed process leaves behind blocks no one: a later process simply takes the lock.
Beside the folder, not in it, because replacing an old run (`--overwrite`) empties the folder.

Locks are re-entrant within a process (an adaptation stage and the task stage after it write the same folder) and
held until the outermost `scope()` ends, so a run's folder stays locked from the moment it is prepared until the
run returns or fails. Where `fcntl` does not exist (Windows), no lock is taken.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from .errors import RunLocked

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_SUFFIX = ".tuneforge-lock"

_held: dict[str, tuple[int, Path]] = {}  # resolved folder -> (descriptor, path) of a lock file this process holds
_depth = 0                  # nesting of scope()


def lock_file(folder: Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def _key(folder: Path) -> str:
    return str(Path(folder).absolute().resolve())


def holder(folder: Path) -> Optional[dict]:
    """Who holds the lock of `folder` when another process does (None when no one does); reads only."""
    if fcntl is None or _key(folder) in _held:
        return None
    file = lock_file(folder)
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:  # no lock file (or an unreadable one): no tuneforge process holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(file)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(file: Path) -> dict:
    try:
        return json.loads(file.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(who: dict) -> str:
    if not who:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["started"])) if "started" in who else "?"
    return (f"process {who.get('pid', '?')} on {who.get('host', '?')} (`{who.get('command', '?')}`, started "
            f"{started})")


def refuse_if_locked(folder: Path, what: str = "a run") -> None:
    """Raise RunLocked when another process holds the folder's lock; creates nothing."""
    who = holder(folder)
    if who is not None:
        raise RunLocked(f"{folder} is in use: {_describe(who)} is writing {what} there. Wait for it to finish (or stop "
                        "it), or choose another output folder")


def acquire(folder: Path, what: str = "a run") -> None:
    """Take the folder's lock for this process (until the outermost scope() ends), or raise RunLocked naming the
    process that holds it. Creates the folder's parent and the lock file."""
    key = _key(folder)
    if fcntl is None or key in _held:
        return
    file = lock_file(folder)
    file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"{folder} is in use: {_describe(_read_holder(file))} is writing {what} there. Wait for "
                            "it to finish (or stop it), or choose another output folder") from None
        # The holder before us may have removed the file after we opened it: then our lock is on a file no one
        # else will open; take the lock of the file that is there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    who = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["tuneforge", *sys.argv[1:]])
           if Path(sys.argv[0]).name in ("tuneforge", "__main__.py") else " ".join(sys.argv), "started": time.time()}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(who).encode())
    _held[key] = (fd, file)


def release_all() -> None:
    for key, (fd, file) in list(_held.items()):
        with contextlib.suppress(OSError):
            # Unlinked while still locked: whoever opened it meanwhile sees it is gone and retries (acquire).
            os.unlink(file)
        os.close(fd)
        del _held[key]


@contextlib.contextmanager
def scope():
    """Locks taken inside are held until the outermost scope ends (normally or by an error)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            release_all()


def in_scope(fn):
    """Decorator: the function runs inside scope(), so the locks it takes are held until it returns or fails."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with scope():
            return fn(*args, **kwargs)
    return wrapper
