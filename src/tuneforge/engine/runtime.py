"""Where a run computes: the one place that decides the device, the precision and the process group.

The loop, evaluation, prediction, generation, teachers and references take their device from a `Runtime`;
nothing else names "cpu" or "cuda". Several processes are started by torchrun or `accelerate launch`, which
both describe the group in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); the group itself
is torch.distributed's (NCCL on CUDA, gloo on CPU), and every collective used here is one of its own.
"""
from __future__ import annotations

import functools
import os
import time
from contextlib import nullcontext
from datetime import timedelta
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import RecipeError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"   # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fsdp: bool = False        # weights sharded across the ranks (engine/sharding.py); else each holds a replica
    precision_note: str = ""  # why this precision (auto's measurement, or a warning that the one asked is slower)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only this process writes run files, logs and progress."""
        return self.rank == 0

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def grad_scaler(self):
        """fp16 needs its loss scaled so small gradients do not underflow; bf16 and fp32 do not."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def to_device(self, batch: dict) -> dict:
        """Tensors of a batch on the device; from pinned memory and without waiting, when that is a GPU."""
        if self.device.type == "cpu":
            return batch
        pin = self.device.type == "cuda"
        return {k: (v.pin_memory() if pin else v).to(self.device, non_blocking=pin) if isinstance(v, torch.Tensor)
                else v for k, v in batch.items()}

    def alone(self) -> "Runtime":
        """The same device and precision for work one rank does by itself (rank 0's reports): no collectives."""
        return replace(self, rank=0, world_size=1, fsdp=False)

    # ---- collectives (no-ops in one process)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank (small Python objects: metric counts, RNG states)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def on_main(self, fn):
        """`fn()` on rank 0 alone (what touches the run folder), its result shared with every rank; a TuneforgeError
        it raises is raised on every rank, so none is left waiting in a collective for a rank that stopped."""
        from ..errors import TuneforgeError

        if not self.distributed:
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except TuneforgeError as e:
                outcome = ("error", e)
        kind, value = self.gather(outcome)[0]
        if kind == "error":
            raise value
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over ranks (a copy; the argument is left as it was)."""
        value = value.detach().clone()
        if self.distributed:
            torch.distributed.all_reduce(value)
        return value

    # ---- random number generators

    def rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def fork_rng(self):
        """A block whose draws leave this process's generators (CPU and the device's) as they were."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)


CPU = Runtime(torch.device("cpu"))


def device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (a task that builds tensors of its own builds them there)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun or `accelerate launch` describe them; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(spec: str, local_rank: int = 0, key: str = "training.device", world_size: int = 1) -> torch.device:
    """`auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N` or `mps` as a device that exists here; a
    RecipeError naming `key` otherwise. Several processes on CUDA take the GPU of their local rank."""
    spec = (spec or "auto").strip().lower()
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if spec == "auto":
        spec = "cuda" if cuda else ("mps" if mps else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps:
            raise RecipeError([f"{key}: 'mps' was asked for and this machine has no MPS (Apple GPU) device; "
                               "use 'auto' or 'cpu'"])
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not cuda:
            raise RecipeError([f"{key}: {spec!r} was asked for and torch sees no CUDA GPU here "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                               "use 'auto' or 'cpu', or install a CUDA build of torch"])
        count = torch.cuda.device_count()
        if spec != "cuda" and world_size > 1:
            raise RecipeError([f"{key}: {spec!r} names one GPU for all {world_size} processes; use 'cuda' or 'auto' "
                               "(each process takes the GPU of its local rank)"])
        # A launcher that shows each process only its own GPU (one visible device) means: that one.
        index = (local_rank if count > 1 else 0) if spec == "cuda" else _index(spec, key)
        if index >= count and spec == "cuda":
            raise RecipeError([f"{key}: the process of local rank {local_rank} takes GPU {index}, and this machine "
                               f"has {count}; start at most {count} processes per machine (--nproc_per_node {count})"])
        if index >= count:
            raise RecipeError([f"{key}: {spec!r} names GPU {index}, and this machine has {count} "
                               f"(cuda:0 ... cuda:{count - 1})"])
        return torch.device("cuda", index)
    raise RecipeError([f"{key}: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps"])


def _index(spec: str, key: str) -> int:
    try:
        index = int(spec.split(":", 1)[1])
    except ValueError:
        raise RecipeError([f"{key}: {spec!r} is not a device; use cuda:N with N a GPU number"]) from None
    if index < 0:
        raise RecipeError([f"{key}: {spec!r} is not a device; use cuda:N with N a GPU number"])
    return index


AUTO_ENV = "TUNEFORGE_AUTO_PRECISION"  # fp32 or bf16: what `auto` takes, without measuring (tests, fixed machines)
BF16_MIN_SPEEDUP = 1.2  # auto takes bf16 on a CPU only when it is clearly faster: autocast's casts cost time too


@functools.lru_cache(maxsize=1)
def cpu_bf16_instructions() -> bool | None:
    """Whether this CPU has bf16 instructions (x86 AVX512-BF16 or AMX, Arm BF16), from the flags Linux lists in
    /proc/cpuinfo; None where they cannot be read. Without them bf16 is emulated, 3-10x slower than fp32 on the
    machines measured, and a timing taken on a busy machine once chose it anyway: auto never measures there."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, Arm: the first processor's list
            return bool(set(line.partition(":")[2].split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    return None


@functools.lru_cache(maxsize=None)
def bf16_speedup(threads: int) -> tuple[float, float]:
    """(fp32 ms, bf16 ms) of one transformer feed-forward layer's forward and backward (512 tokens, 384 -> 1536), fp32
    against bf16 autocast, on this CPU: best of 5 each, interleaved, after a warm-up. CPUs with bf16 instructions (AVX512-BF16,
    AMX) run it about 2x faster; those without emulate it, up to 10x slower. About 0.1 s."""
    del threads  # (part of the cache key: the answer depends on the threads torch uses)
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(384, 1536)
    x = torch.randn(512, 384, generator=generator, requires_grad=True)

    def once(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(x)
        out.float().sum().backward()
        return time.perf_counter() - started
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(6):  # interleaved, so a busy machine slows both alike; the first round warms up
        for bf16 in (False, True):
            elapsed = once(bf16)
            if round_:
                times[bf16].append(elapsed)
    return min(times[False]) * 1e3, min(times[True]) * 1e3


def resolve_precision(precision: str, device: torch.device, key: str = "training.precision") -> tuple[str, str]:
    """(precision, note): `auto` made concrete for this device; a note says why, or warns that bf16 was asked
    for where it is slower than fp32."""
    if precision == "auto":
        forced = os.environ.get(AUTO_ENV, "").strip().lower()
        if forced:
            if forced not in ("fp32", "bf16"):
                raise RecipeError([f"{AUTO_ENV}={forced!r}: use fp32 or bf16 (or unset it to measure)"])
            return forced, f"precision {forced} ({AUTO_ENV})"
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return "bf16", "precision bf16 (auto: this GPU has bf16 tensor cores)"
            return "fp32", f"precision fp32 (auto: {torch.cuda.get_device_name(device)} has no native bf16)"
        if device.type != "cpu":
            return "fp32", "precision fp32 (auto)"
        if cpu_bf16_instructions() is False:
            return "fp32", "precision fp32 (auto: this CPU has no bf16 instructions)"
        fp32_ms, bf16_ms = bf16_speedup(torch.get_num_threads())
        factor = fp32_ms / bf16_ms
        if factor >= BF16_MIN_SPEEDUP:
            return "bf16", f"precision bf16 (auto: bf16 matmuls measured {factor:.1f}x faster than fp32 on this CPU)"
        return "fp32", f"precision fp32 (auto: bf16 measured {factor:.2f}x the speed of fp32 on this CPU)"
    if precision == "bf16" and device.type == "cpu":
        fp32_ms, bf16_ms = bf16_speedup(torch.get_num_threads())
        if bf16_ms > fp32_ms:
            return "bf16", (f"[yellow]warning:[/] {key}: bf16 runs at {fp32_ms / bf16_ms:.2f}x the speed of fp32 on "
                            f"this CPU (measured: {bf16_ms:.1f} ms against {fp32_ms:.1f} ms per layer step; it has no "
                            "bf16 instructions); use auto or fp32")
    return precision, ""


def check_precision(precision: str, device: torch.device, key: str = "training.precision") -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError([f"{key}: bf16 was asked for and {torch.cuda.get_device_name(device)} does not support it; "
                           "use fp16 (with a gradient scaler) or fp32"])


def runtime_for(training, *, device: str | None = None, distributed: bool = True) -> Runtime:
    """The runtime of a recipe's `training` section (`device` overrides training.device). Under torchrun or
    `accelerate launch` (and `distributed`), joins the process group, created once per process."""
    rank, world, local_rank = launched_world() if distributed else (0, 1, 0)
    dev = resolve_device(device or getattr(training, "device", "auto"), local_rank,
                         "device" if device else "training.device", world)
    precision, note = resolve_precision(getattr(training, "precision", "fp32"), dev)
    check_precision(precision, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        # TF32 matmuls (Ampere and newer): fp32 range with a 10-bit mantissa, several times the fp32 speed.
        allow = bool(getattr(training, "tf32", True))
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # Ranks wait in a collective while rank 0 alone writes checkpoints, the best weights and the final model:
        # long for big models, so the wait allowed is the recipe's, not NCCL's 10-minute default.
        minutes = getattr(training, "collective_timeout", 60)
        torch.distributed.init_process_group(backend, device_id=dev if dev.type == "cuda" else None,
                                             timeout=timedelta(minutes=minutes))
    if world > 1 and getattr(training, "precision", "fp32") == "auto" and dev.type == "cpu":
        # Each process measured for itself: all take bf16 only if every one found it faster.
        agreed = [None] * world
        torch.distributed.all_gather_object(agreed, precision)
        if any(p != precision for p in agreed):
            precision, note = "fp32", "precision fp32 (auto: not every process found bf16 faster)"
    fsdp = world > 1 and getattr(training, "distributed", "ddp") == "fsdp"
    return Runtime(dev, precision, rank, world, local_rank, fsdp, note)
