"""Knowledge distillation: the loss against hand-worked values, the student cut from a bigger model, and whole
runs with a teacher (cached or live outputs, hidden states, causal LMs), with their errors."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import tuneforge
from conftest import make_tiny_bert, tiny_recipe
from test_causal_data import make_tokenizer
from tuneforge.distill import DistillationTask, Teacher, hidden_cosine_sum, layer_map, soft_target_kl_sum
from tuneforge.errors import RecipeError
from tuneforge.models.truncate import keep_layers, select_layers
from tuneforge.tasks import get_task


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# ---------------------------------------------------------------- the loss, by hand

def test_soft_target_kl_is_t_squared_times_kl_of_softened_distributions():
    student, teacher = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], [[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]
    for t in (1.0, 2.0, 4.0):
        by_hand = sum(_kl(_softmax([x / t for x in tr]), _softmax([x / t for x in sr])) for sr, tr in zip(student, teacher))
        got = soft_target_kl_sum(torch.tensor(student), torch.tensor(teacher), t)
        assert float(got) == pytest.approx(t * t * by_hand, rel=1e-5)
    # First row alone at T = 2, worked out: p_t = softmax(1, 0, 0), p_s = softmax(0.5, 0, -0.5).
    p_t, p_s = _softmax([1, 0, 0]), _softmax([0.5, 0, -0.5])
    assert float(soft_target_kl_sum(torch.tensor(student[:1]), torch.tensor(teacher[:1]), 2.0)) == \
        pytest.approx(4 * _kl(p_t, p_s), rel=1e-5)
    # Identical logits: nothing to learn.
    assert float(soft_target_kl_sum(torch.tensor(teacher), torch.tensor(teacher), 3.0)) == pytest.approx(0, abs=1e-7)


def test_t_squared_keeps_the_gradient_at_the_hard_label_scale():
    # d/ds of T^2 KL(softmax(t/T) || softmax(s/T)) = T (softmax(s/T) - softmax(t/T)): a factor T, not 1/T.
    s = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    t = torch.tensor([[2.0, 0.0, 0.0]])
    soft_target_kl_sum(s, t, 4.0).backward()
    expected = 4.0 * (torch.softmax(s.detach() / 4, -1) - torch.softmax(t / 4, -1))
    assert torch.allclose(s.grad, expected, atol=1e-6)


class _Fixed(torch.nn.Module):
    """A 'model' whose outputs are given, so a loss can be checked by hand."""

    def __init__(self, logits, hidden=None):
        super().__init__()
        self.out = logits
        self.hidden = hidden

    def forward(self, **inputs):
        return SimpleNamespace(logits=self.out, hidden_states=self.hidden)


def test_classification_objective_is_alpha_kd_plus_one_minus_alpha_cross_entropy():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.3, 0.1]])
    teacher = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 1])
    task = DistillationTask(get_task("classification"), teacher=None, alpha=0.3, temperature=2.0)
    loss, logits = task.batch_loss(_Fixed(student), {"input_ids": torch.zeros(3, 2), "labels": labels,
                                                     "teacher_logits": teacher})
    ce = sum(-math.log(_softmax(row)[y]) for row, y in zip(student.tolist(), labels.tolist()))
    kd = sum(4 * _kl(_softmax([x / 2 for x in tr]), _softmax([x / 2 for x in sr]))
             for sr, tr in zip(student.tolist(), teacher.tolist()))
    assert float(loss) == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-5)
    # Evaluation is the task's own loss: the student measured on the labels.
    eval_loss, _ = task.batch_loss(_Fixed(student), {"input_ids": torch.zeros(3, 2), "labels": labels}, evaluating=True)
    assert float(eval_loss) == pytest.approx(ce, rel=1e-5)


def test_causal_objective_compares_next_token_distributions_at_target_positions_only():
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 4, 5), torch.randn(1, 4, 6)  # teacher vocabulary padded one wider
    labels = torch.tensor([[-100, -100, 3, 1]])  # targets at positions 2 and 3: predicted from positions 1 and 2
    teacher_model = Teacher(model=_Fixed(teacher), tokenizer=None, source="fixed", label_names=[], order=None,
                            same_tokenizer=True, blocks=0, hidden_size=None, fingerprint="")
    task = DistillationTask(get_task("causal-lm"), teacher_model, alpha=1.0, temperature=1.0, causal=True)
    loss, _ = task.batch_loss(_Fixed(student), {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": labels})
    by_hand = sum(_kl(_softmax(teacher[0, p, :5].tolist()), _softmax(student[0, p].tolist())) for p in (1, 2))
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)


def test_hidden_state_term_by_hand():
    s = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])]
    t = [torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])]
    weights = torch.tensor([[0.5, 0.5]])
    # Position 0: cosine 1 -> 0; position 1: cosine 1/sqrt(2) -> 1 - 0.7071.
    assert float(hidden_cosine_sum(s, t, weights)) == pytest.approx(0.5 * (1 - 1 / math.sqrt(2)), rel=1e-5)


# ---------------------------------------------------------------- the student's layers

def test_layer_selection():
    assert select_layers(6, every=2) == [0, 2, 4]
    assert select_layers(12, every=3) == [0, 3, 6, 9]
    assert select_layers(12, every=2) == [0, 2, 4, 6, 8, 10]
    assert select_layers(6, keep=[1, 5]) == [1, 5]
    with pytest.raises(RecipeError, match=r"\[6\] are not blocks of this model, which has 6"):
        select_layers(6, keep=[0, 6])
    with pytest.raises(RecipeError, match="keeps only block 0"):
        select_layers(3, every=3)
    # Matching: a student cut from a model as deep as the teacher matches the blocks it kept; others spread evenly.
    # The last block always matches the teacher's last (decoders return it after their final norm).
    assert layer_map(3, 6, kept=[0, 2, 4]) == [1, 3, 6]
    assert layer_map(3, 6) == [2, 4, 6]
    assert layer_map(2, 12, kept=[0, 2, 4]) == [6, 12]
    assert layer_map(4, 2) == [1, 1, 2, 2]  # a deeper student never matches the embeddings


def test_recipe_keys_for_a_smaller_student():
    from tuneforge.recipe import parse_recipe
    base = {"data": {"dataset": "rotten-tomatoes"}}
    with pytest.raises(RecipeError, match="not both"):
        parse_recipe({**base, "model": {"keep_layers": [0], "keep_every": 2}})
    with pytest.raises(RecipeError, match="increasing order"):
        parse_recipe({**base, "model": {"keep_layers": [2, 0]}})
    with pytest.raises(RecipeError, match="distill: for task.type"):
        parse_recipe({**base, "task": {"type": "regression"}, "distill": {"teacher": "x"}})
    with pytest.raises(RecipeError, match="set cache: false"):
        parse_recipe({"data": {"train": "x.jsonl"}, "task": {"type": "causal-lm"}, "distill": {"teacher": "x", "cache": True}})


def test_cut_encoder_keeps_the_chosen_blocks_and_reloads_as_a_smaller_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = make_tiny_bert(tmp_path / "bert4", layers=4)
    whole = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    student = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    assert keep_layers(student, [0, 2]) == (4, 2)
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for new, old in ((0, 0), (1, 2)):
        for (n, p), (_, q) in zip(student.bert.encoder.layer[new].named_parameters(),
                                  whole.bert.encoder.layer[old].named_parameters()):
            assert torch.equal(p, q), n
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, whole.bert.embeddings.word_embeddings.weight)
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    ids = torch.tensor([[2, 5, 12, 3]])
    student.eval(), reloaded.eval()
    assert torch.equal(student(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_cut_decoder_renumbers_its_cache_and_generates_as_without_cache(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    keep_layers(model, [1, 3])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    model.eval()
    ids = torch.tensor([[2, 10, 11, 12]])
    cached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    plain = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)


# ---------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def bert4(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert4"), layers=4)


@pytest.fixture(scope="module")
def teacher_run(bert4, tmp_path_factory) -> Path:
    from conftest import sentiment_rows, write_rows
    root = tmp_path_factory.mktemp("teacher")
    files = {"train": write_rows(root / "train.csv", sentiment_rows(48, seed=1)),
             "validation": write_rows(root / "validation.csv", sentiment_rows(16, seed=2))}
    tuneforge.fine_tune(tiny_recipe(bert4, files, root / "run", training={"epochs": 8, "lr": 3e-3}))
    return root / "run"


def _student(bert4, files, out, teacher, **distill):
    return tiny_recipe(bert4, files, out, model={"keep_every": 2}, distill={"teacher": str(teacher), **distill},
                       training={"epochs": 6, "lr": 1e-2})


def test_distilled_student_learns_from_cached_teacher_outputs_and_reports_against_it(bert4, teacher_run,
                                                                                     sentiment_files, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    r = tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "student", teacher_run))
    summary = json.loads((r.run_dir / "summary.json").read_text())
    d = summary["distillation"]
    assert d["cache"] is True and d["kept_layers"] == [0, 2] and summary["kept_layers"] == {"kept": [0, 2], "of": 4}
    report = d["report"]
    assert report["split"] == "test" and [row["model"] for row in report["rows"]] == ["teacher", "student"]
    assert report["rows"][1]["parameters"] < report["rows"][0]["parameters"]
    assert report["rows"][1]["metric"] == pytest.approx(r.metrics["test"]["accuracy"])
    assert all(row["examples_per_second"] > 0 for row in report["rows"])
    assert (r.run_dir / "distill" / "report.md").read_text().startswith("| model | parameters | stored MB | accuracy (test)")
    assert 0 < report["rows"][1]["stored_bytes"] < report["rows"][0]["stored_bytes"]
    assert r.metrics["test"]["accuracy"] >= 0.9
    # The cache holds the teacher's logits of the training rows; a second run reads them instead of recomputing.
    _assert_cache_holds_teacher_logits(tmp_path / "cache", teacher_run, sentiment_files["train"])
    cached = list((tmp_path / "cache" / "teacher-outputs").glob("*.safetensors"))
    mtime = cached[0].stat().st_mtime_ns
    tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "again", teacher_run))
    assert cached[0].stat().st_mtime_ns == mtime


def test_cached_and_live_teacher_train_the_same_student(bert4, teacher_run, sentiment_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    # One epoch: the two differ only by float rounding (the cache's batches are padded differently), which
    # training at this rate amplifies over more steps.
    one_epoch = {"epochs": 1, "lr": 1e-2, "restore_best": False}
    a = tuneforge.fine_tune({**_student(bert4, sentiment_files, tmp_path / "cached", teacher_run, report=False),
                             "training": {**tiny_recipe(bert4, {}, tmp_path)["training"], **one_epoch}})
    b = tuneforge.fine_tune({**_student(bert4, sentiment_files, tmp_path / "live", teacher_run, cache=False, report=False),
                             "training": {**tiny_recipe(bert4, {}, tmp_path)["training"], **one_epoch}})
    from safetensors.torch import load_file
    wa, wb = load_file(str(a.model_dir / "model.safetensors")), load_file(str(b.model_dir / "model.safetensors"))
    # Live teacher logits come from the training batches, cached ones from length-sorted batches: other padding,
    # so float rounding differs (2e-5 in the weights measured after a step size of 1e-2).
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    start = load_file(str(next(Path(bert4).glob("*.safetensors"))))
    assert not torch.allclose(wa["bert.embeddings.word_embeddings.weight"], start["embeddings.word_embeddings.weight"])
    # alpha 0 is plain fine-tuning: the teacher changes nothing.
    plain = tuneforge.fine_tune(tiny_recipe(bert4, sentiment_files, tmp_path / "plain", model={"keep_every": 2},
                                            training={"epochs": 6, "lr": 1e-2}))
    zero = tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "zero", teacher_run, alpha=0.0, report=False))
    wp, wz = load_file(str(plain.model_dir / "model.safetensors")), load_file(str(zero.model_dir / "model.safetensors"))
    assert all(torch.allclose(wp[k], wz[k], atol=1e-6) for k in wp)
    full = load_file(str(tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "kd", teacher_run,
                                                      report=False)).model_dir / "model.safetensors"))
    assert not all(torch.allclose(full[k], wp[k], atol=1e-4) for k in wp)  # with alpha > 0 the teacher matters


def test_hidden_state_matching_moves_student_states_towards_the_teachers(bert4, teacher_run, sentiment_files, tmp_path):
    r = tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "hidden", teacher_run, cache=False,
                                     hidden_weight=1.0, alpha=0.0, report=False))
    d = json.loads((r.run_dir / "summary.json").read_text())["distillation"]
    assert d["matched_layers"] == [1, 4]  # block 0 kept -> the teacher's block 0; the last -> the teacher's last
    from transformers import AutoModel
    student, teacher = AutoModel.from_pretrained(r.model_dir), AutoModel.from_pretrained(teacher_run / "model")
    start = AutoModel.from_pretrained(bert4)
    ids = torch.tensor([[2, 5, 12, 15, 3], [2, 11, 17, 6, 3]])

    def distance(model, layers):
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            th = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        return sum(float((1 - torch.cosine_similarity(hs[i + 1], th[k], dim=-1)).mean()) for i, k in enumerate(layers))
    keep_layers(start, [0, 2])
    assert distance(student, [1, 4]) < distance(start, [1, 4])


def test_distillation_errors_name_the_problem(bert4, teacher_run, sentiment_files, tmp_path):
    from conftest import write_rows
    other = dict(sentiment_files)
    other["train"] = write_rows(tmp_path / "other.csv", [{"text": "good film", "label": "yes"},
                                                          {"text": "bad film", "label": "no"}] * 8)
    other.pop("validation"), other.pop("test")
    with pytest.raises(RecipeError, match=r"predicts labels \['neg', 'pos'\].*has \['no', 'yes'\]"):
        tuneforge.fine_tune(_student(bert4, other, tmp_path / "labels", teacher_run))
    wide = make_tiny_bert(tmp_path / "wide", layers=2)
    from transformers import BertConfig
    cfg = BertConfig.from_pretrained(wide)
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    from transformers import BertModel
    BertModel(cfg).save_pretrained(wide)
    recipe = tiny_recipe(wide, sentiment_files, tmp_path / "w", distill={"teacher": str(teacher_run), "cache": False,
                                                                         "hidden_weight": 1.0})
    with pytest.raises(RecipeError, match="equal widths; the student's are 48, the teacher's 32"):
        tuneforge.fine_tune(recipe)
    with pytest.raises(RecipeError, match="no trained classification head"):
        tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "nohead", bert4))
    assert not (tmp_path / "labels").exists() and not (tmp_path / "w").exists()


def test_pair_of_tokenizers_needs_cached_outputs(bert4, teacher_run, sentiment_files, tmp_path, monkeypatch):
    other = make_tiny_bert(tmp_path / "other-vocab", layers=2)
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text() + "extra\n")
    from transformers import BertTokenizerFast
    BertTokenizerFast(vocab=str(other / "vocab.txt")).save_pretrained(other)
    recipe = tiny_recipe(other, sentiment_files, tmp_path / "r", distill={"teacher": str(teacher_run), "cache": False})
    with pytest.raises(RecipeError, match="tokenizer differs from the student's"):
        tuneforge.fine_tune(recipe)
    # Cached, the teacher reads its own tokens: allowed, and what is cached is the teacher's view of each row.
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    r = tuneforge.fine_tune(tiny_recipe(other, sentiment_files, tmp_path / "ok", distill={"teacher": str(teacher_run)},
                                        training={"epochs": 1}))
    assert json.loads((r.run_dir / "summary.json").read_text())["distillation"]["cache"] is True
    _assert_cache_holds_teacher_logits(tmp_path / "cache", teacher_run, sentiment_files["train"])


def _assert_cache_holds_teacher_logits(cache: Path, teacher_run: Path, train_file: Path, order=None):
    from safetensors.torch import load_file
    from tuneforge.data.dataset import parse_class_label, read_examples_from_file
    from tuneforge.inference import Predictor
    rows = read_examples_from_file(train_file, parse_class_label, "text", None, "label", "auto")
    expected = Predictor(teacher_run).logits(rows)
    if order is not None:
        expected = expected[:, order]
    (cached,) = list((cache / "teacher-outputs").glob("*.safetensors"))
    assert torch.allclose(load_file(str(cached))["logits"], expected, atol=1e-5)


def test_teacher_labels_in_another_order_are_reordered_cached_or_live(bert4, teacher_run, sentiment_files, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    # The teacher's labels are [neg, pos]; this student's are declared [pos, neg].
    one_epoch = {"epochs": 1, "lr": 1e-2, "restore_best": False}
    recipe = lambda out, **kw: {**_student(bert4, sentiment_files, tmp_path / out, teacher_run, report=False, **kw),  # noqa: E731
                                "data": {**{k: str(v) for k, v in sentiment_files.items()}, "labels": ["pos", "neg"]},
                                "training": {**tiny_recipe(bert4, {}, tmp_path)["training"], **one_epoch}}
    cached = tuneforge.fine_tune(recipe("cached"))
    assert json.loads((cached.run_dir / "summary.json").read_text())["distillation"]["labels_reordered"] is True
    _assert_cache_holds_teacher_logits(tmp_path / "cache", teacher_run, sentiment_files["train"], order=[1, 0])
    live = tuneforge.fine_tune(recipe("live", cache=False))
    from safetensors.torch import load_file
    wa, wb = load_file(str(cached.model_dir / "model.safetensors")), load_file(str(live.model_dir / "model.safetensors"))
    # Live teacher logits come from the training batches, cached ones from length-sorted batches: other padding,
    # so float rounding differs (2e-5 in the weights measured after a step size of 1e-2).
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_causal_lm_distillation_into_a_cut_decoder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_causal_lm import PAIRS, write_jsonl
    tok = make_tokenizer()
    torch.manual_seed(0)
    folder = tmp_path / "llama4"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [{"prompt": p, "completion": c} for p, c in PAIRS] * 4
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows), "validation": write_jsonl(tmp_path / "v.jsonl", rows[:5])}
    base = {"model": {"name": str(folder), "max_length": 48}, "task": {"type": "causal-lm"},
            "data": {k: str(v) for k, v in files.items()},
            "training": {"epochs": 8, "batch_size": 4, "lr": 5e-3, "warmup_ratio": 0.0, "progress": False}}
    tuneforge.fine_tune({**base, "output": {"dir": str(tmp_path / "teacher")}})
    student = {**base, "model": {**base["model"], "keep_layers": [0, 3]}, "training": {**base["training"], "epochs": 4},
               "distill": {"teacher": str(tmp_path / "teacher"), "alpha": 0.9, "hidden_weight": 0.5},
               "output": {"dir": str(tmp_path / "student")}}
    r = tuneforge.fine_tune(student)
    d = json.loads((r.run_dir / "summary.json").read_text())["distillation"]
    assert d["cache"] is False and d["matched_layers"] == [1, 4]
    assert d["report"]["metric"] == "loss" and d["report"]["split"] == "validation"
    assert d["report"]["rows"][1]["parameters"] < d["report"]["rows"][0]["parameters"]
    # The student learned: its validation loss fell from the first evaluation's.
    history = json.loads((r.run_dir / "summary.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert r.metrics["validation"]["loss"] < 3.0


def test_validate_loads_the_teacher_and_runs_its_checks(bert4, teacher_run, sentiment_files, tmp_path, capsys):
    import yaml

    from tuneforge.cli import main
    recipe = _student(bert4, sentiment_files, tmp_path / "run", teacher_run)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "distillation teacher:" in out and "its labels match the data's" in out
    # The width check runs in validate too, not only when training starts.
    bad = tmp_path / "bad.yaml"
    wide = make_tiny_bert(tmp_path / "wide", layers=2)
    from transformers import BertConfig, BertModel
    cfg = BertConfig.from_pretrained(wide)
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    BertModel(cfg).save_pretrained(wide)
    bad.write_text(yaml.safe_dump({**recipe, "model": {"name": str(wide), "max_length": 32},
                                   "distill": {"teacher": str(teacher_run), "cache": False, "hidden_weight": 1.0}}))
    assert main(["validate", str(bad)]) == 2
    assert "equal widths" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_transfer_set_learns_from_the_teacher_alone(bert4, teacher_run, sentiment_files, tmp_path, monkeypatch,
                                                      capsys):
    from conftest import sentiment_rows, write_rows
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    validation = [r["text"] for r in sentiment_rows(16, seed=2)]
    transfer = [{"text": r["text"]} for r in sentiment_rows(20, seed=9)] + [{"text": validation[0]}]
    file = write_rows(tmp_path / "transfer.csv", transfer)
    r = tuneforge.fine_tune(_student(bert4, sentiment_files, tmp_path / "run", teacher_run, unlabeled=[str(file)],
                                     report=False))
    d = json.loads((r.run_dir / "summary.json").read_text())
    assert d["distillation"]["transfer_rows"] == 21 and d["rows"]["train"] == 48
    assert "1 of its 21 rows are also validation or test texts" in capsys.readouterr().out
    # The teacher's targets cover labelled and transfer rows, in that order.
    from safetensors.torch import load_file
    from tuneforge.inference import Predictor
    (cached,) = list((tmp_path / "cache" / "teacher-outputs").glob("*.safetensors"))
    logits = load_file(str(cached))["logits"]
    assert logits.shape == (48 + 21, 2)
    assert torch.allclose(logits[48:], Predictor(teacher_run).logits([_text(t["text"]) for t in transfer]), atol=1e-5)
    # A transfer row has no label: its task loss is nothing, its distillation term is the teacher's.
    row = {"input_ids": torch.zeros(1, 2), "labels": torch.tensor([-100]), "teacher_logits": torch.tensor([[0.0, 3.0]])}
    student = _Fixed(torch.tensor([[1.0, -1.0]]))
    task_only = DistillationTask(get_task("classification"), teacher=None, alpha=0.0, temperature=2.0)
    assert float(task_only.batch_loss(student, row)[0]) == 0.0
    # By hand at T 2: student [0.5, -0.5], teacher [0, 1.5] after dividing by T; 4 * KL(teacher || student).
    p_t = [1 / (1 + math.exp(1.5)), math.exp(1.5) / (1 + math.exp(1.5))]
    p_s = [math.exp(0.5) / (math.exp(0.5) + math.exp(-0.5)), math.exp(-0.5) / (math.exp(0.5) + math.exp(-0.5))]
    by_hand = 4 * sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    kd_only = DistillationTask(get_task("classification"), teacher=None, alpha=1.0, temperature=2.0)
    assert float(kd_only.batch_loss(student, row)[0]) == pytest.approx(by_hand, rel=1e-5)
    from tuneforge.recipe import parse_recipe
    with pytest.raises(RecipeError, match="distill.unlabeled: a transfer set of single texts"):
        parse_recipe({"data": {"train": "x.csv", "text_pair_column": "b"}, "task": {"type": "pair-classification"},
                      "distill": {"teacher": "t", "unlabeled": "u.csv"}})


def _text(text):
    from tuneforge.data.dataset import TextExample
    return TextExample(text=text)
