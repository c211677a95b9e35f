import pytest

from tuneforge import RecipeError, load_recipe
from tuneforge.recipe import parse_override


def base(**extra):
    return {"data": {"train": "train.csv"}, **extra}


def test_defaults_fill_every_section():
    r = load_recipe(base())
    assert r.model.name == "minilm-l6" and r.method.name == "full" and r.training.schedule == "linear"


def test_unknown_key_suggests_the_nearest_valid_key():
    with pytest.raises(RecipeError) as e:
        load_recipe(base(training={"learning_rate": 1e-4, "epoch": 3}))
    text = str(e.value)
    assert "training.epoch: unknown key; did you mean 'training.epochs'?" in text
    assert "training.learning_rate: unknown key" in text


def test_all_problems_are_reported_at_once_with_the_value_seen():
    with pytest.raises(RecipeError) as e:
        load_recipe(base(training={"epochs": 0, "lr": -1, "schedule": "exp"}, modle={}))
    problems = e.value.problems
    assert len(problems) == 4
    joined = "\n".join(problems)
    assert "training.epochs" in joined and "got 0" in joined
    assert "training.lr" in joined and "got -1" in joined
    assert "training.schedule" in joined and "'exp'" in joined
    assert "modle: unknown key; did you mean 'model'?" in joined


def test_overrides_are_typed_and_dotted():
    r = load_recipe(base(), ["training.lr=3e-5", "method.name=head", "training.eval_every=50", "data.labels=[a, b]"])
    assert r.training.lr == pytest.approx(3e-5)
    assert r.method.name == "head" and r.training.eval_every == 50 and r.data.labels == ["a", "b"]
    assert parse_override("training.warmup_steps=0") == (["training", "warmup_steps"], 0)


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("data: {train: t.csv}\ntraining: {lr: 5e-5}\n")
    assert load_recipe(f).training.lr == pytest.approx(5e-5)


def test_relative_data_paths_follow_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.csv").write_text("text,label\na,b\n")
    f = tmp_path / "sub" / "r.yaml"
    f.write_text("data: {train: train.csv}\n")
    assert load_recipe(f).data.train == str(tmp_path / "sub" / "train.csv")


def test_inconsistent_method_options_are_explained():
    with pytest.raises(RecipeError, match="set method.name: freeze"):
        load_recipe(base(method={"name": "full", "freeze_layers": 2}))
    with pytest.raises(RecipeError, match="freezes nothing"):
        load_recipe(base(method={"name": "freeze"}))


def test_pair_task_needs_the_pair_column():
    with pytest.raises(RecipeError, match="text_pair_column"):
        load_recipe(base(task={"type": "pair-classification"}))


def test_missing_recipe_file_names_the_path(tmp_path):
    with pytest.raises(RecipeError, match="no recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_declared_labels_may_be_integers():
    assert load_recipe(base(data={"train": "t.csv", "labels": [1, 0]})).data.labels == ["1", "0"]


def test_bad_override_syntax():
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe(base(), ["training.lr"])


def test_step_counts_must_be_positive():
    with pytest.raises(RecipeError) as e:
        load_recipe(base(training={"eval_every": 0}, method={"name": "gradual", "unfreeze_every": -1}))
    assert sorted(e.value.problems) == [
        "method.unfreeze_every: must be 'epoch' or a positive number of steps, got -1",
        "training.eval_every: must be 'epoch' or a positive number of steps, got 0"]


def test_override_strings_that_float_would_parse_stay_strings():
    r = load_recipe(base(), ["data.text_column=nan", "model.name=inf", "training.lr=1e-4"])
    assert r.data.text_column == "nan" and r.model.name == "inf" and r.training.lr == pytest.approx(1e-4)


def test_every_example_recipe_is_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert len(examples) >= 7
    for path in examples:
        load_recipe(path)  # raises RecipeError with every problem if one is stale
    from tuneforge.studies.space import read_space
    demo = load_recipe(Path(__file__).parent.parent / "examples" / "demo.yaml")
    for path in sorted((Path(__file__).parent.parent / "examples" / "spaces").glob("*.yaml")):
        assert read_space(path, demo)  # search spaces name real recipe keys
