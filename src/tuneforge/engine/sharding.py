"""Fully sharded data parallelism (`training.distributed: fsdp`): torch's FSDP2 `fully_shard` on every transformer
block and on the whole model, so each of N processes holds 1/N of the weights, gradients and optimizer state.

What differs from DDP, and why the code asks `runtime.fsdp`:
- every forward all-gathers the weights, so all ranks run the same number of forwards (short steps and uneven
  evaluation shards are padded with forwards whose result is discarded);
- checkpoints are sharded: each rank writes its part through torch.distributed.checkpoint (DCP);
- weights a user keeps (the best step, the final model or adapter) are gathered whole onto rank 0, and weights
  read back are broadcast from rank 0, so no other rank needs to see rank 0's files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


def shard_model(model: torch.nn.Module, runtime) -> torch.nn.Module:
    """fully_shard each repeated block, then the root (which holds embeddings and head), on the runtime's device."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ..models.layers import find_blocks

    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    _, blocks = find_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gather_state(model: torch.nn.Module, names: Optional[set[str]] = None) -> dict[str, torch.Tensor]:
    """The whole model's weights (only `names`, when given) on rank 0's host; an empty dict on the other ranks.
    A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if names is None or k in names}


def broadcast_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights that rank 0 holds (`state`; other ranks pass {}) into every rank's model or shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                strict=False))


def save_shards(folder: Path, model, optimizer, names: Optional[set[str]] = None) -> None:
    """This rank's part of the weights (only `names`, when given) and optimizer state, into `folder` (DCP)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    if names is not None:
        model_state = {k: v for k, v in model_state.items() if k in names}
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def load_shards(folder: Path, model, optimizer, names: Optional[set[str]] = None) -> None:
    """Weights and optimizer state back from `folder`. The optimizer state expected is that of the parameters that
    had it when saved (read from the checkpoint): not of what trains now, which differs when gradual unfreezing
    had just unfrozen a group that had not yet taken a step, whose state must stay empty as it was."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    saved = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    stateful = {k[len("optim.state."):].rsplit(".", 1)[0] for k in saved if k.startswith("optim.state.")}
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in stateful)
    try:
        model_state, optim_state = get_state_dict(model, optimizer)
        if names is not None:
            model_state = {k: v for k, v in model_state.items() if k in names}
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=StateDictOptions(strict=False))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(trains[n])



def save_gathered(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """save_pretrained of a sharded model from its gathered weights. FSDP2 renames the model's class (FSDPBert...),
    and transformers writes the class name into config.json: the name written is the class that was sharded."""
    import json

    from torch.distributed.fsdp import FSDPModule

    model.save_pretrained(folder, safe_serialization=True, state_dict=state)
    original = next(c for c in type(model).__mro__[1:] if not issubclass(c, FSDPModule))
    config_file = Path(folder) / "config.json"
    config = json.loads(config_file.read_text())
    config["architectures"] = [original.__name__]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
