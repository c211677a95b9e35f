"""CPU fast paths of training (engine/dropout.py, adapters/fused_lora.py): each must compute what the plain path
computes, be decided by torch's seed, and leave the model as it was built once training ends."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_recipe
from helpers import Snapshot
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

import tuneforge
from tuneforge.adapters.fused_lora import FusedLoraLinear, fuse_lora, unfuse_lora
from tuneforge.engine.dropout import FastDropout, dropout, fast_dropout, keep_mask, restore_dropout


class KeepModel:
    def on_train_start(self, loop):
        self.model = loop.model
        self.dropout_classes = {type(m) for m in loop.model.modules() if isinstance(m, nn.Dropout)}
        self.lora_classes = {type(m) for m in loop.model.modules() if isinstance(m, LoraLinear)}


# ---------------------------------------------------------------- dropout masks

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_keeps_one_minus_p_of_the_elements(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1000), p)
    assert keep.dtype == torch.uint8 and keep.shape == (1000, 1000)
    assert set(keep.unique().tolist()) <= {0, 1}
    # 1e6 Bernoulli draws: the standard error of the kept fraction is <= 5e-4
    assert abs(keep.float().mean().item() - (1 - p)) < 3e-3


def test_dropout_keeps_the_mean_and_the_gradient_is_the_masked_scaled_upstream():
    torch.manual_seed(0)
    x = torch.ones(512, 384, requires_grad=True)
    y = dropout(x, 0.25)
    assert torch.equal(y.detach().unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(y.detach().mean().item() - 1.0) < 0.01
    upstream = torch.randn_like(y)
    y.backward(upstream)
    assert torch.equal(x.grad, upstream * y.detach())  # x is all ones: y is exactly mask * 1/(1-p)


def test_masks_are_decided_by_torchs_seed():
    torch.manual_seed(7)
    first = keep_mask((64, 300), 0.1)
    torch.manual_seed(7)
    again = keep_mask((64, 300), 0.1)
    other = keep_mask((64, 300), 0.1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_masks_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    shape = (3, 1 << 18)  # three chunks: drawn in parallel with more than one thread
    try:
        masks = []
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(3)
            masks.append(keep_mask(shape, 0.1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1])


def test_dropout_edge_probabilities_and_eval_mode():
    x = torch.randn(4, 8)
    torch.manual_seed(0)
    small = dropout(x, 0.5)
    torch.manual_seed(0)
    assert torch.equal(small, nn.functional.dropout(x, 0.5))  # tiny tensors: torch's own dropout is faster
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = nn.Dropout(0.3)
    fast_dropout(module)
    assert type(module) is FastDropout
    module.eval()
    assert torch.equal(module(x), x)


def test_switching_dropout_keeps_the_modules_and_their_state():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.1)), nn.Dropout1d(0.5))
    before = model.state_dict()
    assert fast_dropout(model) == 2  # plain nn.Dropout only: Dropout1d drops whole channels, left to torch
    assert [type(m) for m in model.modules()].count(FastDropout) == 2
    assert all(isinstance(m, nn.Dropout) for m in model.modules() if type(m) is FastDropout)
    restore_dropout(model)
    assert FastDropout not in {type(m) for m in model.modules()}
    assert model.state_dict().keys() == before.keys()


# ---------------------------------------------------------------- fused LoRA

class TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 12)
        self.o = nn.Linear(12, 16, bias=False)

    def forward(self, x):
        return self.o(torch.tanh(self.q(x)))


def _lora_pair(p: float, **config):
    """A PEFT LoRA model with nonzero B (so the adapter contributes) and an identical copy."""
    torch.manual_seed(0)
    model = get_peft_model(TwoLinears(), LoraConfig(r=4, lora_alpha=8, lora_dropout=p, target_modules=["q", "o"],
                                                    **config))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(weight)
    model.train()
    return model, copy.deepcopy(model)


def _run(model, x, seed=1, autocast=False):
    """Output, input gradient and parameter gradients for one forward and backward with a fixed upstream."""
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    y.float().backward(torch.linspace(-1, 1, y.numel()).view(y.shape))
    grads = {n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None}
    model.zero_grad()
    return y.detach().float(), x.grad, grads


def _close(a, b, tol):
    assert (a - b).norm() <= tol * b.norm(), ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("p", [0.0, 0.25])
def test_fused_lora_equals_peft_in_outputs_and_gradients(p):
    fused, reference = _lora_pair(p)
    assert fuse_lora(fused) == 2
    fast_dropout(reference)  # PEFT's own forward with the same masks: both draw keep_mask(x.shape, p) in order
    x = torch.randn(4, 400, 16)  # above the size where FastDropout hands over to torch's dropout
    y, gx, grads = _run(fused, x)
    y_ref, gx_ref, grads_ref = _run(reference, x)
    tol = 1e-6 if p == 0 else 1e-5  # with dropout, 1/(1-p) is applied after the rank-r matmul instead of before
    _close(y, y_ref, tol)
    _close(gx, gx_ref, tol)
    assert grads.keys() == grads_ref.keys() and len(grads) == 4  # A and B of both layers: the bases are frozen
    for name in grads:
        _close(grads[name], grads_ref[name], tol)


def test_fused_lora_under_bf16_autocast_is_as_close_to_fp32_as_peft():
    fused, reference = _lora_pair(0.25)
    truth = copy.deepcopy(reference)
    fuse_lora(fused)
    for model in (reference, truth):
        fast_dropout(model)
    x = torch.randn(4, 400, 16)  # above the size where FastDropout hands over to torch's dropout
    y, gx, grads = _run(fused, x, autocast=True)
    y_peft, gx_peft, grads_peft = _run(reference, x, autocast=True)
    y_true, gx_true, grads_true = _run(truth, x)

    def error(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    assert error(y, y_true) <= 2 * error(y_peft, y_true) + 1e-3
    assert error(gx, gx_true) <= 2 * error(gx_peft, gx_true) + 1e-3
    for name in grads_true:
        assert error(grads[name], grads_true[name]) <= 2 * error(grads_peft[name], grads_true[name]) + 1e-3


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")
@pytest.mark.parametrize("case", ["dora", "merged", "trainable base", "two adapters", "lora bias"])
def test_cases_that_are_not_fused_run_peft_forward(case):
    config = {"use_dora": True} if case == "dora" else {"lora_bias": True} if case == "lora bias" else {}
    fused, reference = _lora_pair(0.0, **config)
    for model in (fused, reference):
        if case == "merged":
            model.merge_adapter()
        if case == "trainable base":
            model.base_model.model.q.base_layer.weight.requires_grad_(True)
        if case == "two adapters":
            model.add_adapter("second", LoraConfig(r=2, target_modules=["q"]))
            model.base_model.set_adapter(["default", "second"])
    fuse_lora(fused)
    layer = fused.base_model.model.q
    x = torch.randn(2, 3, 16)
    assert type(layer) is FusedLoraLinear and layer._fusable_adapter(x, (), {}) is None
    y, gx, _ = _run(fused, x)
    y_ref, gx_ref, _ = _run(reference, x)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)


def test_unfuse_restores_peft_layers():
    fused, _ = _lora_pair(0.1)
    fuse_lora(fused)
    unfuse_lora(fused)
    assert {type(m) for m in fused.modules() if isinstance(m, LoraLinear)} == {LoraLinear}


# ---------------------------------------------------------------- in training

@pytest.mark.parametrize("method", ["full", "lora"])
def test_fast_paths_are_on_during_training_only(tiny_bert, sentiment_files, tmp_path, method):
    keep, snap = KeepModel(), Snapshot()
    tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": method},
                                    training={"restore_best": False}), callbacks=[keep, snap])
    inside = keep.dropout_classes | keep.lora_classes
    assert FastDropout in inside
    assert (FusedLoraLinear in inside) == (method == "lora")
    after = {type(m) for m in keep.model.modules()}
    assert FastDropout not in after and FusedLoraLinear not in after
    changed = snap.changed()
    assert changed and changed <= snap.trainable_at_start


def test_fused_lora_training_gives_the_weights_of_peft_forward(tiny_bert_no_dropout, sentiment_files, tmp_path):
    weights = {}
    for fused in (True, False):
        snap = Snapshot()
        tuneforge.fine_tune(tiny_recipe(tiny_bert_no_dropout, sentiment_files, tmp_path / str(fused),
                                        method={"name": "lora", "dropout": 0.0},
                                        training={"fused_lora": fused, "lr": 1e-2, "restore_best": False}),
                            callbacks=[snap])
        weights[fused] = snap.end
    assert weights[True].keys() == weights[False].keys()
    for name in weights[False]:
        torch.testing.assert_close(weights[True][name], weights[False][name], rtol=1e-4, atol=1e-5)


def test_fast_dropout_off_uses_torchs_dropout(tiny_bert, sentiment_files, tmp_path):
    keep = KeepModel()
    tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                    training={"fast_dropout": False}), callbacks=[keep])
    assert FastDropout not in keep.dropout_classes
