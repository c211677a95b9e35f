"""Token classification and question answering end to end: predictions as users see them, the saved models used
with transformers alone, the recipe's and the data's errors."""
from __future__ import annotations

import json

import pytest
import torch
from test_task_matrix import _conll, _qa_rows, _tag_rows
from conftest import tiny_recipe, write_rows

import tuneforge
from tuneforge.cli import main as cli_main
from tuneforge.errors import DataError, RecipeError
from tuneforge.inference import Predictor


@pytest.fixture(scope="module")
def tagger(tiny_bert_no_dropout, tmp_path_factory):
    """A tiny tagger trained until it tags the tiny vocabulary's positive words B-POS."""
    root = tmp_path_factory.mktemp("tagger")
    files = {"train": _conll(root / "train.conll", _tag_rows(60, 1)),
             "validation": _conll(root / "validation.conll", _tag_rows(12, 2))}
    recipe = tiny_recipe(tiny_bert_no_dropout, files, root / "run", task={"type": "token-classification"},
                         training={"epochs": 12, "lr": 5e-3, "seed": 0})
    result = tuneforge.fine_tune(recipe)
    assert result.metrics["validation"]["f1_pos"] > 0.9  # B-POS is a function of the word: learnable
    return root / "run"


def test_predict_gives_entities_as_character_spans_of_the_text(tagger):
    text = "the film was good and dull the story"
    [record] = Predictor(tagger).predict(texts=[text])
    assert record["tokens"] == text.split()
    spans = [(e["entity"], e["text"], e["start"], e["end"]) for e in record["entities"]]
    assert ("POS", "good", 13, 17) in spans
    for e in record["entities"]:
        assert text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1


def test_the_saved_tagger_works_in_the_transformers_pipeline_without_tuneforge(tagger):
    from transformers import pipeline

    text = "a good movie and a poor actor was fun"
    ours = [(e["entity"], e["start"], e["end"]) for e in Predictor(tagger).predict(texts=[text])[0]["entities"]]
    theirs = pipeline("token-classification", model=str(tagger / "model"), aggregation_strategy="simple")(text)
    assert ours, "the tiny tagger found no entity to compare"
    assert [(e["entity_group"], e["start"], e["end"]) for e in theirs] == ours


def test_a_file_of_bio_tag_lists_given_to_multi_label_points_to_token_classification(tiny_bert, tmp_path):
    rows = [{"text": " ".join(r["tokens"]), "label": r["tags"]} for r in _tag_rows(12, 3)]
    files = {"train": write_rows(tmp_path / "train.jsonl", rows)}
    recipe = tiny_recipe(tiny_bert, files, tmp_path / "run", task={"type": "multi-label"})
    with pytest.raises(DataError, match="per-word entity tags.*token-classification"):
        tuneforge.validate(recipe)


def test_malformed_conll_lines_are_named_by_line_number(tiny_bert, tmp_path):
    bad = tmp_path / "train.conll"
    bad.write_text("good\tB-POS\nfilm\nthe\tO\n\nbad\tB-NEG\nfilm\tX-NEG\n")
    recipe = tiny_recipe(tiny_bert, {"train": bad}, tmp_path / "run", task={"type": "token-classification"})
    with pytest.raises(DataError) as e:
        tuneforge.validate(recipe)
    text = "\n".join(e.value.problems)
    assert "line 2" in text and "line 6" in text and "X-NEG" in text


def test_recipe_keys_of_the_new_tasks_are_refused_elsewhere(tiny_bert, sentiment_files, tmp_path):
    with pytest.raises(RecipeError, match="task.stride: for token-classification and question-answering tasks only"):
        tuneforge.recipe.load_recipe(tiny_recipe(tiny_bert, sentiment_files, tmp_path, task={"stride": 8}))
    with pytest.raises(RecipeError, match="data.dataset 'wnut-16' is tagged words; set task.type: token-classification"):
        tuneforge.recipe.load_recipe({"data": {"dataset": "wnut-16"}})
    with pytest.raises(RecipeError, match="'rotten-tomatoes' has no questions"):
        tuneforge.recipe.load_recipe({"task": {"type": "question-answering"}, "data": {"dataset": "rotten-tomatoes"}})


@pytest.fixture(scope="module")
def reader(tiny_bert_no_dropout, tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    files = {"train": write_rows(root / "train.jsonl", _qa_rows(60, 1)),
             "validation": write_rows(root / "validation.jsonl", _qa_rows(12, 2))}
    recipe = tiny_recipe(tiny_bert_no_dropout, files, root / "run", task={"type": "question-answering", "stride": 8,
                                                                         "max_question_length": 8},
                         training={"epochs": 10, "lr": 5e-3, "seed": 0})
    result = tuneforge.fine_tune(recipe)
    assert result.metrics["validation"]["exact_match"] > 50  # the answer is the one positive word: learnable
    return root / "run"


def test_the_saved_reader_answers_as_tuneforge_does_with_transformers_alone(reader):
    """transformers 5 has no question-answering pipeline; the model folder is AutoModelForQuestionAnswering's, and
    the plain span search over it gives tuneforge's answer."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    question, context = "the good", "the story was lovely and the actor"
    ours = Predictor(reader).predict(texts=[question], text_pairs=[context])[0]
    tokenizer = AutoTokenizer.from_pretrained(reader / "model")
    model = AutoModelForQuestionAnswering.from_pretrained(reader / "model").eval()
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    offsets, context_part = enc.pop("offset_mapping")[0], torch.tensor([s == 1 for s in enc.sequence_ids(0)])
    with torch.no_grad():
        out = model(**enc)
    start = out.start_logits[0].masked_fill(~context_part, -1e9)
    end = out.end_logits[0].masked_fill(~context_part, -1e9)
    scores = start[:, None] + end[None, :]
    scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).tril(-1), -1e9)  # end >= start
    s, e = divmod(int(scores.argmax()), scores.shape[1])
    answer = context[int(offsets[s][0]):int(offsets[e][1])]
    assert ours["answer"] == answer == "lovely"
    assert (ours["start"], ours["end"]) == (context.index("lovely"), context.index("lovely") + len("lovely"))


def test_predict_command_answers_questions(reader, capsys):
    assert cli_main(["predict", str(reader), "--question", "the good", "--context", "a film that was fun"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["answer"] == "fun" and record["question"] == "the good"


def test_a_misplaced_answer_is_an_error_naming_the_row(tiny_bert, tmp_path):
    rows = _qa_rows(6, 4)
    rows[3]["answer_start"] += 1
    files = {"train": write_rows(tmp_path / "train.jsonl", rows)}
    recipe = tiny_recipe(tiny_bert, files, tmp_path / "run", task={"type": "question-answering", "stride": 8,
                                                                  "max_question_length": 8})
    with pytest.raises(DataError, match="row 4"):
        tuneforge.validate(recipe)
