"""The loop's promises: accumulation equivalence, determinism, separate seeds, exact resume, keep-best."""
import json

import pytest
import torch
from safetensors.torch import load_file

import tuneforge
from tuneforge.engine.callbacks import EarlyStopping, KeepBest
from tuneforge.engine.checkpoint import list_checkpoints, load_weights, save_weights
from tuneforge.engine.loop import LoopState

from conftest import tiny_recipe
from helpers import InterruptAt, Snapshot


def weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=2e-6, msg=k)


def test_accumulation_equals_the_large_batch(tiny_bert_no_dropout, sentiment_files, tmp_path):
    # 44 rows: the last step of each epoch is short (4 rows), and must still be normalized over its own rows.
    common = {"restore_best": False, "epochs": 2}
    big = tiny_recipe(tiny_bert_no_dropout, sentiment_files, tmp_path / "big", data={"limit_train": 44},
                      training={**common, "batch_size": 8, "grad_accum": 1})
    small = tiny_recipe(tiny_bert_no_dropout, sentiment_files, tmp_path / "small", data={"limit_train": 44},
                        training={**common, "batch_size": 2, "grad_accum": 4})
    rb, rs = tuneforge.fine_tune(big), tuneforge.fine_tune(small)
    assert rb.steps == rs.steps == 12
    assert_same_weights(weights(rb.run_dir), weights(rs.run_dir), exact=False)
    start = load_file(str(tiny_bert_no_dropout / "model.safetensors"))
    moved = weights(rb.run_dir)["bert.encoder.layer.0.output.dense.weight"] - start["encoder.layer.0.output.dense.weight"]
    assert moved.abs().max() > 1e-3  # the comparison is not between two untouched models


def test_same_recipe_and_seeds_give_identical_results(tiny_bert, sentiment_files, tmp_path):
    r1 = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "a"))
    r2 = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "b"))
    assert r1.metrics == r2.metrics
    assert_same_weights(weights(r1.run_dir), weights(r2.run_dir))


def test_head_seed_and_data_seed_act_separately(tiny_bert, sentiment_files, tmp_path):
    def start_head(run, **seeds):
        snap = Snapshot()
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / run, training=seeds), callbacks=[snap])
        return snap

    base = start_head("a", head_seed=1, data_seed=1)
    other_data = start_head("b", head_seed=1, data_seed=2)
    other_head = start_head("c", head_seed=2, data_seed=1)
    key = "classifier.weight"
    assert torch.equal(base.start[key], other_data.start[key])       # same head init
    assert not torch.equal(base.end[key], other_data.end[key])       # different data order
    assert not torch.equal(base.start[key], other_head.start[key])   # different head init
    # the pre-trained body starts identical whatever the seeds
    assert torch.equal(base.start["bert.encoder.layer.0.output.dense.weight"],
                       other_head.start["bert.encoder.layer.0.output.dense.weight"])


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "gradual", "unfreeze_every": 2}])
def test_resume_mid_epoch_equals_an_uninterrupted_run(tiny_bert, sentiment_files, tmp_path, method):
    # 6 steps per epoch; checkpoint at step 4, stop at 5; the log's 3-step window spans the checkpoint
    training = {"checkpoint_every": 2, "epochs": 2, "log_every": 3}
    full = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "full", method=method, training=training))
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "cut", method=method, training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(5)])
    assert (tmp_path / "cut" / "checkpoints" / "step-00000004").is_dir()
    with pytest.raises(tuneforge.RunDirError, match="--resume"):
        tuneforge.fine_tune(recipe)  # an unfinished run is not silently restarted
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))
    lines = lambda r: [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("samples_per_s", "eval_seconds")} for r in recs]
    assert strip(lines(full)) == strip(lines(resumed))


def test_checkpoints_are_written_atomically_and_pruned(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"checkpoint_every": 1, "keep_checkpoints": 2}))
    names = sorted(p.name for p in (r.run_dir / "checkpoints").iterdir())
    assert names == ["best", "step-00000011", "step-00000012"]
    assert not list(r.run_dir.rglob("*.tmp"))
    # a checkpoint cut short by a crash (still under its .tmp name) is never taken as the latest
    half = r.run_dir / "checkpoints" / "step-00000099.tmp"
    half.mkdir()
    (half / "loop_state.json").write_text("{}")
    assert list_checkpoints(r.run_dir / "checkpoints")[-1].name == "step-00000012"
    state = json.loads((r.run_dir / "checkpoints" / "step-00000012" / "loop_state.json").read_text())
    assert state["global_step"] == 12 and state["epoch"] == 2


def test_best_model_is_restored(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"eval_every": 1, "epochs": 2, "metric": "loss"}))
    history = json.loads((r.run_dir / "summary.json").read_text())["history"]
    best = min(history, key=lambda h: h["loss"])
    assert r.best_step == best["step"]
    assert r.metrics["validation"]["loss"] == pytest.approx(best["loss"], abs=1e-6)


class FakeLoop:
    def __init__(self):
        self.state = LoopState()
        self.model = torch.nn.Linear(2, 2)


def test_early_stopping_after_patience(tmp_path):
    loop = FakeLoop()
    keep = KeepBest("accuracy", True, 0.0, tmp_path / "best.safetensors")
    stop = EarlyStopping(patience=2)
    for step, acc in enumerate([0.5, 0.6, 0.55, 0.6, 0.59], start=1):
        loop.state.global_step = step
        keep.on_evaluate(loop, {"accuracy": acc})
        stop.on_evaluate(loop, {"accuracy": acc})
        if loop.state.should_stop:
            break
    assert step == 4 and loop.state.best_step == 2 and loop.state.best_metric == 0.6


def test_early_stopping_ends_training(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        training={"eval_every": 1, "epochs": 5,
                                                  "early_stopping": {"patience": 2, "min_delta": 1.0}}))
    assert r.steps == 3  # accuracy cannot rise by min_delta 1.0: two evaluations after the first, stop


def test_step_based_eval_and_logs(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"eval_every": 4}))
    recs = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if x["split"] == "validation"] == [4, 8, 12]
    train = [x for x in recs if x["split"] == "train"]
    assert [x["step"] for x in train] == [2, 4, 6, 8, 10, 12] and all(x["samples_per_s"] > 0 for x in train)
    assert list((r.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_group_by_length_cuts_padding_and_keeps_every_row():
    from tuneforge.engine.loop import epoch_order, group_by_length

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (1000,), generator=g).tolist()
    order = epoch_order(1000, 7, 0)
    grouped = group_by_length(order, lengths, step_rows=16)
    assert sorted(grouped) == list(range(1000))
    assert grouped == group_by_length(epoch_order(1000, 7, 0), lengths, step_rows=16)  # a function of the seed

    def padded(o):
        return sum(max(lengths[i] for i in o[k:k + 16]) * len(o[k:k + 16]) for k in range(0, len(o), 16))

    assert padded(grouped) < 0.7 * padded(order)


def test_grouped_batches_still_change_from_epoch_to_epoch():
    from tuneforge.engine.loop import epoch_order, group_by_length

    lengths = [3 + i % 40 for i in range(20)]  # a small set: 5 batches of 4, fewer than one window of 50
    epochs = [group_by_length(epoch_order(20, 0, e), lengths, step_rows=4, seed=e) for e in range(4)]
    batches = [[frozenset(o[k:k + 4]) for k in range(0, 20, 4)] for o in epochs]
    assert len({tuple(b) for b in batches}) == 4  # the order of batches differs in every epoch
    assert len({frozenset(b) for b in batches}) > 1  # and so does which rows meet in one
    assert all(sorted(o) == list(range(20)) for o in epochs)


def test_grouped_steps_of_a_window_are_shuffled_not_sorted():
    from tuneforge.engine.loop import epoch_order, group_by_length

    lengths = [3 + (i * 7) % 50 for i in range(400)]
    grouped = group_by_length(epoch_order(400, 0, 0), lengths, step_rows=4, seed=1)  # 100 steps: windows of 25
    longest = [max(lengths[i] for i in grouped[k:k + 4]) for k in range(0, 100, 4)]  # the first window's steps
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    assert all(max(lengths[i] for i in grouped[k:k + 4]) - min(lengths[i] for i in grouped[k:k + 4]) <= 10
               for k in range(0, 400, 4))  # yet each step holds rows of similar length


def test_group_by_length_trains_and_resumes_exactly(tiny_bert, sentiment_files, tmp_path):
    training = {"group_by_length": True, "checkpoint_every": 2}
    full = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "full", training=training))
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "cut", training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(7)])
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))


def test_tied_weights_are_saved_once_and_restored(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.out = torch.nn.Linear(3, 5, bias=False)
            self.out.weight = self.emb.weight

    a, b = Tied(), Tied()
    save_weights(a, tmp_path / "w.safetensors")
    assert set(load_file(str(tmp_path / "w.safetensors"))) == {"emb.weight"}
    load_weights(b, tmp_path / "w.safetensors")
    assert torch.equal(b.out.weight, a.emb.weight) and b.out.weight is b.emb.weight
    with pytest.raises(RuntimeError, match="does not match the model"):
        load_weights(torch.nn.Linear(3, 5), tmp_path / "w.safetensors")


def test_resume_log_drops_records_after_the_checkpoint_and_a_half_written_line(tmp_path):
    from tuneforge.engine.callbacks import truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 6, "loss": 0.8}\n{"step": 8, "lo')
    truncate_jsonl(log, 4)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [2, 4]
