"""Every way to name a model: Hub IDs from a Hugging Face cache (offline, laid out as huggingface_hub lays it out,
built here), GGUF files of two architecture families (written here), and the dtype the weights load in."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tuneforge
from tuneforge.errors import TuneforgeError
from tuneforge.models.gguf import gguf_source
from tuneforge.models.sources import resolve_model_path

from conftest import make_tiny_bert, sentiment_rows, tiny_recipe, write_rows
from gguf_files import tiny_gguf

TESTS = Path(__file__).parent


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",),
                     only: tuple[str, ...] | None = None) -> Path:
    """`folder`'s files as the snapshot `commit` of model `repo_id` in a hub cache: blobs named by their hash,
    snapshot entries linking to them, refs naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        if only is not None and file.name not in only:
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def sentiment(tmp_path) -> dict[str, Path]:
    rows = sentiment_rows(48)
    return {"train": write_rows(tmp_path / "train.jsonl", rows), "validation": write_rows(tmp_path / "val.jsonl", rows[:16])}


COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def test_a_hub_id_loads_from_the_cache_offline_at_the_revision_asked(hub_cache, tmp_path, sentiment):
    main = add_to_hub_cache(hub_cache, "tiny-org/tiny-bert", make_tiny_bert(tmp_path / "a"), COMMIT_A)
    other = make_tiny_bert(tmp_path / "b", hidden=48)  # another revision: another width, so it cannot be mistaken
    v2 = add_to_hub_cache(hub_cache, "tiny-org/tiny-bert", other, COMMIT_B, refs=("v2",))
    assert resolve_model_path("tiny-org/tiny-bert") == main
    assert resolve_model_path("tiny-org/tiny-bert@v2") == v2
    assert resolve_model_path(f"tiny-org/tiny-bert@{COMMIT_B}") == v2
    recipe = tiny_recipe("tiny-org/tiny-bert", sentiment, tmp_path / "run", model={"revision": "v2"},
                         training={"epochs": 1})
    result = tuneforge.fine_tune(recipe)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["hidden_size"] == 48  # the v2 snapshot trained, not main
    assert (result.run_dir / "recipe.yaml").read_text().count("tiny-org/tiny-bert@v2") == 1


def test_a_revision_given_twice_differently_is_refused(tmp_path, sentiment):
    from tuneforge.recipe import load_recipe

    recipe = tiny_recipe("tiny-org/tiny-bert@v1", sentiment, tmp_path / "run", model={"revision": "v2"})
    with pytest.raises(TuneforgeError, match="names revision 'v1' and model.revision says 'v2'"):
        load_recipe(recipe)


def test_a_model_missing_from_the_cache_offline_says_how_to_fetch_it(hub_cache):
    with pytest.raises(TuneforgeError) as e:
        resolve_model_path("tiny-org/absent@v3")
    text = str(e.value)
    assert "not in the Hugging Face cache" in text and str(hub_cache) in text
    assert "hf download tiny-org/absent --revision v3" in text and "HF_HUB_OFFLINE" in text


def test_a_cached_snapshot_without_weights_is_named_not_half_loaded(hub_cache, tmp_path):
    add_to_hub_cache(hub_cache, "tiny-org/config-only", make_tiny_bert(tmp_path / "a"), COMMIT_A, only=("config.json",))
    with pytest.raises(TuneforgeError, match="holds no safetensors weights .*config.json"):
        resolve_model_path("tiny-org/config-only")


def test_names_that_are_no_model_are_told_apart(tmp_path):
    with pytest.raises(TuneforgeError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(TuneforgeError, match="neither a packaged model alias .* nor a Hugging Face Hub ID"):
        resolve_model_path("not a model name")
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"x")
    (two / "b.gguf").write_bytes(b"x")
    with pytest.raises(TuneforgeError, match="holds 2 GGUF files"):
        resolve_model_path(str(two))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_gguf_file_converts_once_to_the_same_model_and_tokenizer(arch, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    file, model, tokenizer = tiny_gguf(tmp_path / "src", arch)
    folder = resolve_model_path(str(file))
    assert folder.parent == tmp_path / "cache" / "models"
    source = gguf_source(folder)
    assert source["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() and source["model_type"] == arch
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("the capital of kenya is nairobi", return_tensors="pt").input_ids
    assert reloaded_tok("the capital of kenya is nairobi", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, model(ids).logits)  # fp32 in, fp32 out: bit for bit
    assert "<|im_start|>" in reloaded_tok.chat_template and reloaded_tok.eos_token == "<|im_end|>"
    written = (folder / "model.safetensors").stat().st_mtime_ns
    # The same bytes elsewhere (or the folder holding them) are the same model: keyed by content, not converted again.
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copy(file, copy)
    assert resolve_model_path(str(copy)) == folder and resolve_model_path(str(copy.parent)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


def test_two_processes_converting_one_file_at_once_get_one_folder(tmp_path):
    file, _, _ = tiny_gguf(tmp_path / "src", "llama")
    env = {**os.environ, "TUNEFORGE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(TESTS.parent / "src")}
    code = "import sys; from tuneforge.models.sources import resolve_model_path; print(resolve_model_path(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(file)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    folders = {o[0].strip() for o in outs}
    assert len(folders) == 1
    models = tmp_path / "cache" / "models"
    converted = [p.name for p in models.iterdir() if p.is_dir() and p.name.startswith("gguf-")]
    assert converted == [Path(folders.pop()).name]  # and no half-written folder beside it
    assert not [p for p in models.iterdir() if p.name.startswith("tmp")]


def test_a_gguf_without_a_chat_template_trains_on_prompt_completion_rows(tmp_path, monkeypatch):
    """No template while data.chat_template stays true: a warning says the rows are plain text, and prompt and
    completion are joined by a new line that the model learns to write, so a plain pipeline continues after it."""
    from transformers import pipeline

    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    file, _, _ = tiny_gguf(tmp_path / "src", "qwen2", chat_template=None)
    rows = [{"prompt": "country: kenya", "completion": "nairobi"}, {"prompt": "country: france", "completion": "paris"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows * 8))
    recipe = {"model": {"name": str(file), "max_length": 32}, "task": {"type": "causal-lm"},
              "data": {"train": str(train), "validation": str(train)},
              "method": {"name": "full"}, "output": {"dir": str(tmp_path / "run")},
              "training": {"epochs": 12, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "progress": False}}
    warnings = tuneforge.validate(recipe)["warnings"]
    assert any("has no chat template: prompt/completion rows are rendered as plain text" in w for w in warnings)
    result = tuneforge.fine_tune(recipe)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["loss"] for r in records if r["split"] == "validation"]
    assert len(evals) == 12 and evals[-1] < evals[0] / 4
    generator = pipeline("text-generation", model=str(result.model_dir), device="cpu")
    out = generator("country: kenya", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out.startswith("country: kenya\nnairobi"), out
    reply = tuneforge.generate(result.run_dir, "country: france", tuneforge.GenerationOptions(max_new_tokens=6))
    assert reply == "paris"


def test_plain_prompt_and_completion_are_joined_by_a_new_line_unless_spaced_already():
    from tuneforge.data.causal import tokenize_prompt_completion
    from gguf_files import byte_level_tokenizer

    tok = byte_level_tokenizer()
    row = tokenize_prompt_completion(tok, "country: kenya", "nairobi", "r1")
    assert tok.decode(row.input_ids) == "country: kenya\nnairobi<|im_end|>"
    target = tok.decode([t for t in row.labels if t != -100])
    assert target == "\nnairobi<|im_end|>"  # the separator is the completion's: the model learns to write it
    spaced = tokenize_prompt_completion(tok, "country: kenya ", "nairobi", "r2")
    assert tok.decode(spaced.input_ids) == "country: kenya nairobi<|im_end|>"


def test_model_dtype_loads_the_frozen_base_in_half_precision_and_trains_fp32_where_fp16(tmp_path, sentiment):
    from tuneforge.models.loading import load_for_recipe
    from tuneforge.preparation import apply_method
    from tuneforge.recipe import load_recipe
    from tuneforge.models.layers import find_layer_groups
    from tuneforge.data.dataset import LabelSpace

    bert = make_tiny_bert(tmp_path / "bert")
    for dtype, expected in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        recipe = load_recipe(tiny_recipe(bert, sentiment, tmp_path / "run", model={"dtype": dtype},
                                         method={"name": "lora"}))
        assert recipe.training.precision == {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "auto")
        task = recipe.task_kind
        loaded = load_for_recipe(recipe, task, LabelSpace(["neg", "pos"]), 0)
        model, _ = apply_method(loaded.model, recipe.method, find_layer_groups(loaded.model), 0, task)
        frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
        trained = {p.dtype for p in model.parameters() if p.requires_grad}
        assert frozen == {expected}
        # PEFT keeps LoRA's own weights in fp32; a bf16 head trains in bf16, an fp16 one is lifted to fp32.
        assert trained == ({torch.float32, torch.bfloat16} if dtype == "bfloat16" else {torch.float32})


def test_half_weights_with_another_precision_are_refused(tmp_path, sentiment):
    from tuneforge.recipe import load_recipe

    recipe = tiny_recipe("x", sentiment, tmp_path / "run", model={"dtype": "bfloat16"}, training={"precision": "fp32"})
    with pytest.raises(TuneforgeError, match="set training.precision to bf16 or auto"):
        load_recipe(recipe)


def test_half_weights_train_end_to_end(tmp_path, sentiment):
    bert = make_tiny_bert(tmp_path / "bert")
    result = tuneforge.fine_tune(tiny_recipe(bert, sentiment, tmp_path / "run", model={"dtype": "float16"},
                                             method={"name": "lora"}, training={"epochs": 1}))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["runtime"]["precision"] == "fp16"


def test_a_classification_adapter_run_says_to_merge_and_the_merged_model_opens_in_a_pipeline(tmp_path, capsys):
    """Three classes: the merged folder opens in transformers.pipeline with its labels and tuneforge's scores."""
    from transformers import pipeline

    bert = make_tiny_bert(tmp_path / "bert")
    rows = [{"text": f"the film was {w}", "label": label} for _ in range(10)
            for w, label in (("good", "pos"), ("bad", "neg"), ("movie", "mid"))]
    files = {"train": write_rows(tmp_path / "train.jsonl", rows), "validation": write_rows(tmp_path / "v.jsonl", rows[:9])}
    result = tuneforge.fine_tune(tiny_recipe(bert, files, tmp_path / "run", method={"name": "lora"},
                                             training={"epochs": 3, "lr": 1e-2}))
    assert f"merge it first: tuneforge merge {result.run_dir} --out FOLDER" in capsys.readouterr().out.replace("\n", "")
    merged = tmp_path / "merged"
    tuneforge.merge(result.run_dir, merged)
    texts = ["the film was good", "the film was bad", "the film was movie"]
    outside = pipeline("text-classification", model=str(merged), device="cpu")(texts)
    ours = tuneforge.predict(result.run_dir, texts=texts)
    assert [o["label"] for o in outside] == [p["label"] for p in ours]
    assert {o["label"] for o in outside} <= {"pos", "neg", "mid"}
    for a, b in zip(outside, ours):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
