"""A throwaway PostgreSQL server for tests, from the Debian package as a user would run it: initdb into a
temporary folder, started on a free port, stopped at the end. As root it runs as the `postgres` user (the server
refuses root). `start_postgres` says why when it cannot start, so a test can skip with the reason."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))
        self.port = _free_port()
        self.as_user: list[str] = []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql: no initdb/pg_ctl)")
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                raise RuntimeError("running as root without runuser to start PostgreSQL as the postgres user")
            self.as_user = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        done = self._run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-300:]}")
        done = self._run(pg_ctl, "-D", str(data), "-l", str(self.folder / "log"), "-w", "-o",
                         f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder}", "start")
        if done.returncode:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-300:]}")

    def stop(self) -> None:
        pg_ctl = _binary("pg_ctl")
        if pg_ctl and (self.folder / "data").exists():
            self._run(pg_ctl, "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
