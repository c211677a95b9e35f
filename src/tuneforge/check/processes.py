"""The distributed check (under torchrun): the first optimizer step's gradient in N processes against the same
step computed by rank 0 alone, in one process. The N-process gradient is read after DDP's all-reduce (FSDP: gathered from its shards); the
one-process step takes the same global rows (batch_size b, accumulation k x N), so it is the step a single process
would take (engine/parallel.py)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .common import CheckResult, max_difference, probe_recipe, train, where as at
from .probes import CaptureGradients, NoDropout

PROCESSES_RTOL = 1e-3  # of the largest gradient: the same sums in another order (see the accumulation check)


@contextlib.contextmanager
def single_process():
    """Code inside sees no torchrun world (runtime_for then gives a one-process runtime); the process group stays
    as it is for what follows."""
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def processes_check(base, folder: Path, quiet, console, runtime) -> CheckResult:
    """Every rank takes part; every rank returns rank 0's result."""
    world = runtime.world_size
    console.print(f"check: processes, the first step in {world} processes against rank 0 alone (dropout off, fp32)")
    together = CaptureGradients()
    train(probe_recipe(base, folder / "together", precision="fp32"), quiet, [NoDropout(), together])
    result = None
    if runtime.is_main:
        alone = CaptureGradients()
        with single_process():
            train(probe_recipe(base, folder / "alone", precision="fp32", grad_accum=base.training.grad_accum * world),
                  quiet, [NoDropout(), alone])
        diff, scale, where = max_difference(together.grads, alone.grads)
        relative = diff / scale if scale else diff
        result = CheckResult("processes", relative <= PROCESSES_RTOL,
                            f"{world} processes vs 1: max |diff| {diff:.3g}, {relative:.2g} of the largest gradient "
                            f"{scale:.3g}{at(diff, where)}", f"<= {PROCESSES_RTOL:g} rel. (fp32)",
                            {"world_size": world, "max_abs_diff": diff, "relative": relative})
    runtime.barrier()  # the other ranks wait while rank 0 computes the step alone
    return runtime.gather(result)[0]
