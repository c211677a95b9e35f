"""Dropout with a cheaper random source on CPU.

On CPU, torch draws a dropout mask with `bernoulli_`, at about 100 M elements/s on the machines measured here: one
mask over a batch's feed-forward input cost more than the matmul after it, and a LoRA step (PEFT draws one mask per
adapted linear) spent about a third of its time there. This draws the same Bernoulli(1 - p) mask from 16 random bits
per element of numpy's SFC64 generator (p rounded to a multiple of 1/65536), seeded from torch's own generator, so
`torch.manual_seed`, checkpointed RNG states and exact resume keep governing every mask. The mask is stored as one
byte per element for the backward pass, as torch's own dropout stores it.

`fast_dropout(model)` switches a model's `nn.Dropout` modules (the model's own and PEFT's `lora_dropout`) to this
class in place, and `restore_dropout` switches them back; the modules stay `nn.Dropout` instances with the same `p`
and no weights, so nothing saved or checked by type changes. Tensors on other devices, and tensors under 16,384
elements (tiny models, where torch's dropout is faster), use torch's dropout."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .retype import retype_modules

_BITS = 16
_CHUNK = 1 << 18  # elements drawn from one seeded stream; fixed, so a mask never depends on the thread count
_SMALL = 1 << 14  # below this many elements torch's own dropout is faster (a stream's set-up costs ~0.1 ms)


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="tuneforge-dropout")


def _fill(seed: int, index: int, threshold: np.uint16, out: np.ndarray) -> None:
    words = np.random.SFC64([seed, index]).random_raw((out.shape[0] + 3) // 4)  # four 16-bit draws per word
    np.greater_equal(words.view(np.uint16)[:out.shape[0]], threshold, out=out)  # numpy releases the GIL here


def keep_mask(shape, p: float) -> torch.Tensor:
    """A uint8 tensor of `shape`: 1 with probability 1 - p (p rounded to a multiple of 2**-16), else 0.
    Large masks are drawn in fixed chunks of their own streams, spread over torch's CPU threads."""
    count = int(np.prod(shape, dtype=np.int64))
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))  # torch's generator decides: seeds and resume hold
    threshold = np.uint16(round(p * 2**_BITS))
    keep = np.empty(count, dtype=np.bool_)
    chunks = [(seed, i, threshold, keep[start:start + _CHUNK]) for i, start in enumerate(range(0, count, _CHUNK))]
    if len(chunks) == 1 or torch.get_num_threads() == 1:
        for chunk in chunks:
            _fill(*chunk)
    else:
        for done in [_pool().submit(_fill, *chunk) for chunk in chunks]:
            done.result()
    return torch.from_numpy(keep.view(np.uint8)).view(shape)


class _ApplyMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale: float):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep.to(x.dtype).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep.to(grad.dtype).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of `x` with probability `p`, the mask drawn by `keep_mask` on CPU."""
    if p <= 0.0:
        return x
    if p >= 1.0 or x.device.type != "cpu" or x.numel() < _SMALL:
        return nn.functional.dropout(x, p, training=True)
    return _ApplyMask.apply(x, keep_mask(x.shape, p), 1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """An `nn.Dropout` whose training-mode mask comes from `keep_mask` (CPU tensors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training else x


def fast_dropout(model: nn.Module) -> int:
    """Switch every plain `nn.Dropout` of `model` to FastDropout, in place; returns how many."""
    return retype_modules(model, nn.Dropout, FastDropout)


def restore_dropout(model: nn.Module) -> None:
    """Undo `fast_dropout`: the modules are plain `nn.Dropout` again."""
    retype_modules(model, FastDropout, nn.Dropout)
