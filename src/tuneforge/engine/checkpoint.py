"""Checkpoints written atomically: into `NAME.tmp`, then renamed, so a crash never leaves a half one as latest.

Weights go to safetensors; optimizer, scheduler and RNG states to torch files read back with
`weights_only=True`; the loop's position (epoch, step in epoch, unfreezing stage, best metric) to JSON. A sharded
(FSDP) run's weights and optimizer state go to `shards/`, one file per rank, through torch.distributed.checkpoint.
Every rank calls save_checkpoint; rank 0 writes what is not sharded and renames the folder once all is there.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import RunDirError

CHECKPOINT_PREFIX = "step-"


def _unique_state(model: torch.nn.Module, names: Optional[set[str]] = None) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Each tensor once (safetensors refuses shared storage), and the names that alias an earlier one.
    With `names`, only those entries (an adapter run keeps only its adapter and head)."""
    out, seen, aliases = {}, set(), set()
    for name, t in model.state_dict().items():
        if names is not None and name not in names:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases.add(name)
            continue
        seen.add(key)
        out[name] = t.detach().cpu().contiguous()
    return out, aliases


SHARDS = "shards"  # a sharded run's weights and optimizer state inside a checkpoint


def save_weights(model: torch.nn.Module, path: Path, names: Optional[set[str]] = None,
                 state: Optional[dict[str, torch.Tensor]] = None) -> None:
    """`state`: weights already gathered (a sharded model's, on rank 0); default: the model's own."""
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.contiguous() for k, v in state.items()} if state is not None else _unique_state(model, names)[0]
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path, names: Optional[set[str]] = None) -> None:
    """Load a file written by save_weights with the same `names` (None: the whole model)."""
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    # Tied weights were saved once and are filled through their alias; anything else missing, or any
    # unexpected name, means the file is not this model's.
    missing = set(missing) - _unique_state(model)[1]
    if names is not None:
        missing &= names
    if missing or unexpected:
        raise RuntimeError(f"{path}: does not match the model (missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]})")


def restore_weights(model: torch.nn.Module, path: Path, names: Optional[set[str]] = None, runtime=None) -> None:
    """load_weights on every rank of a run: rank 0 reads the file and the others receive its weights, so they
    need not see rank 0's disk (another machine), and a sharded model gets each rank's part."""
    if runtime is None or not runtime.distributed:
        load_weights(model, path, names)
        return
    from .sharding import broadcast_state

    broadcast_state(model, load_file(str(path)) if runtime.is_main else {})


@contextlib.contextmanager
def atomic_folder(final: Path):
    """Yield `FINAL.tmp` to write into; when the block ends without error it replaces `final` in one rename,
    so a crash never leaves a half-written folder under the final name."""
    tmp = _fresh(final)
    yield tmp
    _publish(tmp, final)


def _fresh(final: Path) -> Path:
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():  # killed between _publish's two renames: the old folder comes back
        os.replace(old, final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, final: Path) -> None:
    # The old folder is moved aside (one rename) before the new one takes its name, so a kill never leaves a
    # half-deleted folder under the final name.
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def checkpoint_path(root: Path, step: int) -> Path:
    return root / f"{CHECKPOINT_PREFIX}{step:08d}"


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler, loop_state: dict, keep: int,
                    names: Optional[set[str]] = None, rng: Optional[list[dict]] = None, scaler=None,
                    runtime=None) -> Path:
    """`rng`: every rank's generator states, in rank order (default: this process's CPU generator);
    `scaler`: fp16's gradient scaler, whose scale is part of where training stands. Called on every rank."""
    final = checkpoint_path(root, step)
    main = runtime is None or runtime.is_main
    sharded = runtime is not None and runtime.fsdp
    tmp = _fresh(final) if main else final.with_name(final.name + ".tmp")
    if sharded:
        from .sharding import save_shards

        runtime.barrier()  # the folder is there before any rank writes into it
        save_shards(tmp / SHARDS, model, optimizer, names)
    if main:
        if not sharded:
            save_weights(model, tmp / "model.safetensors", names)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"ranks": rng or [{"torch": torch.get_rng_state()}]}, tmp / "rng.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "loop_state.json").write_text(json.dumps(loop_state, indent=1))  # last: marks it complete
        _publish(tmp, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if runtime is not None:
        runtime.barrier()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "loop_state.json").exists()]  # (not .tmp, .old)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def read_loop_state(path: Path) -> dict:
    return json.loads((path / "loop_state.json").read_text())


def check_world_size(checkpoint: Path, world_size: int) -> None:
    """A step's rows depend on the number of processes, so a run resumes exactly only in as many as it ran in."""
    trained = read_loop_state(checkpoint).get("world_size", 1)
    if trained != world_size:
        how = "without torchrun" if trained == 1 else f"with torchrun --nproc_per_node {trained} (or --nnodes x " \
            f"--nproc_per_node making {trained})"
        raise RunDirError(f"{checkpoint}: the run trained in {trained} process(es) and this resume has {world_size}; "
                          f"each optimizer step's rows depend on that number, so it would not continue exactly. "
                          f"Resume it {how}, or start over with --overwrite")


def load_checkpoint(path: Path, model, optimizer, scheduler, names: Optional[set[str]] = None, runtime=None,
                    scaler=None) -> dict:
    """Restore a checkpoint into model, optimizer, scheduler, this rank's RNG states and the fp16 scaler; returns
    the loop state. The caller has checked that the run's world size is this one's."""
    try:
        return _load_checkpoint(path, model, optimizer, scheduler, names, runtime, scaler)
    except RunDirError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: named, with the way out
        raise RunDirError(f"{path}: cannot be resumed from, a file in it is damaged or not this run's "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'no detail'}). Delete "
                          f"this checkpoint folder to resume from the one before it, or start over with --overwrite") \
            from None


def _load_checkpoint(path: Path, model, optimizer, scheduler, names, runtime, scaler) -> dict:
    device = runtime.device if runtime is not None else torch.device("cpu")
    if (path / SHARDS).is_dir():
        if runtime is None or not runtime.fsdp:
            raise RunDirError(f"{path}: a sharded (training.distributed: fsdp) checkpoint; resume it with fsdp under "
                              "torchrun, as it was trained")
        from .sharding import load_shards

        load_shards(path / SHARDS, model, optimizer, names)
    else:
        load_weights(model, path / "model.safetensors", names)
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=device))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    saved = torch.load(path / "rng.pt", weights_only=True)
    ranks = saved["ranks"] if "ranks" in saved else [saved]  # one process's checkpoints before ranks existed
    state = ranks[runtime.rank if runtime is not None else 0]
    if runtime is not None:
        runtime.set_rng_state(state)
    else:
        torch.set_rng_state(state["torch"])
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    return read_loop_state(path)
