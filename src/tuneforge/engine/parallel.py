"""Data parallelism with torch's DistributedDataParallel: how a step's rows are shared among processes and how the
model is wrapped for the training forward.

Every rank knows the whole data order, so each optimizer step's global batch (batch_size x grad_accum x world
size rows, in the order one process would take them) is dealt out by position: micro-batch j of the step goes to
rank j mod world size. The loss of each rank is divided by the step's *global* count of examples (or target
tokens), known to every rank from the data, so the gradients DDP averages sum to the 1-process gradient.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel


class DistributedModel(DistributedDataParallel):
    """DDP whose wrapped model's own methods and attributes stay reachable (`generate`, `disable_adapter`,
    `get_output_embeddings`, `config`), so tasks need not know whether they train in one process or several.
    Only `forward` goes through DDP's gradient synchronization, which is the only call that needs it."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_for_training(model: torch.nn.Module, runtime, loss_of=None) -> torch.nn.Module:
    """The model as the training forward sees it: itself in one process, a DDP wrapper in several. DDP registers
    the parameters that train *now*; build a new wrapper when that set changes (gradual unfreezing).
    `loss_of(model)`: a loss of one batch, to find out whether some trainable parameter gets no gradient."""
    if not runtime.distributed:
        return model
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    # A parameter that trains and gets no gradient (a pooler the task does not read) makes DDP wait for it forever
    # unless DDP searches the graph for such parameters at every step, which costs time: search only if needed.
    # The probe sees one batch of this rank's: where use depends on the data (mixture-of-experts routing), always
    # search; and all ranks search if any rank's probe found one, so every rank builds the same wrapper.
    unused = loss_of is None or routes_by_data(model) or has_unused_parameters(model, loss_of)
    unused = any(runtime.gather(unused))
    return DistributedModel(model, device_ids=device_ids, find_unused_parameters=unused)


def routes_by_data(model: torch.nn.Module) -> bool:
    """A mixture of experts: which experts a step trains depends on its tokens."""
    config = getattr(model, "config", None)
    return any(getattr(config, k, None) for k in ("num_experts", "num_local_experts", "moe_num_experts", "n_routed_experts"))


def has_unused_parameters(model: torch.nn.Module, loss_of) -> bool:
    """Whether a trainable parameter gets no gradient from `loss_of(model)`, measured in evaluation mode (no dropout,
    no batch-norm statistics updated; `loss_of` restores any RNG it draws from), so training is left as it was."""
    params = [p for p in model.parameters() if p.requires_grad]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        grads = torch.autograd.grad(loss_of(model), params, allow_unused=True)
    finally:
        for m, training in modes:
            m.training = training
    return any(g is None for g in grads)


def trains_now(model: torch.nn.Module) -> tuple[str, ...]:
    return tuple(n for n, p in model.named_parameters() if p.requires_grad)


def share_of(step_batches: list, runtime) -> list:
    """This rank's micro-batches of an optimizer step: every world-size-th, starting at its rank."""
    return step_batches[runtime.rank::runtime.world_size]


def sync_gradients(model: torch.nn.Module, last: bool):
    """Gradients are all-reduced (FSDP: reduce-scattered) once per optimizer step, in the backward of its last
    micro-batch."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last)
    return nullcontext()


def shard(items: list, runtime) -> list:
    """Evaluation batches by rank: every world-size-th one (whole batches, so each is the batch one process
    would have run)."""
    return items[runtime.rank::runtime.world_size]


def padding(mine: int, total: int, runtime) -> int:
    """Forwards whose result is discarded that this rank adds, so every rank runs as many forwards. Needed where a
    forward is itself a collective (FSDP gathers weights in it), and for a DDP rank left without rows in a step,
    which must still join the gradient all-reduce."""
    if runtime.fsdp:
        return -(-total // runtime.world_size) - mine
    return 0 if mine or not runtime.distributed else 1
