"""Frozen-prefix caching: what the frozen embeddings and lowest blocks compute for a row, computed once.

When the embeddings and the first K transformer blocks have no trainable parameter and run in eval mode (no
dropout), their output for a row depends on its tokens alone and never changes during training. Recomputing it
every epoch is most of a head-only step and most of the forward pass of a lower-frozen one. This cache runs the
prefix once over the training and validation rows, keeps each row's hidden states (in memory, or in a file in
the run folder when they are larger than the memory allowed), and replays them: the first K blocks then return
the stored states instead of computing them.

Rows are addressed by their content (token ids and token types, right padding stripped), so any batch of known
rows, in any order and padding, is served, and a batch with one unknown row is computed as usual. The cache is
checked before every forward pass: a prefix parameter that changed (its in-place version counter moved), was
unfrozen, or a prefix module back in train mode turns replay off until `refresh` rebuilds it. Before the first
replay the cache checks itself: one batch computed both ways, in eval mode, must agree, or caching is turned off
with a note (an architecture whose blocks pass anything but hidden states to each other).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..models.layers import find_blocks, find_layer_groups
from .evaluate import length_batches
from .runtime import Runtime

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Stop(Exception):
    """Raised from the last prefix block while filling: nothing above it needs to run."""

    def __init__(self, output):
        self.output = output


def _as_hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _like(template_is_tuple: bool, hidden: torch.Tensor):
    return (hidden,) if template_is_tuple else hidden


class FrozenPrefixCache:
    """Hidden states of the frozen prefix for known rows; see the module's docstring. A loop callback too."""

    def __init__(self, model: nn.Module, runtime: Runtime, batch_size: int, pad_id: int, memory_bytes: int,
                 spill_dir: Path, console=None):
        self.model, self.runtime, self.batch_size, self.pad_id = model, runtime, batch_size, pad_id
        self.memory_bytes, self.spill_dir, self.console = memory_bytes, Path(spill_dir), console
        prefix, self.blocks = find_blocks(model)
        self.owners = embedding_owners(model, prefix)
        self.splits: list = []
        self.depth = 0                      # K: blocks replayed
        self.signature = None               # what the stored states were computed from
        self.rows: dict[bytes, tuple[int, int]] = {}  # row key -> (offset, length) in the store
        self.store: Optional[torch.Tensor] = None
        self.store_file: Optional[Path] = None
        self.tuple_output = False
        self.active: Optional[torch.Tensor] = None
        self.enabled = True                 # off for good after a failed self-check
        self.hits = self.misses = 0
        self.fills: list[dict] = []         # every build: blocks, rows, tokens, MB, on disk, seconds, batches replayed
        self.current: Optional[dict] = None  # the build being replayed (its count of batches served)
        self._handles = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                         model.register_forward_hook(self._after, always_call=True)]
        self._patched: list[nn.Module] = []

    # ------------------------------------------------------------------ what is frozen

    def frozen_depth(self) -> int:
        """K: leading blocks with no trainable parameter and no module in train mode, above embeddings that are the
        same; 0 when the embeddings train (or run dropout)."""
        if not self.owners or not all(_still(m) for m in self.owners):
            return 0
        k = 0
        for block in self.blocks:
            if not _still(block):
                break
            k += 1
        return k

    def _signature(self, depth: int):
        params = [p for m in (*self.owners, *self.blocks[:depth]) for p in m.parameters()]
        return depth, tuple(p._version for p in params), tuple(p.data_ptr() for p in params)

    # ------------------------------------------------------------------ building

    def watch(self, *splits) -> None:
        """The splits whose rows are computed in advance (training and validation)."""
        self.splits = [s for s in splits if s is not None]

    def refresh(self) -> None:
        """Rebuild when the frozen prefix changed (first call, gradual unfreezing, weights loaded); called after
        the training modes are set."""
        if not self.enabled:
            return
        depth = self.frozen_depth()
        if depth == 0:
            self._clear()
            return
        if self.signature == self._signature(depth):
            return
        self._clear()
        self.depth = depth
        started = time.perf_counter()
        self._fill()
        if self.store is None:  # no row it can address (images, inputs without token ids): nothing to replay
            self._clear()
            return
        self.signature = self._signature(depth)
        self._patch()
        if not self._agrees():
            self.close()
            self.enabled = False
            self._say("  frozen-prefix cache off: its replayed outputs differ from the model's own on this "
                      "architecture; the frozen blocks are computed every step")
            return
        fill = {"blocks": depth, "rows": len(self.rows), "tokens": sum(n for _, n in self.rows.values()),
                "mb": round(self.store.numel() * self.store.element_size() / 2**20, 1),
                "on_disk": self.store_file is not None, "seconds": round(time.perf_counter() - started, 2),
                "replayed_batches": 0}
        self.fills.append(fill)
        self.current = fill
        where = f"on disk ({self.store_file})" if self.store_file else "in memory"
        self._say(f"  frozen prefix cached (embeddings + {depth} of {len(self.blocks)} blocks): {fill['rows']:,} rows, "
                  f"{fill['tokens']:,} tokens, {fill['mb']:.0f} MB {where}, in {fill['seconds']:.1f} s")

    def _say(self, line: str) -> None:
        if self.console is not None and self.runtime.is_main:
            self.console.print(line)

    def _batches(self):
        for split in self.splits:
            for indices in length_batches(split, self.batch_size):
                yield {k: v for k, v in split.batch(indices, self.pad_id).items() if k in MODEL_INPUTS}

    @torch.no_grad()
    def _fill(self) -> None:
        todo, planned, tokens = [], set(), 0
        for batch in self._batches():
            keys = _row_keys(batch)
            if keys is None:
                continue
            new = [(j, k, n) for j, (k, n) in enumerate(keys) if k not in self.rows and k not in planned]
            if new:
                todo.append((batch, new))
                planned.update(k for _, k, _ in new)
                tokens += sum(n for _, _, n in new)
        if not todo:
            return
        last = self.blocks[self.depth - 1]

        def stop(module, args, output):
            raise _Stop(output)
        handle = last.register_forward_hook(stop)
        offset = 0
        try:
            for batch, new in todo:
                try:
                    with self.runtime.autocast():
                        self.model(**self.runtime.to_device(batch))
                    raise RuntimeError(f"the last frozen block ({type(last).__name__}) never ran")
                except _Stop as s:
                    self.tuple_output = isinstance(s.output, tuple)
                    hidden = _as_hidden(s.output).detach().cpu()  # one copy per batch, not per row
                if self.store is None:
                    self._allocate(tokens, hidden.shape[-1], hidden.dtype)
                for j, key, n in new:
                    self.store[offset:offset + n] = hidden[j, :n]
                    self.rows[key] = (offset, n)
                    offset += n
        finally:
            handle.remove()

    def _allocate(self, tokens: int, width: int, dtype: torch.dtype) -> None:
        size = tokens * width * torch.empty((), dtype=dtype).element_size()
        if size <= self.memory_bytes:
            self.store = torch.empty(tokens, width, dtype=dtype)
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self.store_file = self.spill_dir / f"frozen-prefix-{os.getpid()}.bin"
        with open(self.store_file, "wb") as f:
            f.truncate(size)
        self.store = torch.from_file(str(self.store_file), shared=True, size=tokens * width,
                                     dtype=dtype).view(tokens, width)

    @torch.no_grad()
    def _agrees(self) -> bool:
        """One batch of known rows, the whole model in eval mode: replayed and computed logits agree."""
        batch = next(iter(self._batches()), None)
        if batch is None:
            return True
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            inputs = self.runtime.to_device(batch)
            with self.runtime.autocast():
                replayed = _first_tensor(self.model(**inputs))
                self.enabled = False
                computed = _first_tensor(self.model(**inputs))
                self.enabled = True
        finally:
            for m, mode in modes.items():
                m.training = mode
        self.hits = self.misses = 0
        tol = 1e-4 if self.runtime.precision == "fp32" else 2e-2
        return replayed.shape == computed.shape and torch.allclose(replayed.float(), computed.float(), rtol=tol,
                                                                   atol=tol)

    # ------------------------------------------------------------------ replaying

    def _valid(self) -> bool:
        return self.enabled and self.store is not None and self.signature == self._signature(self.depth) \
            and self.frozen_depth() >= self.depth

    def _before(self, module, args, kwargs):
        self.active = None
        if args or self.store is None or "input_ids" not in kwargs or "position_ids" in kwargs \
                or kwargs.get("inputs_embeds") is not None:
            return None
        if not self._valid():
            return None
        keys = _row_keys(kwargs)
        found = [self.rows.get(k) for k, _ in keys] if keys is not None else [None]
        if any(f is None for f in found):
            self.misses += 1
            return None
        self.hits += 1
        if self.current is not None:
            self.current["replayed_batches"] += 1
        ids = kwargs["input_ids"]
        hidden = self.store.new_zeros(*ids.shape, self.store.shape[1])
        for j, (offset, n) in enumerate(found):  # right-padded rows (_row_keys checked): the first n positions
            hidden[j, :n] = self.store[offset:offset + n]
        self.active = hidden.to(ids.device, non_blocking=True)
        return None

    def _after(self, module, args, output):
        self.active = None

    def _patch(self) -> None:
        for i, block in enumerate(self.blocks[:self.depth]):
            original = block.forward

            def forward(*args, _original=original, _first=i == 0, **kwargs):
                if self.active is None:
                    return _original(*args, **kwargs)
                hidden = self.active if _first else (args[0] if args else kwargs["hidden_states"])
                return _like(self.tuple_output, hidden)
            block.forward = forward
            self._patched.append(block)

    def _unpatch(self) -> None:
        for block in self._patched:
            del block.forward  # the class's own forward again
        self._patched = []

    def _clear(self) -> None:
        self._unpatch()
        self.rows, self.store, self.signature, self.depth, self.active, self.current = {}, None, None, 0, None, None
        if self.store_file is not None:
            self.store_file.unlink(missing_ok=True)
            self.store_file = None

    def close(self) -> None:
        """Every hook and patch removed, the store (and its file) released."""
        self._clear()
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ as a loop callback

    def on_train_start(self, loop) -> None:
        self.watch(loop.train_split, loop.validation)

    def on_epoch_end(self, loop) -> None:
        # Training rows that are never found (their inputs change every epoch, e.g. masked-LM masks) make the
        # cache pure cost: give it up.
        if self.store is not None and self.misses > self.hits:
            self._say(f"  frozen-prefix cache off: {self.misses} of {self.hits + self.misses} batches were rows it "
                      "had not seen (inputs that change every epoch)")
            self.close()
            self.enabled = False
        self.hits = self.misses = 0

    def on_train_end(self, loop) -> None:
        self.close()

    on_train_abort = on_train_end


def _still(module: nn.Module) -> bool:
    """No trainable parameter and nothing in train mode: the module computes a fixed function."""
    return not any(p.requires_grad for p in module.parameters()) and not any(m.training for m in module.modules())


def embedding_owners(model: nn.Module, blocks_prefix: str) -> list[nn.Module]:
    """The modules that hold the input-side parameters (the highest ancestors of each that do not contain the block
    stack); none when dropout outside them (GPT-2's embedding dropout) would still run before the blocks."""
    try:
        groups = find_layer_groups(model)
    except ValueError:
        return []
    names: set[str] = set()
    for param in groups.params.get("embeddings", []):
        parts = param.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if not (blocks_prefix == path or blocks_prefix.startswith(path + ".")):
                names.add(path)
                break
    modules = dict(model.named_modules())
    owners = [modules[n] for n in sorted(names)]
    parents = {n.rsplit(".", 1)[0] if "." in n else "" for n in names}
    for parent in parents:
        for name, child in modules[parent].named_children():
            path = f"{parent}.{name}" if parent else name
            inside = blocks_prefix == path or blocks_prefix.startswith(path + ".")
            if path not in names and not inside and not any(True for _ in child.parameters()) and any(
                    isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in child.modules()):
                return []
    return owners


def _row_keys(inputs: dict) -> Optional[list[tuple[bytes, int]]]:
    """(content key, length) of every row of right-padded inputs; None when the padding is not on the right."""
    ids = inputs.get("input_ids")
    if ids is None:
        return None
    ids = ids.cpu()
    mask = inputs.get("attention_mask")
    if mask is not None:
        mask = mask.cpu().bool()
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(ids.shape[1])[None, :] < lengths[:, None]):
            return None
    else:
        lengths = torch.full((ids.shape[0],), ids.shape[1])
    types = inputs.get("token_type_ids")
    types = types.cpu() if types is not None else None
    keys = []
    for i, n in enumerate(lengths.tolist()):
        key = ids[i, :n].numpy().tobytes()
        if types is not None:
            key += b"|" + types[i, :n].numpy().tobytes()
        keys.append((key, n))
    return keys


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output[0]
