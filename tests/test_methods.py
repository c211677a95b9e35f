import pytest
import torch

import tuneforge
from tuneforge.engine.optim import make_optimizer
from tuneforge.methods.param_groups import build_param_groups, group_learning_rates
from tuneforge.models.layers import find_layer_groups

from conftest import tiny_recipe
from helpers import Snapshot

EMB = "bert.embeddings."
L0, L1 = "bert.encoder.layer.0.", "bert.encoder.layer.1."
HEAD = ("bert.pooler.", "classifier.")


def run(tiny_bert, files, tmp_path, method, **training):
    snap = Snapshot()
    recipe = tiny_recipe(tiny_bert, files, tmp_path / "run", method=method,
                         training={"restore_best": False, **training})
    result = tuneforge.fine_tune(recipe, callbacks=[snap])
    return snap, result


CASES = {
    "full": ({"name": "full"}, lambda n: True),
    "head": ({"name": "head"}, lambda n: n.startswith(HEAD)),
    "freeze-embeddings-and-1": ({"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1},
                                lambda n: n.startswith((L1,) + HEAD)),
    "freeze-pattern": ({"name": "freeze", "freeze_patterns": ["*.attention.*"]}, lambda n: ".attention." not in n),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_changes_exactly_the_parameters_it_trains(tiny_bert, sentiment_files, tmp_path, case):
    method, should_train = CASES[case]
    snap, result = run(tiny_bert, sentiment_files, tmp_path, method)
    expected = {n for n in snap.start if should_train(n)}
    assert snap.trainable_at_start == expected
    assert snap.changed() == expected  # trainable changed, frozen did not
    assert result.trainable_parameters == sum(snap.start[n].numel() for n in expected)


def test_gradual_unfreezing_goes_top_down(tiny_bert, sentiment_files, tmp_path):
    # 48 rows / batch 8 = 6 steps per epoch; one group more every 2 steps: head, +layer.1, +layer.0, +embeddings.
    class Stages:
        def __init__(self):
            self.trainable = {}

        def on_step_end(self, loop):
            self.trainable[loop.state.global_step] = {n for n, p in loop.model.named_parameters() if p.requires_grad}

    stages = Stages()
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "gradual", "unfreeze_every": 2})
    tuneforge.fine_tune(recipe, callbacks=[stages])
    groups = lambda names: {("emb" if n.startswith(EMB) else "l0" if n.startswith(L0) else "l1" if n.startswith(L1) else "head") for n in names}
    assert groups(stages.trainable[1]) == {"head"}
    assert groups(stages.trainable[2]) == {"head", "l1"}
    assert groups(stages.trainable[4]) == {"head", "l1", "l0"}
    assert groups(stages.trainable[6]) == {"head", "l1", "l0", "emb"}


def test_gradual_by_epoch_freezes_lower_layers_in_the_first_epoch(tiny_bert, sentiment_files, tmp_path):
    class FirstEpoch:
        def on_epoch_end(self, loop):
            if loop.state.epoch == 1:
                self.params = {n: p.detach().clone() for n, p in loop.model.named_parameters()}

    first = FirstEpoch()
    snap = Snapshot()
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", method={"name": "gradual"})
    tuneforge.fine_tune(recipe, callbacks=[snap, first])
    changed_first_epoch = {n for n in snap.start if not torch.equal(snap.start[n], first.params[n])}
    assert changed_first_epoch == {n for n in snap.start if n.startswith(HEAD)}


def test_frozen_prefix_runs_in_eval_mode(tiny_bert, sentiment_files, tmp_path):
    class Modes:
        def on_step_end(self, loop):
            m = loop.model
            self.emb = m.bert.embeddings.training
            self.l0 = m.bert.encoder.layer[0].training
            self.l1 = m.bert.encoder.layer[1].training

    modes = Modes()
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                         method={"name": "freeze", "freeze_embeddings": True, "freeze_layers": 1})
    tuneforge.fine_tune(recipe, callbacks=[modes])
    assert (modes.emb, modes.l0, modes.l1) == (False, False, True)


def test_layerwise_lr_decay_and_no_decay_groups(tiny_bert):
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    groups = find_layer_groups(model)
    rates = group_learning_rates(groups, lr=1.0, head_lr=10.0, layer_lr_decay=0.5, group_lr={"embeddings": 0.01})
    assert rates == {"layer.1": 0.5, "layer.0": 0.25, "embeddings": 0.01, "head": 10.0}
    pg = build_param_groups(model, groups, rates, weight_decay=0.1)
    by_name = {g["name"]: g for g in pg}
    assert by_name["layer.0"]["lr"] == 0.25 and by_name["layer.0"]["weight_decay"] == 0.1
    no_decay = by_name["layer.0.no_decay"]["param_names"]
    assert no_decay and all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert all(not (n.endswith("bias") or "LayerNorm" in n) for n in by_name["layer.0"]["param_names"])
    opt = make_optimizer(pg)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in pg]


def test_unknown_group_and_too_many_layers_are_reported(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(tuneforge.RecipeError, match=r"unknown group\(s\) \['layer.9'\]"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "a", method={"group_lr": {"layer.9": 1e-3}}))
    with pytest.raises(tuneforge.RecipeError, match="more than the model's 2 blocks"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "b",
                                        method={"name": "freeze", "freeze_layers": 5}))
    with pytest.raises(tuneforge.RecipeError, match="match no parameter name"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "c",
                                        method={"name": "freeze", "freeze_patterns": ["*.nothing.*"]}))
