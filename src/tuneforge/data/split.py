"""The one shape every task's data is encoded to, and all the loop, evaluation and prediction ask of it.

Declared once here; each task's split (text, images, causal-LM rows, preference pairs, prompts, masked-LM rows,
pseudo-labels) implements it, and `tests/test_split_protocol.py` holds every one of them to it."""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Split(Protocol):
    def __len__(self) -> int:
        """Rows (a preference split: pairs)."""

    @property
    def lengths(self) -> list[int]:
        """Each row's length in tokens (1 for images): evaluation batches rows of similar length together."""

    def count(self, indices: Sequence[int], augment: Optional[tuple[int, int]] = None) -> int:
        """What a loss summed over these rows is divided by: examples, target tokens or pairs. `augment` is
        (data seed, epoch) for training batches whose targets depend on the draw (masked LM)."""

    def batch(self, indices: Sequence[int], pad_id: int, augment: Optional[tuple[int, int]] = None) -> dict:
        """The model inputs and labels of these rows, as host tensors (the runtime moves them to the device)."""
