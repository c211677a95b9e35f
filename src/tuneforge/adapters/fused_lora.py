"""PEFT's LoRA linear computed as one fused step on CPU.

PEFT computes an adapted linear as `base(x) + lora_B(lora_A(dropout(x))) * scaling`: under autocast it first casts
x to fp32 (the adapter's dtype) and back, draws the dropout mask with torch's slow CPU `bernoulli_`, keeps the
dropped-out copy of x for the backward pass, and writes the adapter's full-width output, its scaled copy and the
sum as three more tensors. Profiled on MiniLM, those passes over full-width activations cost more than the
adapter's matmuls.

FusedLoraLinear computes the same function with the same weights: `y = x W^T + b`, then `h = (x * mask) A^T *
scaling / (1 - p)` (rank wide), then `y += h B^T` inside one matmul (`addmm_`). The backward pass recomputes the
masked input from x and the one-byte mask instead of storing it, and adds the adapter's input gradient to the
base's in the same pass. Masks come from engine/dropout.py (seeded from torch's generator).

Only the plain case is fused: one active adapter, vanilla LoRA (no DoRA or other variant, no LoRA bias), an
`nn.Linear` base layer whose weights are frozen, on CPU, called with the input alone. Everything else is PEFT's own
forward. `fuse_lora(model)` switches a PEFT model's `lora.Linear` modules to this subclass in place (they stay
`lora.Linear` instances; nothing saved changes); `unfuse_lora(model)` switches them back."""
from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from ..engine.dropout import keep_mask
from ..engine.retype import retype_modules


class _FusedLora(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, keep, scale: float):
        flat = x.reshape(-1, x.shape[-1])
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        masked = flat if keep is None else flat * keep.view(flat.shape).to(flat.dtype)
        h = (masked @ lora_a.t()).mul_(scale)
        out.addmm_(h, lora_b.t())
        ctx.save_for_backward(x, weight, lora_a, lora_b, keep, h)
        ctx.scale = scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_a, lora_b, keep, h = ctx.saved_tensors
        flat = x.reshape(-1, x.shape[-1])
        g = grad.reshape(-1, grad.shape[-1])
        mask = None if keep is None else keep.view(flat.shape).to(flat.dtype)
        grad_b = g.t() @ h
        grad_h = (g @ lora_b).mul_(ctx.scale)
        grad_a = grad_h.t() @ (flat if mask is None else flat * mask)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight
            through_adapter = grad_h @ lora_a
            if mask is None:
                grad_x.add_(through_adapter)
            else:
                grad_x.addcmul_(through_adapter, mask)
            grad_x = grad_x.view(x.shape)
        return grad_x, None, None, grad_a, grad_b, None, None


def _dropout_p(module: nn.Module) -> float | None:
    if isinstance(module, nn.Identity):
        return 0.0
    if isinstance(module, nn.Dropout):
        return float(module.p)
    return None  # some other module: not ours to replace


def _autocast_dtype(device_type: str):
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class FusedLoraLinear(LoraLinear):
    """A PEFT `lora.Linear` whose plain case runs as one fused step (see the module's docstring)."""

    def _fusable_adapter(self, x: torch.Tensor, args, kwargs) -> str | None:
        if args or kwargs or self.disable_adapters or self.merged or x.device.type != "cpu":
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant or self.fan_in_fan_out:
            return None
        base, name = self.base_layer, active[0]
        if type(base) is not nn.Linear or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None
        if self.lora_A[name].bias is not None or self.lora_B[name].bias is not None:
            return None
        return name if _dropout_p(self.lora_dropout[name]) is not None else None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._fusable_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base, lora_a, lora_b = self.base_layer, self.lora_A[name].weight, self.lora_B[name].weight
        p = _dropout_p(self.lora_dropout[name]) if self.lora_dropout[name].training else 0.0
        dtype = _autocast_dtype(x.device.type) or lora_a.dtype  # autocast's compute dtype, else the adapter's (PEFT's cast)
        keep = keep_mask(x.shape, p) if p > 0 else None
        scale = self.scaling[name] / (1.0 - p) if p > 0 else self.scaling[name]
        bias = None if base.bias is None else base.bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):  # every input is in `dtype` already
            return _FusedLora.apply(x.to(dtype), base.weight.to(dtype), bias, lora_a.to(dtype), lora_b.to(dtype), keep,
                                    scale)


def fuse_lora(model: nn.Module) -> int:
    """Switch a PEFT model's `lora.Linear` modules to FusedLoraLinear, in place; returns how many."""
    return retype_modules(model, LoraLinear, FusedLoraLinear)


def unfuse_lora(model: nn.Module) -> None:
    """Undo `fuse_lora`."""
    retype_modules(model, FusedLoraLinear, LoraLinear)
