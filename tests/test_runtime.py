"""The runtime: device choice and its errors, precision (fp16 with a checkpointed scaler), how a step's rows are
dealt out among ranks, and metrics merged from shards equal to metrics of the whole."""
from __future__ import annotations

import json

import pytest
import torch

import tuneforge
from tuneforge.engine.loop import count_steps
from tuneforge.engine.parallel import share_of
from tuneforge.engine.runtime import CPU, Runtime, resolve_device
from tuneforge.errors import RecipeError
from tuneforge.tasks.grpo import GRPOMetrics
from tuneforge.tasks.metrics import ClassificationMetrics, CausalLMMetrics, MultiLabelMetrics, RegressionMetrics
from tuneforge.tasks.preference import PolicyMetrics
from tuneforge.tasks.reward_model import RewardMetrics

from conftest import tiny_recipe
from helpers import InterruptAt
from test_engine import assert_same_weights, weights


def test_auto_and_cpu_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (expected, "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_where_there_is_none_is_a_recipe_error(spec, tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(RecipeError) as e:
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"device": spec}))
    assert "training.device" in str(e.value) and spec in str(e.value) and "sees no CUDA GPU" in str(e.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("spec, says", [("tpu", "is not a device"), ("cuda:x", "cuda:N"), ("cuda:-1", "cuda:N")])
def test_malformed_devices_are_named(spec, says):
    if spec.startswith("cuda") and not torch.cuda.is_available():
        says = "sees no CUDA GPU"
    with pytest.raises(RecipeError, match=says):
        resolve_device(spec)


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="this machine has MPS")
def test_mps_where_there_is_none_is_a_recipe_error():
    with pytest.raises(RecipeError, match="no MPS"):
        resolve_device("mps")


def test_predict_refuses_a_device_that_is_not_here(tiny_bert, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1}))
    with pytest.raises(RecipeError, match="device: 'tpu'"):
        tuneforge.predict(r.run_dir, texts=["good film"], device="tpu")
    assert tuneforge.predict(r.run_dir, texts=["good film"], device="cpu")[0]["label"] in ("pos", "neg")


def test_fp16_trains_with_a_scaler_that_resumes_exactly(tiny_bert, sentiment_files, tmp_path):
    training = {"precision": "fp16", "checkpoint_every": 2, "epochs": 2}
    full = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "full", training=training))
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "cut", training=training)
    with pytest.raises(KeyboardInterrupt):
        tuneforge.fine_tune(recipe, callbacks=[InterruptAt(5)])
    checkpoint = tmp_path / "cut" / "checkpoints" / "step-00000004"
    scale = torch.load(checkpoint / "scaler.pt", weights_only=True)
    assert scale["scale"] > 0  # the loss scale is part of where training stands
    resumed = tuneforge.fine_tune(recipe, resume=True)
    assert resumed.metrics == full.metrics
    assert_same_weights(weights(full.run_dir), weights(resumed.run_dir))
    start = tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "fp32", training={"epochs": 2}))
    assert abs(full.metrics["validation"]["loss"] - start.metrics["validation"]["loss"]) < 0.1  # trained alike
    assert json.loads((full.run_dir / "summary.json").read_text())["runtime"]["precision"] == "fp16"


def test_rng_state_of_every_rank_is_kept():
    rt = Runtime(torch.device("cpu"))
    torch.manual_seed(3)
    state = rt.rng_state()
    a = torch.rand(3)
    rt.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))


def test_a_steps_rows_are_dealt_out_by_position():
    step = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    ranks = [share_of(step, Runtime(torch.device("cpu"), rank=r, world_size=2)) for r in (0, 1)]
    assert ranks == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7]]]
    assert share_of([[0, 1]], Runtime(torch.device("cpu"), rank=1, world_size=2)) == []  # joins with a zero loss


def test_steps_count_the_global_batch():
    from tuneforge.recipe import TrainingSpec

    cfg = TrainingSpec(batch_size=4, grad_accum=2, epochs=3)
    assert count_steps(36, cfg, 1) == (5, 15)   # 9 micro-batches, 2 per step
    assert count_steps(36, cfg, 2) == (3, 9)    # 4 per step
    assert CPU.world_size == 1 and CPU.is_main


def _shards(make, batches):
    whole, parts = make(), [make(), make()]
    for i, args in enumerate(batches):
        whole.update(*args)
        parts[i % 2].update(*args)
    parts[0].merge(parts[1])
    return whole.compute(), parts[0].compute()


@pytest.mark.parametrize("kind", ["classification", "multi-label", "regression", "causal", "reward", "policy", "grpo"])
def test_metrics_merged_from_shards_equal_the_whole(kind):
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if kind == "classification":
        make, batches = lambda: ClassificationMetrics(3), [(r(5, 3), torch.randint(0, 3, (5,), generator=g)) for _ in range(5)]
    elif kind == "multi-label":
        make, batches = lambda: MultiLabelMetrics(4), [(r(5, 4), (r(5, 4) > 0).float()) for _ in range(5)]
    elif kind == "regression":
        make, batches = RegressionMetrics, [(r(5, 1), r(5)) for _ in range(5)]
    elif kind == "causal":
        def labels():
            out = torch.randint(0, 7, (2, 6), generator=g)
            out[:, :2] = -100
            return out
        make, batches = CausalLMMetrics, [(r(2, 6, 7), labels()) for _ in range(5)]
    elif kind == "reward":
        make, batches = RewardMetrics, [((r(4), r(4)),) for _ in range(5)]
    elif kind == "policy":
        make = PolicyMetrics
        batches = [({k: r(3) for k in ("chosen", "rejected", "chosen_logps", "rejected_logps")}
                    | {"kl": (float(r(1)), 3)},) for _ in range(5)]
    else:
        make = GRPOMetrics
        batches = [({"rewards": r(4), "group_std": r(2), "tokens": torch.randint(1, 9, (4,), generator=g),
                     "stopped": torch.rand(4, generator=g) > 0.5, "kl": (float(r(1)), 4)},) for _ in range(5)]
    whole, merged = _shards(make, batches)
    assert merged.keys() == whole.keys()
    for k in whole:
        assert merged[k] == pytest.approx(whole[k], rel=1e-6, abs=1e-7), k


class _Attention:
    def on_train_start(self, loop):
        self.kernel = loop.model.config._attn_implementation


@pytest.mark.parametrize("spec", ["eager", "sdpa"])
def test_attention_kernel_is_passed_to_transformers_and_trains_alike(spec, tiny_bert_no_dropout, sentiment_files,
                                                                      tmp_path):
    seen = _Attention()
    r = tuneforge.fine_tune(tiny_recipe(tiny_bert_no_dropout, sentiment_files, tmp_path / spec,
                                        model={"attn_implementation": spec}, training={"epochs": 1}), callbacks=[seen])
    assert seen.kernel == spec
    auto = tuneforge.fine_tune(tiny_recipe(tiny_bert_no_dropout, sentiment_files, tmp_path / "auto",
                                           training={"epochs": 1}))
    assert r.metrics["validation"]["loss"] == pytest.approx(auto.metrics["validation"]["loss"], abs=1e-5)


def test_an_attention_kernel_that_cannot_run_is_a_recipe_error(tiny_bert, sentiment_files, tmp_path):
    pytest.importorskip("torch")
    import importlib.util
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(RecipeError, match="model.attn_implementation: 'flash_attention_2'"):
        tuneforge.fine_tune(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run",
                                        model={"attn_implementation": "flash_attention_2"}))


def test_auto_attention_chooses_flash_only_where_it_runs():
    from tuneforge.models.attention import choose_attention

    class Supports:
        _supports_flash_attn = True
    assert choose_attention("auto", Supports, "cpu", "bf16") is None          # transformers' choice: sdpa
    assert choose_attention("auto", Supports, "cuda", "fp32") is None         # FlashAttention needs bf16/fp16
    assert choose_attention("eager", Supports, "cuda", "bf16") == "eager"     # the user's choice stands


def test_one_gpu_for_several_processes_and_too_many_processes_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RecipeError, match="names one GPU for all 4 processes"):
        resolve_device("cuda:1", local_rank=1, world_size=4)
    with pytest.raises(RecipeError, match="local rank 3 takes GPU 3.*at most 2 processes"):
        resolve_device("cuda", local_rank=3, world_size=4)
    assert resolve_device("auto", local_rank=1, world_size=2) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a launcher that shows each process its own GPU
    assert resolve_device("cuda", local_rank=5, world_size=8) == torch.device("cuda", 0)


class _Ranks:
    """A stand-in for a 2-rank runtime whose rank 1 cannot see rank 0's disk."""
    distributed, is_main, fsdp = True, True, False

    def __init__(self, fsdp=False):
        self.fsdp = fsdp

    def on_main(self, fn):
        return fn()

    def gather(self, obj):
        return [obj, False] if isinstance(obj, bool) else [obj, obj]


@pytest.mark.parametrize("needs", ["resume", "fsdp", "adapt", None])
def test_work_that_needs_shared_storage_is_refused_without_it(needs, tmp_path):
    from tuneforge.errors import RunDirError
    from tuneforge.recipe import parse_recipe
    from tuneforge.rundir import check_shared_storage

    recipe = parse_recipe({"data": {"train": "x.csv"}, **({"adapt": {}} if needs == "adapt" else {})})
    tmp_path.mkdir(exist_ok=True)
    call = lambda: check_shared_storage(tmp_path, _Ranks(needs == "fsdp"), tmp_path if needs == "resume" else None,  # noqa: E731
                                        recipe)
    if needs is None:
        call()  # plain DDP: rank 0 writes everything, the others need none of it
        return
    with pytest.raises(RunDirError, match="not on storage every machine of the run sees"):
        call()


def test_mixtures_of_experts_always_search_for_unused_parameters():
    from types import SimpleNamespace

    from tuneforge.engine.parallel import routes_by_data

    moe = torch.nn.Linear(2, 2)
    moe.config = SimpleNamespace(num_local_experts=8)
    dense = torch.nn.Linear(2, 2)
    dense.config = SimpleNamespace(hidden_size=2)
    assert routes_by_data(moe) and not routes_by_data(dense)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_validate_checks_the_device_too(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(RecipeError, match="training.device"):
        tuneforge.validate(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"device": "cuda"}))
    assert tuneforge.validate(tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run"))["rows"]["train"] == 48


def _measured(monkeypatch, fp32_ms, bf16_ms):
    import tuneforge.engine.runtime as rt

    monkeypatch.delenv(rt.AUTO_ENV, raising=False)
    monkeypatch.setattr(rt, "bf16_speedup", lambda threads: (fp32_ms, bf16_ms))
    monkeypatch.setattr(rt, "cpu_bf16_instructions", lambda: True)  # a CPU whose flags list bf16: auto measures
    return rt


def test_auto_precision_takes_bf16_only_where_it_measures_faster(monkeypatch):
    rt = _measured(monkeypatch, 10.0, 4.0)
    precision, note = rt.resolve_precision("auto", torch.device("cpu"))
    assert precision == "bf16" and "2.5x faster" in note
    rt = _measured(monkeypatch, 10.0, 9.0)  # 1.1x: not worth autocast's casts
    assert rt.resolve_precision("auto", torch.device("cpu"))[0] == "fp32"
    rt = _measured(monkeypatch, 2.0, 19.0)  # a CPU without bf16 instructions
    precision, note = rt.resolve_precision("auto", torch.device("cpu"))
    assert precision == "fp32" and "0.11x" in note


def test_bf16_asked_for_where_it_is_slower_is_kept_with_a_warning(monkeypatch):
    rt = _measured(monkeypatch, 2.0, 19.0)
    precision, note = rt.resolve_precision("bf16", torch.device("cpu"))
    assert precision == "bf16" and "warning" in note and "0.11x" in note and "use auto or fp32" in note
    rt = _measured(monkeypatch, 10.0, 4.0)
    assert rt.resolve_precision("bf16", torch.device("cpu")) == ("bf16", "")
    assert rt.resolve_precision("fp32", torch.device("cpu")) == ("fp32", "")


def test_the_environment_fixes_autos_choice_without_measuring(monkeypatch):
    import tuneforge.engine.runtime as rt

    monkeypatch.setattr(rt, "bf16_speedup", lambda threads: pytest.fail("measured"))
    monkeypatch.setenv(rt.AUTO_ENV, "bf16")
    assert rt.resolve_precision("auto", torch.device("cpu"))[0] == "bf16"
    monkeypatch.setenv(rt.AUTO_ENV, "fp8")
    with pytest.raises(RecipeError, match="use fp32 or bf16"):
        rt.resolve_precision("auto", torch.device("cpu"))


def test_auto_never_takes_bf16_on_a_cpu_without_bf16_instructions(monkeypatch):
    import tuneforge.engine.runtime as rt

    monkeypatch.delenv(rt.AUTO_ENV, raising=False)
    monkeypatch.setattr(rt, "cpu_bf16_instructions", lambda: False)
    monkeypatch.setattr(rt, "bf16_speedup", lambda threads: (40.0, 30.0))  # a timing disturbed by a busy machine
    assert rt.resolve_precision("auto", torch.device("cpu")) == (
        "fp32", "precision fp32 (auto: this CPU has no bf16 instructions)")


def test_cpu_bf16_instructions_are_read_from_the_flags(monkeypatch, tmp_path):
    import tuneforge.engine.runtime as rt

    cpuinfo = tmp_path / "cpuinfo"
    real_path = rt.Path
    monkeypatch.setattr(rt, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    for text, expected in (("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n", True),
                           ("processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni\n", False),
                           ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
                           ("processor\t: 0\n", None)):
        cpuinfo.write_text(text)
        rt.cpu_bf16_instructions.cache_clear()
        assert rt.cpu_bf16_instructions() is expected, text
    rt.cpu_bf16_instructions.cache_clear()


def test_auto_measures_this_cpu_and_says_what_it_found(monkeypatch):
    import tuneforge.engine.runtime as rt

    monkeypatch.delenv(rt.AUTO_ENV, raising=False)
    monkeypatch.setattr(rt, "cpu_bf16_instructions", lambda: None)  # flags unknown: auto measures
    fp32_ms, bf16_ms = rt.bf16_speedup.__wrapped__(1)
    assert 0 < fp32_ms < 10_000 and 0 < bf16_ms < 10_000
    precision, note = rt.resolve_precision("auto", torch.device("cpu"))
    fp32_ms, bf16_ms = rt.bf16_speedup(torch.get_num_threads())  # the measurement auto used (cached)
    assert precision == ("bf16" if fp32_ms / bf16_ms >= rt.BF16_MIN_SPEEDUP else "fp32")
    assert "measured" in note


def test_a_runs_summary_keeps_the_precision_auto_chose(tiny_bert, sentiment_files, tmp_path, monkeypatch):
    _measured(monkeypatch, 10.0, 4.0)
    recipe = tiny_recipe(tiny_bert, sentiment_files, tmp_path / "run", training={"epochs": 1, "precision": "auto"})
    result = tuneforge.fine_tune(recipe)
    assert json.loads((result.run_dir / "summary.json").read_text())["runtime"]["precision"] == "bf16"
