"""Studies on a machine with several GPUs: one trial per visible GPU at a time. Each placed trial is a process of
its own that sees only its GPU (CUDA_VISIBLE_DEVICES), so a recipe's `training.device: auto` (or `cuda`) lands on
it and nothing else in the trial needs to know. With one GPU or none, trials run one after another as before."""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

TRIAL_GPU = "TUNEFORGE_TRIAL_GPU"  # set in a placed trial's process: it runs its work itself, placing nothing


def trial_gpus() -> list[str]:
    """The GPUs to place trials on: every visible one when there are two or more (and this process is not itself
    a placed trial); [] otherwise."""
    if os.environ.get(TRIAL_GPU) is not None:
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def gpu_env(gpu: Optional[str]) -> Optional[dict]:
    """The environment of a trial placed on `gpu` (None: this process's own)."""
    if gpu is None:
        return None
    return {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, TRIAL_GPU: gpu}


def run_placed(jobs: Sequence, run_one: Callable, gpus: list[str], on_done: Optional[Callable] = None) -> list:
    """`run_one(job, env)` for every job, as many at once as there are `gpus`, each with one GPU to itself; results
    in the jobs' order. `on_done(job, result)` is called as each finishes (one at a time). Without GPUs the jobs
    run one after another with env None."""
    lock = threading.Lock()
    if not gpus:
        out = []
        for job in jobs:
            out.append(run_one(job, None))
            if on_done:
                on_done(job, out[-1])
        return out
    free: queue.Queue = queue.Queue()
    for g in gpus:
        free.put(g)

    def placed(job):
        gpu = free.get()
        try:
            result = run_one(job, gpu_env(gpu))
        finally:
            free.put(gpu)
        if on_done:
            with lock:
                on_done(job, result)
        return result

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:  # threads only wait for the trials' processes
        return list(pool.map(placed, jobs))
