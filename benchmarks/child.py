"""What every benchmark script here shares: each measurement runs in a process of its own (so its timings and peak
memory are its own), which prints one `RESULT {json}` line that the parent reads back."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def report_result(result: dict) -> None:
    """In the child: hand the measurement to the parent."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(cmd: list[str], label: str, **popen) -> dict:
    """Run one measurement process and return what it reported; exit with its output if it reported nothing."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **popen)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def quiet_console():
    """A rich console that prints nothing (tuneforge's run reports stay out of the measurement's output)."""
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
