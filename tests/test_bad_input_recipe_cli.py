"""Bad input to recipe loading and the command line, through the real CLI: each refused with exit 2, no traceback,
a message naming the file / key / option, the value and the fix, and nothing written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from badinput import Case, assert_refused, run_cli
from conftest import sentiment_rows, tiny_recipe, write_rows


@pytest.fixture(scope="module")
def world(tiny_bert, tmp_path_factory) -> dict[str, Path]:
    """Data, a good recipe file, a finished full run and a finished LoRA run (1 epoch each), and broken copies."""
    import tuneforge

    root = tmp_path_factory.mktemp("bad-input")
    files = {"train": write_rows(root / "data" / "train.csv", sentiment_rows(32, seed=1)),
             "validation": write_rows(root / "data" / "validation.csv", sentiment_rows(16, seed=2))}
    fast = {"epochs": 1, "progress": False}
    tuneforge.fine_tune(tiny_recipe(tiny_bert, files, root / "full", training=fast))
    tuneforge.fine_tune(tiny_recipe(tiny_bert, files, root / "lora", training=fast, method={"name": "lora"}))
    recipe = tiny_recipe(tiny_bert, files, root / "never", training=fast)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    # Runs whose weights are only pickled .bin files (junk bytes: refused before anything could unpickle them).
    shutil.copytree(root / "full", root / "bin-full")
    (root / "bin-full" / "model" / "model.safetensors").rename(root / "bin-full" / "model" / "pytorch_model.bin")
    shutil.copytree(root / "lora", root / "bin-lora")
    adapter = root / "bin-lora" / "adapter"
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(b"not a pickle: never read")
    write_rows(root / "sentences.csv", [{"sentence": r["text"]} for r in sentiment_rows(4, seed=5)])
    write_rows(root / "graded.csv", [{"sentence": r["text"], "y": r["label"]} for r in sentiment_rows(8, seed=6)])
    out = root / "bad"
    out.mkdir()
    (out / "dup.yaml").write_text("data:\n  train: t.csv\ntraining:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 5.0e-4\n")
    (out / "dup-nested.yaml").write_text("data: {train: t.csv}\nmethod:\n  name: freeze\n  freeze_layers: 1\n"
                                         "  name: lora\n")
    (out / "list.yaml").write_text("- data: t.csv\n- training: {}\n")
    (out / "scalar.yaml").write_text("train.csv\n")
    (out / "empty.yaml").write_text("")
    (out / "comments.yaml").write_text("# a recipe, one day\n")
    (out / "latin1.yaml").write_bytes("data:\n  train: t.csv\n# caf\u00e9\n".encode("latin-1"))
    (out / "folder.yaml").mkdir()
    (out / "eval-every.yaml").write_text(yaml.safe_dump({**recipe, "training": {**fast, "eval_every": True}}))
    (out / "lr-inf.yaml").write_text(yaml.safe_dump(recipe).replace("lr: 0.001", "lr: .inf"))
    (out / "lr-nan.yaml").write_text(yaml.safe_dump(recipe).replace("lr: 0.001", "lr: .nan"))
    return {"root": root, "recipe": root / "recipe.yaml", "full": root / "full", "lora": root / "lora",
            "bin_full": root / "bin-full", "bin_lora": root / "bin-lora", "bad": out,
            "sentences": root / "sentences.csv", "graded": root / "graded.csv", "validation": files["validation"]}


def _cases(w: dict[str, Path]) -> list[Case]:
    r, bad, root = w["recipe"], w["bad"], w["root"]
    return [
        # 1. a key given twice in one mapping
        Case("duplicate-key", ["validate", bad / "dup.yaml"], ["dup.yaml", "training.lr", "twice", "line 4", "line 6"]),
        Case("duplicate-nested-key", ["train", bad / "dup-nested.yaml"], ["method.name", "line 3", "line 5"], [root]),
        # 2. a recipe that is no mapping, not UTF-8, empty, missing, a folder
        Case("recipe-is-a-list", ["validate", bad / "list.yaml"], ["list.yaml", "a list", "mapping of sections"]),
        Case("recipe-is-a-scalar", ["train", bad / "scalar.yaml"], ["scalar.yaml", "single text", "data:"], [root]),
        Case("recipe-not-utf8", ["validate", bad / "latin1.yaml"], ["latin1.yaml", "UTF-8", "line 3", "byte offset",
                                                                    "0xe9"]),
        Case("recipe-empty", ["validate", bad / "empty.yaml"], ["empty.yaml", "empty", "data:"]),
        Case("recipe-only-comments", ["train", bad / "comments.yaml"], ["comments.yaml", "empty"], [root]),
        Case("recipe-missing", ["train", bad / "nope.yaml"], ["nope.yaml", "no recipe file"], [root]),
        Case("recipe-is-a-folder", ["validate", bad / "folder.yaml"], ["folder.yaml", "is a folder"]),
        # 3. a yes/no value for a number
        Case("eval-every-true", ["validate", bad / "eval-every.yaml"], ["training.eval_every", "got true", "number"]),
        Case("epochs-yes", ["train", r, "training.epochs=yes"], ["training.epochs", "got true", "yes/no"], [root]),
        Case("batch-size-false", ["validate", r, "training.batch_size=false"], ["training.batch_size", "got false"]),
        Case("checkpoint-every-true", ["validate", r, "training.checkpoint_every=true"],
             ["training.checkpoint_every", "got true"]),
        Case("keep-layers-bool", ["validate", r, "model.keep_layers=[true]"], ["model.keep_layers", "got true"]),
        Case("labels-yes-no", ["validate", r, "data.labels=[yes, no]"], ["data.labels", "quote"]),
        # 4. learning rates: finite and above 0, every one of them
        Case("lr-inf-yaml", ["train", bad / "lr-inf.yaml"], ["training.lr", ".inf", "learning rate", "5e-5"], [root]),
        Case("lr-nan-yaml", ["validate", bad / "lr-nan.yaml"], ["training.lr", ".nan", "finite"]),
        Case("lr-inf-override", ["validate", r, "training.lr=.inf"], ["training.lr", ".inf"]),
        Case("lr-nan-override", ["validate", r, "training.lr=nan"], ["training.lr", ".nan"]),
        Case("lr-zero", ["validate", r, "training.lr=0"], ["training.lr", "above 0", "got 0"]),
        Case("lr-negative", ["validate", r, "training.lr=-1e-4"], ["training.lr", "above 0", "-0.0001"]),
        Case("head-lr-inf", ["validate", r, "training.head_lr=.inf"], ["training.head_lr", ".inf"]),
        Case("group-lr-nan", ["validate", r, "method.group_lr={head: .nan}"], ["method.group_lr", ".nan"]),
        Case("adapt-lr-zero", ["validate", r, "adapt.lr=0"], ["adapt.lr", "above 0"]),
        Case("self-training-lr-inf", ["validate", r, "weak.column=weak", "weak.self_training={lr: .inf}"],
             ["weak.self_training.lr", ".inf"]),
        Case("compare-method-lr-inf", ["compare", r, "--methods", "full,lora:lr=.inf"],
             ["--methods 'lora:lr=.inf'", "training.lr", "learning rate"], [root]),
        Case("compare-method-lr-negative", ["compare", r, "--methods", "lora:lr=-1"], ["lora:lr=-1", "above 0"], [root]),
        Case("weight-decay-inf", ["validate", r, "training.weight_decay=.inf"], ["training.weight_decay", ".inf"]),
        # 5. counts that must be positive
        Case("seeds-zero", ["train", r, "--seeds", "0"], ["--seeds", "got 0", "2 or more"], [root]),
        Case("seeds-negative", ["train", r, "--seeds", "-2"], ["--seeds", "got -2"], [root]),
        Case("seeds-one", ["train", r, "--seeds", "1"], ["--seeds", "leave --seeds out"], [root]),
        Case("compare-seeds-zero", ["compare", r, "--methods", "full", "--seeds", "0"], ["--seeds", "got 0"], [root]),
        Case("merge-examples-zero", ["merge", w["lora"], "--examples", "0"], ["--examples", "got 0"], [root]),
        Case("tune-trials-zero", ["tune", r, "--space", bad / "space.yaml", "--trials", "0"], ["--trials", "got 0"],
             [root]),
        Case("generate-max-new-tokens-zero", ["generate", w["full"], "--prompt", "hi", "--max-new-tokens", "0"],
             ["--max-new-tokens", "got 0"]),
        Case("generate-top-p-zero", ["generate", w["full"], "--prompt", "hi", "--top-p", "0"], ["--top-p", "got 0"]),
        Case("nproc-zero", ["train", r, "--nproc", "0"], ["--nproc", "got 0"], [root]),
        Case("discard-after-one", ["train", r, "--seeds", "3", "--keep", "1", "--discard-after", "1"],
             ["--discard-after", "got 1"], [root]),
        # 6. overrides anywhere among the options: they reach the recipe (and its checks)
        Case("override-after-option", ["train", r, "--overwrite", "training.lr=.inf"], ["training.lr", ".inf"], [root]),
        Case("override-after-flags", ["compare", r, "--methods", "full", "training.epochs=true"],
             ["training.epochs", "got true"], [root]),
        Case("unknown-option-still-refused", ["train", r, "--overwrite", "--bogus"], ["unrecognized", "--bogus"],
             [root]),
        Case("override-on-predict", ["predict", w["full"], "--text", "good", "training.lr=1"],
             ["unrecognized", "training.lr=1", "overrides go with"]),
        # 7. empty texts
        Case("predict-empty-text", ["predict", w["full"], "--text", ""], ["--text #1", "empty"], [root]),
        Case("predict-blank-text", ["predict", w["full"], "--text", "good", "--text", "  "], ["--text #2", "whitespace"]),
        Case("predict-empty-pair", ["predict", w["full"], "--text", "good", "--text-pair", ""], ["--text-pair #1"]),
        Case("predict-empty-question", ["predict", w["full"], "--question", " ", "--context", "ok"], ["--question #1"]),
        Case("predict-empty-context", ["predict", w["full"], "--question", "why", "--context", ""], ["--context #1"]),
        # 8. an output file that cannot be written: refused before any model loads
        Case("predict-output-missing-folder", ["predict", w["full"], "--text", "good", "--output",
                                               root / "no-such" / "p.jsonl"], ["--output", "no-such", "mkdir -p"],
             [root]),
        Case("predict-output-is-folder", ["predict", w["full"], "--text", "good", "--output", root / "data"],
             ["--output", "is a folder"], [root]),
        Case("score-output-missing-folder", ["score", w["full"], "--data", w["validation"], "--output",
                                             root / "no-such" / "s.jsonl"], ["--output", "does not exist"], [root]),
        Case("weak-label-out-missing-folder", ["weak", "label", r, "--out", root / "no-such" / "w.jsonl"],
             ["--out", "does not exist"], [root]),
        # 9. predict's own column options
        Case("predict-missing-text-column", ["predict", w["full"], "--data", w["sentences"]],
             ["no column 'text'", "sentence", "--text-column"], [root]),
        Case("evaluate-missing-label-column", ["evaluate", w["full"], "--data", w["graded"], "--text-column",
                                               "sentence"], ["no column 'label'", "--label-column"], [root]),
        # 10. merge: no run, a full-model run
        Case("merge-no-run", ["merge", root / "nowhere"], ["no run at", "nowhere", "does not exist"], [root]),
        Case("merge-not-a-run", ["merge", root / "data"], ["not a tuneforge run", "recipe.yaml"], [root]),
        Case("merge-full-model-run", ["merge", w["full"]], ["full-model run", "'full'", "model/", "standalone"], [root]),
        # 11. pickled weights: refused, never unpickled
        Case("predict-bin-model", ["predict", w["bin_full"], "--text", "good"],
             ["pytorch_model.bin", "safetensors", "never unpickles", "save_pretrained", "safe_serialization=True"]),
        Case("evaluate-bin-model", ["evaluate", w["bin_full"], "--data", w["validation"]], ["pytorch_model.bin"]),
        Case("merge-bin-adapter", ["merge", w["bin_lora"]], ["adapter_model.bin", "safetensors", "save_pretrained"],
             [root]),
        Case("predict-bin-adapter", ["predict", w["bin_lora"], "--text", "good"], ["adapter_model.bin"]),
        Case("predict-with-bin-adapter", ["predict", w["lora"], "--text", "good", "--adapter", w["bin_lora"]],
             ["adapter_model.bin"]),
        Case("generate-bin-model", ["generate", w["bin_full"], "--prompt", "hi"], ["pytorch_model.bin"]),
        Case("score-bin-model", ["score", w["bin_full"], "--data", w["validation"]], ["pytorch_model.bin"]),
    ]


CASE_IDS = [c.id for c in _cases({k: Path(k) for k in ("recipe", "bad", "root", "full", "lora", "bin_full", "bin_lora",
                                                         "sentences", "graded", "validation")})]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_refused(world, case_id, capsys):
    case = next(c for c in _cases(world) if c.id == case_id)
    assert_refused(case, capsys)


def test_overrides_stand_anywhere_among_the_options():
    from tuneforge.cli import parse_args

    args = parse_args(["train", "r.yaml", "a.b=1", "--overwrite", "training.lr=5e-4", "--json", "c.d=2"])
    assert args.overwrite and args.json and args.overrides == ["a.b=1", "training.lr=5e-4", "c.d=2"]
    assert parse_args(["compare", "r.yaml", "--methods", "full", "x=1"]).overrides == ["x=1"]
    assert parse_args(["weak", "analyze", "r.yaml", "--out", "o", "x=1"]).overrides == ["x=1"]


def test_predict_reads_its_own_text_column(world, capsys):
    code, out, err = run_cli(["predict", str(world["full"]), "--data", str(world["sentences"]), "--text-column",
                              "sentence"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rows) == 4 and all(r["label"] in ("neg", "pos") for r in rows)


def test_evaluate_reads_its_own_columns(world, capsys):
    code, out, err = run_cli(["evaluate", str(world["full"]), "--data", str(world["graded"]), "--text-column",
                              "sentence", "--label-column", "y", "--json"], capsys)
    assert code == 0, err
    assert 0 <= json.loads(out[out.index("{"):])["accuracy"] <= 1


def test_validate_shows_the_absolute_run_folder(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["validate", str(world["recipe"]), "output.dir=rel/run"], capsys)
    assert code == 0, err
    flat = " ".join(out.split())
    assert f"run folder: {tmp_path / 'rel' / 'run'} (output.dir 'rel/run': relative to the current directory)" in flat


def test_generate_labels_each_reply_when_several_prompts(monkeypatch, capsys):
    import tuneforge.generation as generation

    class Fake:
        def __init__(self, run_dir, device=None):
            pass

        def __call__(self, prompt, options, stream=False):
            if stream:
                print(f"reply to {prompt}")
            return f"reply to {prompt}"

    monkeypatch.setattr(generation, "Generator", Fake)
    for stream in ([], ["--no-stream"]):
        code, out, _ = run_cli(["generate", "run", "--prompt", "one", "--prompt", "two", *stream], capsys)
        assert code == 0
        assert out.splitlines() == ["==> prompt 1 of 2: one <==", "reply to one", "", "==> prompt 2 of 2: two <==",
                                    "reply to two"]
        code, out, _ = run_cli(["generate", "run", "--prompt", "one", *stream], capsys)
        assert out.splitlines() == ["reply to one"]  # a single prompt's output stays plain


def test_code_a_recipe_runs_is_announced(tmp_path, capsys):
    from tuneforge.rewards import load_reward
    from tuneforge.weak.labeling import load_labeling_functions

    lfs = tmp_path / "lfs.py"
    lfs.write_text("from tuneforge.weak import labeling_function\n\n@labeling_function()\n"
                   "def good(text):\n    return 'pos' if 'good' in text else None\n")
    reward = tmp_path / "reward.py"
    reward.write_text("def reward(prompts, completions, **other):\n    return [0.0 for _ in completions]\n")
    capsys.readouterr()
    load_labeling_functions(lfs)
    load_reward(f"{reward}:reward")
    err = capsys.readouterr().err
    assert f"running Python code from {lfs.resolve()} (weak.labeling_functions)" in err
    assert f"running Python code from {reward.resolve()} (task.reward)" in err


def test_recipe_values_that_stay_valid(tmp_path):
    """The checks refuse only what they should: booleans where booleans belong, 'epoch', quoted words."""
    from tuneforge.recipe import load_recipe

    base = {"data": {"train": "t.csv"}}
    r = load_recipe(base, ["training.progress=true", "training.eval_every=epoch", "data.labels=['yes', 'no']",
                           "training.lr=5e-4", "distill.teacher=t", "distill.cache=false"])
    assert r.training.progress is True and r.training.eval_every == "epoch" and r.data.labels == ["yes", "no"]
    assert r.training.lr == pytest.approx(5e-4) and r.distill.cache is False
