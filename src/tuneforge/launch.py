"""`tuneforge train --nproc N`: the same command in N processes on this machine, started by torchrun (PyTorch's
own launcher), which sets each process's rank and restarts nothing: a failed rank ends the whole run."""
from __future__ import annotations

import subprocess
import sys

from .errors import TuneforgeError


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """The torchrun command line that runs `tuneforge train TRAIN_ARGS` in `nproc` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "tuneforge", "train", *train_args]


def launch_torchrun(nproc: int, train_args: list[str]) -> int:
    """Run the training in `nproc` processes and return torchrun's exit status (non-zero when any rank failed)."""
    import os

    if nproc < 1:
        raise TuneforgeError(f"--nproc {nproc}: give a number of processes of 1 or more")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise TuneforgeError("--nproc inside a process that torchrun (or accelerate launch) started: give the number "
                             "of processes to the launcher only")
    return subprocess.call(torchrun_command(nproc, train_args))
