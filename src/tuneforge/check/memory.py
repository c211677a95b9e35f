"""Peak memory of a probe run, and the largest batch that fits: on a GPU torch's allocator statistics; on CPU the
process's peak resident set (VmHWM), reset before each probe through /proc/self/clear_refs (Linux)."""
from __future__ import annotations

from typing import Optional

import torch

_STATUS, _CLEAR = "/proc/self/status", "/proc/self/clear_refs"


def _gpu() -> bool:
    return torch.cuda.is_available()


def reset_peak() -> bool:
    """Start a new peak; False where the peak cannot be reset (then no per-probe peaks are reported)."""
    if _gpu():
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def peak_mb() -> Optional[float]:
    """The peak since the last reset_peak: GPU allocated, else the process's peak resident set, in MB."""
    if _gpu():
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_kb("VmHWM")


def budget_mb() -> Optional[float]:
    """What a run may use: the GPU's memory, else the memory available now plus what this process holds."""
    if _gpu():
        return torch.cuda.mem_get_info()[1] / 2**20
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    rss = _status_kb("VmRSS")
    return None if rss is None else available / 1024 + rss


def _status_kb(key: str) -> Optional[float]:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def largest_batch(batch: int, peak_at_batch: float, small: tuple[int, float], large: tuple[int, float],
                  budget: float) -> Optional[tuple[int, float]]:
    """(the largest batch size that fits in `budget`, the margin at `batch` as a fraction of the budget), from the
    memory per row between two probe batches (`small`, `large`: (rows, peak MB)); None when the probes show no
    growth with the batch (the peak is the model's, not the batch's)."""
    (b1, m1), (b2, m2) = small, large
    per_row = (m2 - m1) / (b2 - b1) if b2 > b1 else 0.0
    if per_row <= 0:
        return None
    fits = batch + int((budget - peak_at_batch) / per_row)
    return max(fits, 0), (budget - peak_at_batch) / budget
