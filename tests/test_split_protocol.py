"""Every task's encoded split is the one declared shape (`tuneforge.data.split.Split`): a row count, lengths,
the loss normalizer and batches. A split class added without one of them fails here, not in the loop."""
from __future__ import annotations

import inspect

import pytest

from tuneforge.data.collate import CausalLMSplit, EncodedSplit, ImageSplit
from tuneforge.data.masked import MaskedLMSplit
from tuneforge.data.preference import PolicyPairSplit, RewardPairSplit
from tuneforge.data.prompts import PromptSplit
from tuneforge.data.qa_windows import QASplit
from tuneforge.data.split import Split
from tuneforge.data.tokens import TokenSplit
from tuneforge.weak.self_training import PseudoLabelSplit

SPLITS = [EncodedSplit, ImageSplit, CausalLMSplit, MaskedLMSplit, PolicyPairSplit, RewardPairSplit, PromptSplit,
          PseudoLabelSplit, TokenSplit, QASplit]


@pytest.mark.parametrize("cls", SPLITS, ids=lambda c: c.__name__)
def test_every_split_has_the_declared_shape(cls):
    for name in ("__len__", "count", "batch"):
        assert callable(getattr(cls, name, None)), f"{cls.__name__} has no {name}"
    assert isinstance(inspect.getattr_static(cls, "lengths"), property), f"{cls.__name__}.lengths is not a property"
    count = inspect.signature(cls.count).parameters
    batch = inspect.signature(cls.batch).parameters
    assert list(count)[:2] == ["self", "indices"] and "augment" in count
    assert list(batch)[:3] == ["self", "indices", "pad_id"] and "augment" in batch


def test_a_real_split_is_a_split_and_a_row_list_is_not():
    import torch

    split = EncodedSplit([[2, 5, 3], [2, 6, 7, 3]], None, torch.tensor([0, 1]), 0)
    assert isinstance(split, Split) and split.lengths == [3, 4] and split.count([0, 1]) == 2
    assert not isinstance([[2, 5, 3]], Split)

