"""Folder locks: one process at a time writes a run (or a study's or a merge's output) folder.

The lock is an OS-level advisory lock (`flock`) on a small file beside the folder, `.NAME.tuneforge-lock`, which
also says who holds it (process id, host, command, start time, what it writes). The kernel drops the lock when its
process ends, however it ends, so the file a killed process leaves behind blocks no one: a later process simply
takes the lock. Beside the folder, so that a lock never writes into a folder before tuneforge knows it is its own;
where the parent cannot be written (a mounted volume, a scheduler's scratch folder) but the folder exists, the file
is `NAME/.tuneforge-lock` instead (replacing a run leaves lock files in place).

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
    folder = Path(folder).absolute().resolve()  # a symlink and its target are one folder, with one lock
    if folder.is_dir() and not os.access(folder.parent, os.W_OK | os.X_OK):
        return folder / LOCK_SUFFIX
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


def _in_use(folder: Path, who: dict) -> RunLocked:
    if who:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["started"])) if "started" in who else "?"
        by = (f"process {who.get('pid', '?')} on {who.get('host', '?')} (`{who.get('command', '?')}`, started "
              f"{started}) is writing {who.get('what', 'a run')} there")
    else:
        by = "another process holds its lock"
    return RunLocked(f"{folder} is in use: {by}. Wait for it to finish (or stop it), or choose another output folder")


def refuse_if_locked(folder: Path) -> None:
    """Raise RunLocked when another process holds the folder's lock; creates nothing."""
    who = holder(folder)
    if who is not None:
        raise _in_use(folder, who)


def acquire(folder: Path, what: str = "a run", wait: bool = False) -> None:
    """Take the folder's lock for this process (until the outermost scope() ends), or raise RunLocked naming the
    process that holds it; `wait`: wait for it instead (writers that take turns, such as a study's workers writing
    its tables). Creates the folder's parent and the lock file."""
    key = _key(folder)
    if fcntl is None or key in _held:
        return
    file = lock_file(folder)
    file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        if wait:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif not _lock_soon(fd):
            os.close(fd)
            raise _in_use(folder, _read_holder(file))
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
           if Path(sys.argv[0]).name in ("tuneforge", "__main__.py") else " ".join(sys.argv), "started": time.time(),
           "what": what}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(who).encode())
    _held[key] = (fd, file)


def _lock_soon(fd: int, tries: int = 10) -> bool:
    """Take the exclusive lock, retrying briefly: another process's look at who holds it (holder(), a shared
    lock for an instant) must not read as the folder being in use."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(0.02)
    return False


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
