"""Non-finite guard: a step whose loss or gradient is NaN or inf changes no weight, and non-finite weights are
never written (not as a checkpoint, not as the best model, not as the final model).

One host read per optimizer step (the flag below); on a GPU that is one synchronisation a step, the price of
never training on NaN for thousands of steps unnoticed."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import TrainingDiverged


def gradient_norm(params: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """The total 2-norm of the gradients there are (frozen parameters have none); None when there are none."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2) norm is already global; reading it needs its full value."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def step_is_finite(loss: torch.Tensor, grad_norm: Optional[torch.Tensor], runtime) -> bool:
    """Whether this step's loss (this rank's share) and gradient norm are finite, on every rank alike."""
    bad = (~torch.isfinite(loss.detach())).to(torch.float32)
    if grad_norm is not None:
        bad = bad + (~torch.isfinite(full_value(grad_norm).detach())).to(torch.float32).to(bad.device)
    if runtime.distributed:
        bad = runtime.sum(bad)
    return float(bad) == 0


def first_nonfinite_weight(model: torch.nn.Module, runtime=None) -> Optional[str]:
    """The name of the first trainable parameter or floating buffer holding NaN or inf, or None; agreed by every
    rank. (Frozen weights cannot have changed.) One host read: each tensor's min and max (no copy of the tensor;
    NaN propagates into both), stacked."""
    found = None
    tensors = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + \
        [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    tensors = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in tensors]
    tensors = [(n, t.detach()) for n, t in tensors if t.is_floating_point() and t.numel()]
    if tensors:
        ends = torch.stack([torch.stack(torch.aminmax(t)).float().to(tensors[0][1].device) for _, t in tensors])
        finite = torch.isfinite(ends).all(dim=1).tolist()
        found = next((n for (n, _), ok in zip(tensors, finite) if not ok), None)
    if runtime is not None and runtime.distributed:
        names = [n for n in runtime.gather(found) if n is not None]
        found = names[0] if names else None
    return found


def refuse_nonfinite_weights(model: torch.nn.Module, what: str, step: int, latest, runtime=None) -> None:
    """Raise before `what` (a checkpoint, the best weights, the final model) is written with non-finite weights.
    `latest`: a function giving the latest checkpoint's path (or None), asked only then: the run folder is rank 0's,
    and another machine's rank need not see it."""
    name = first_nonfinite_weight(model, runtime)
    if name is None:
        return
    latest = latest()
    kept = f"the latest checkpoint, {latest}, is kept as it was" if latest else "no checkpoint had been written yet"
    raise TrainingDiverged(
        f"step {step}: the weights hold NaN or inf (first: {name}), so {what} was not written; {kept}. The last "
        "update overflowed: lower training.lr (or set training.max_grad_norm) and start over with --overwrite")


def diverged_message(step: int, total_steps: int, loss: float, grad_norm: Optional[float], lr: float,
                     latest: Optional[str]) -> str:
    norm = "" if grad_norm is None else f" and the gradient norm {grad_norm:.4g}"
    kept = (f"the latest checkpoint, {latest}, is from before it" if latest else
            "no checkpoint had been written yet")
    return (f"training stopped at step {step} of {total_steps}: the loss is {loss:.4g}{norm} (not finite), so the step "
            f"changed no weight and nothing non-finite was saved; {kept}. The learning rate at this step was {lr:.4g}: "
            "lower training.lr (or check the data for extreme values) and start over with --overwrite, or set "
            "training.nonfinite=skip to skip such steps (each one counted in summary.json)")
