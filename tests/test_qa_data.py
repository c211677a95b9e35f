"""Extractive QA building blocks: reading and validating rows (SQuAD JSON, flat rows, the Hugging Face answers
layout), overlapping windows and their targets, decoding answers from logits, and SQuAD EM / F1."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tuneforge.data.qa_windows import QASplit, answer_tokens, decode_answers, encode_qa_examples
from tuneforge.data.split import Split
from tuneforge.data.squad import QAExample, read_qa_examples
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.tasks.qa_metrics import QAMetrics, exact_match, f1, normalize_answer

CONTEXT = ("The Denver Broncos defeated the Carolina Panthers in Super Bowl 50. The game was played on February 7, "
           "2016, at Levi's Stadium in Santa Clara, California. Peyton Manning was the quarterback of Denver. "
           "The halftime show was headlined by the British rock group Coldplay. Beyonce and Bruno Mars also "
           "performed during the show. The Broncos' defense was led by Von Miller, who was named the most "
           "valuable player of the game after recording two and a half sacks.")


def at(text: str) -> int:
    assert CONTEXT.count(text) == 1, text
    return CONTEXT.index(text)


def squad_payload() -> dict:
    return {"version": "1.1", "data": [
        {"title": "Super_Bowl_50", "paragraphs": [{"context": CONTEXT, "qas": [
            {"id": "q1", "question": "Who won Super Bowl 50?",
             "answers": [{"text": "Denver Broncos", "answer_start": at("Denver Broncos")},
                         {"text": "The Denver Broncos", "answer_start": 0}]},
            {"id": "q2", "question": "Where was the game played?",
             "answers": [{"text": "Levi's Stadium", "answer_start": at("Levi's Stadium")}]}]}]},
        {"title": "Halftime", "paragraphs": [{"context": "Coldplay headlined the halftime show.", "qas": [
            {"id": "q3", "question": "Who headlined?", "answers": [{"text": "Coldplay", "answer_start": 0}]}]}]}]}


def write_json(path, payload):
    path.write_text(json.dumps(payload))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tuneforge.models.sources import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))


# ---------------------------------------------------------------- reading

def test_reads_squad_json(tmp_path):
    path = write_json(tmp_path / "train.json", squad_payload())
    examples = read_qa_examples(path)
    assert [e.id for e in examples] == ["q1", "q2", "q3"]
    assert examples[0].answers == [("Denver Broncos", 4), ("The Denver Broncos", 0)]
    assert examples[0].context == CONTEXT and examples[0].question == "Who won Super Bowl 50?"
    assert examples[2].source == f"{path} article 2, paragraph 1, question 'q3'"
    unlabelled = read_qa_examples(path, with_answers=False)
    assert [e.answers for e in unlabelled] == [None, None, None]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json"])
def test_reads_flat_rows(tmp_path, suffix):
    rows = [{"id": 7, "question": "Who won?", "context": CONTEXT, "answer": "Denver Broncos",
             "answer_start": at("Denver Broncos")},
            {"id": 8, "question": "Who sang?", "context": CONTEXT, "answer": "Coldplay", "answer_start": None}]
    path = tmp_path / f"qa{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        write_json(path, rows)
    elif suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    examples = read_qa_examples(path)
    assert [e.id for e in examples] == ["7", "8"]
    assert examples[0].answers == [("Denver Broncos", 4)]
    # No start, but the text occurs once in the context: located there.
    assert examples[1].answers == [("Coldplay", at("Coldplay"))]
    assert examples[1].source == f"{path} row 2"


def test_reads_the_hugging_face_answers_layout(tmp_path):
    answers = {"text": ["Von Miller", "Miller"], "answer_start": [at("Von Miller"), at("Von Miller") + 4]}
    rows = [{"id": "a", "question": "Who was MVP?", "context": CONTEXT, "answers": answers}]
    jsonl = tmp_path / "hf.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n")
    parquet = tmp_path / "hf.parquet"
    pd.DataFrame(rows).to_parquet(parquet)  # a struct of arrays, read back as a dict of numpy arrays
    as_json = tmp_path / "hf-json.csv"
    pd.DataFrame([{**rows[0], "answers": json.dumps(answers)}]).to_csv(as_json, index=False)
    as_literal = tmp_path / "hf-literal.csv"
    pd.DataFrame([{**rows[0], "answers": str(answers)}]).to_csv(as_literal, index=False)
    for path in (jsonl, parquet, as_json, as_literal):
        (ex,) = read_qa_examples(path)  # the "answers" column is found without naming it
        assert ex.answers == [("Von Miller", at("Von Miller")), ("Miller", at("Von Miller") + 4)], path


def test_misplaced_answer_names_the_row_and_shows_the_context(tmp_path):
    start = at("Coldplay")
    rows = [{"question": "Who won?", "context": CONTEXT, "answer": "Denver Broncos", "answer_start": 4},
            {"question": "Who sang?", "context": CONTEXT, "answer": "Coldplay", "answer_start": start + 1}]
    path = tmp_path / "qa.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{path} row 2:")
    assert f"'Coldplay' at answer_start {start + 1}" in problem
    assert f"holds {CONTEXT[start + 1:start + 9]!r} there" in problem
    assert f"occurs at character(s) {start}" in problem


def test_answers_without_start_must_be_unambiguous(tmp_path):
    rows = [{"question": "Which team?", "context": CONTEXT, "answer": "Broncos"},          # twice in CONTEXT
            {"question": "Which team?", "context": CONTEXT, "answer": "Dallas Cowboys"}]  # not at all
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    first, second = err.value.problems
    assert "row 1" in first and "occurs 2 times" in first and "give its answer_start" in first
    assert "row 2" in second and "does not occur in the context" in second


def test_unanswerable_questions_are_refused_unless_allowed(tmp_path):
    payload = squad_payload()
    payload["data"][1]["paragraphs"][0]["qas"].append(
        {"id": "q4", "question": "Who booed?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Coldplay", "answer_start": 0}]})
    path = write_json(tmp_path / "v2.json", payload)
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    (problem,) = err.value.problems
    assert "article 2, paragraph 1, question 'q4'" in problem and "allow_unanswerable" in problem
    examples = read_qa_examples(path, allow_unanswerable=True)
    assert examples[-1].answers == [] and examples[0].answers[0] == ("Denver Broncos", 4)
    flat = tmp_path / "flat.csv"
    pd.DataFrame([{"question": "Who booed?", "context": CONTEXT, "answer": "", "answer_start": -1}]).to_csv(
        flat, index=False)
    with pytest.raises(DataError, match="no answer"):
        read_qa_examples(flat)
    assert read_qa_examples(flat, allow_unanswerable=True)[0].answers == []


def test_every_problem_is_collected(tmp_path):
    rows = [{"id": "x", "question": "", "context": CONTEXT, "answer": "Coldplay", "answer_start": at("Coldplay")},
            {"id": "y", "question": "Who?", "context": None, "answer": "Coldplay", "answer_start": 0},
            {"id": "z", "question": "Who?", "context": CONTEXT, "answer": "Coldplay", "answer_start": at("Coldplay")},
            {"id": "z", "question": "Who?", "context": CONTEXT, "answer": "Coldplay", "answer_start": at("Coldplay")}]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    problems = err.value.problems
    assert len(problems) == 3
    assert "row 1" in problems[0] and "missing question" in problems[0]
    assert "row 2" in problems[1] and "missing context" in problems[1]
    assert "row 4" in problems[2] and "duplicate id 'z'" in problems[2] and "row 3" in problems[2]


def test_missing_columns_are_listed(tmp_path):
    path = tmp_path / "qa.csv"
    pd.DataFrame([{"query": "Who?", "passage": CONTEXT, "answer": "Coldplay"}]).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    (problem,) = err.value.problems
    assert "'question'" in problem and "'context'" in problem and "query, passage, answer" in problem
    (ex,) = read_qa_examples(path, question_column="query", context_column="passage")
    assert ex.answers == [("Coldplay", at("Coldplay"))]
    # Questions to predict need no answer column.
    pd.DataFrame([{"question": "Who?", "context": CONTEXT}]).to_csv(path, index=False)
    assert read_qa_examples(path, with_answers=False)[0].answers is None


# ---------------------------------------------------------------- windows

QUESTIONS = [("Who won Super Bowl 50?", "Denver Broncos"), ("Who headlined the halftime show?", "Coldplay"),
             ("Who was the most valuable player?", "Von Miller"), ("Where is the stadium?", "Santa Clara, California")]


def qa_examples(answered: bool = True) -> list[QAExample]:
    return [QAExample(question=q, context=CONTEXT, answers=[(a, at(a))] if answered else None, id=str(i),
                      source=f"test row {i + 1}") for i, (q, a) in enumerate(QUESTIONS)]


def test_window_targets_map_back_to_the_answer(tokenizer):
    examples = qa_examples()
    split = encode_qa_examples(tokenizer, examples, max_length=40, stride=10, max_question_length=12)
    assert isinstance(split, Split) and split.split_rows == len(examples) and split.truncated == 0
    assert len(split) == len(split.example_ids) == len(split.start_positions) > len(examples)
    assert max(split.lengths) <= 40 and split.count([0, 1, 2]) == 3
    answered = set()
    for w, e in enumerate(split.example_ids):
        offsets, (text, start) = split.offsets[w], examples[e].answers[0]
        context = [o for o in offsets if o is not None]
        assert offsets[0] is None and offsets[-1] is None  # CLS, final SEP
        assert all(o is None for o in offsets[:len(tokenizer(examples[e].question)["input_ids"])])  # the question
        s, t = split.start_positions[w], split.end_positions[w]
        if context[0][0] <= start and start + len(text) <= context[-1][1]:  # the answer lies in this window
            assert 0 < s <= t
            assert CONTEXT[offsets[s][0]:offsets[t][1]] == text
            answered.add(e)
        else:
            assert (s, t) == (0, 0)
    assert answered == set(range(len(examples)))
    # Neighbouring windows of an example overlap by `stride` tokens of context.
    first, second = [w for w, e in enumerate(split.example_ids) if e == 0][:2]
    tail = [o for o in split.offsets[first] if o is not None][-10:]
    assert [o for o in split.offsets[second] if o is not None][:10] == tail


def test_batches_pad_and_carry_window_ids(tokenizer):
    split = encode_qa_examples(tokenizer, qa_examples(), max_length=40, stride=10, max_question_length=12)
    batch = split.batch([3, 0, 5], pad_id=tokenizer.pad_token_id)
    width = max(split.lengths[i] for i in (3, 0, 5))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (3, width)
    assert batch["window_ids"].tolist() == [3, 0, 5]
    assert batch["example_ids"].tolist() == [split.example_ids[i] for i in (3, 0, 5)]
    assert batch["start_positions"].tolist() == [split.start_positions[i] for i in (3, 0, 5)]
    assert batch["attention_mask"].sum(1).tolist() == [split.lengths[i] for i in (3, 0, 5)]
    assert all(t.dtype == torch.long for t in batch.values())
    unlabelled = encode_qa_examples(tokenizer, qa_examples(answered=False), max_length=40, stride=10,
                                    max_question_length=12)
    assert unlabelled.start_positions is None and "start_positions" not in unlabelled.batch([0], 0)


def test_long_questions_are_cut_and_bad_settings_refused(tokenizer):
    long = QAExample("who " * 30 + "won?", CONTEXT, [("Coldplay", at("Coldplay"))], "long", "test row 1")
    split = encode_qa_examples(tokenizer, [long], max_length=48, stride=8, max_question_length=6)
    assert split.truncated == 1
    assert all(sum(o is None for o in offs) == 6 + 3 for offs in split.offsets)  # 6 question tokens + 3 specials
    with pytest.raises(TuneforgeError, match="stride 40 must be smaller"):
        encode_qa_examples(tokenizer, [long], max_length=48, stride=40, max_question_length=6)

    class Slow:
        is_fast = False

    with pytest.raises(TuneforgeError, match="fast tokenizer"):
        encode_qa_examples(Slow(), [long])


def byte_level_bpe():
    """A RoBERTa-style tokenizer (byte-level BPE, no token type ids) trained on the test text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([CONTEXT] + [q for q, _ in QUESTIONS], trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                     add_prefix_space=False)  # offsets without the 'Ġ' space
    return PreTrainedTokenizerFast(tokenizer_object=bpe, cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])


def test_windows_with_a_byte_level_bpe_tokenizer():
    tokenizer = byte_level_bpe()
    examples = qa_examples() + [QAExample("who " * 20 + "sang?", CONTEXT, [("Coldplay", at("Coldplay"))], "x", "r")]
    split = encode_qa_examples(tokenizer, examples, max_length=48, stride=12, max_question_length=8)
    assert split.token_type_ids is None and "token_type_ids" not in split.batch([0, 1], pad_id=1)
    assert split.truncated >= 1 and split.split_rows == len(examples)
    targets = {w: (s, t) for w, (s, t) in enumerate(zip(split.start_positions, split.end_positions)) if s}
    assert {split.example_ids[w] for w in targets} == set(range(len(examples)))
    for w, (s, t) in targets.items():
        assert CONTEXT[split.offsets[w][s][0]:split.offsets[w][t][1]] == examples[split.example_ids[w]].answers[0][0]
    starts, ends = one_hot(split, targets)
    assert [r["answer"] for r in decode_answers(split, starts, ends)] == [a for _, a in QUESTIONS] + ["Coldplay"]


# ---------------------------------------------------------------- decoding

def one_hot(split: QASplit, spans: dict[int, tuple[int, int]]) -> tuple[list, list]:
    """Logits with 10 at the given window's (start, end) tokens and at CLS elsewhere, small noise around."""
    gen = torch.Generator().manual_seed(0)
    starts, ends = [], []
    for w, n in enumerate(split.lengths):
        s, t = spans.get(w, (0, 0))
        start, end = torch.rand(n, generator=gen) * 0.1, torch.rand(n, generator=gen) * 0.1
        start[s] += 10.0
        end[t] += 10.0
        starts.append(start)
        ends.append(end)
    return starts, ends


def test_decode_recovers_the_gold_answer_across_windows(tokenizer):
    examples = qa_examples()
    split = encode_qa_examples(tokenizer, examples, max_length=40, stride=10, max_question_length=12)
    targets = {w: (s, t) for w, (s, t) in enumerate(zip(split.start_positions, split.end_positions)) if s}
    starts, ends = one_hot(split, targets)
    results = decode_answers(split, starts, ends)
    assert [r["answer"] for r in results] == [a for _, a in QUESTIONS]
    assert [(r["start"], r["end"]) for r in results] == [(at(a), at(a) + len(a)) for _, a in QUESTIONS]
    assert all(r["score"] > 19.9 and r["n_best"][0]["answer"] == r["answer"] for r in results)
    # Several windows hold the same span: n_best lists each span once.
    assert all(len({(c["start"], c["end"]) for c in r["n_best"]}) == len(r["n_best"]) for r in results)
    # A mapping of windows works too, and `examples` picks which to decode.
    only = decode_answers(split, dict(enumerate(starts)), dict(enumerate(ends)), examples=[2])
    assert [(r["example"], r["answer"]) for r in only] == [(2, "Von Miller")]


def test_max_answer_length_and_unanswerable(tokenizer):
    answer = "Santa Clara, California"  # santa, clara, ",", california: 4 tokens
    example = QAExample("Where?", CONTEXT, [(answer, at(answer))], "0", "test row 1")
    split = encode_qa_examples(tokenizer, [example], max_length=384, stride=128)
    s, t = split.start_positions[0], split.end_positions[0]
    length = t - s + 1
    assert length >= 4
    starts, ends = one_hot(split, {0: (s, t)})
    assert decode_answers(split, starts, ends, max_answer_length=length)[0]["answer"] == answer
    # Too long for the limit: with every position a candidate, the best is the longest allowed piece of it.
    short = decode_answers(split, starts, ends, n_best=512, max_answer_length=length - 1)[0]
    assert short["answer"] != answer and answer.startswith(short["answer"]) and short["start"] == at(answer)
    assert all(len(tokenizer(c["answer"], add_special_tokens=False)["input_ids"]) <= length - 1
               for c in short["n_best"])
    # CLS logits above the best span: "" when unanswerable questions are allowed, the span otherwise.
    starts[0][0] += 20.0
    ends[0][0] += 20.0
    null = decode_answers(split, starts, ends, allow_unanswerable=True)[0]
    assert null["answer"] == "" and null["start"] is None and null["null_score"] > 40
    assert decode_answers(split, starts, ends, allow_unanswerable=True, null_threshold=100.0)[0]["answer"] == answer
    assert decode_answers(split, starts, ends)[0]["answer"] == answer


# ---------------------------------------------------------------- EM / F1

def test_normalization_follows_the_squad_script():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("the-end") == "theend"        # punctuation goes before articles are matched
    assert normalize_answer("Denver’s") == "denver’s"     # only ASCII punctuation is removed
    assert normalize_answer("An apple a day") == "apple day"


def test_exact_match_and_f1_hand_worked():
    assert exact_match("the Denver Broncos", ["Denver Broncos"]) == 1.0
    assert exact_match("Denvers", ["Denver's"]) == 1.0 and exact_match("Denvers", ["Denver’s"]) == 0.0
    assert f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)  # P 2/3, R 1
    assert f1("a b b", ["b b c"]) == pytest.approx(0.8)                       # [b, b] vs [b, b, c]: P 1, R 2/3
    assert f1("Broncos", ["Denver Broncos", "Broncos"]) == 1.0                # the best gold counts
    assert f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert f1("Carolina", ["Denver Broncos"]) == 0.0
    # v1.1 quirk: answers that normalize to nothing match exactly but share no token.
    assert exact_match("the", ["a"]) == 1.0 and f1("the", ["a"]) == 0.0
    # Unanswerable (SQuAD 2.0): only an answer normalizing to nothing is right.
    assert exact_match("", []) == f1("", []) == 1.0
    assert exact_match("Denver", []) == f1("Denver", []) == 0.0
    assert exact_match("The", []) == f1("The", []) == 1.0


def test_qa_metrics_over_windows_from_several_processes(tokenizer):
    examples = qa_examples()
    split = encode_qa_examples(tokenizer, examples, max_length=40, stride=10, max_question_length=12)
    spans = {w: (s, t) for w, (s, t) in enumerate(zip(split.start_positions, split.end_positions)) if s}
    # Example 0 ("Denver Broncos") is predicted as "Broncos" only: EM 0, F1 2/3; the others right.
    for w, (s, t) in spans.items():
        if split.example_ids[w] == 0:
            spans[w] = answer_tokens(split.offsets[w], at("Denver Broncos") + 7, at("Denver Broncos") + 14)
    starts, ends = one_hot(split, spans)
    width = max(split.lengths)
    padded = lambda rows: torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=-1e4) for r in rows])
    parts = [QAMetrics(split), QAMetrics(split)]
    for w in range(len(split)):  # windows alternate between two "processes"
        parts[w % 2].update({"start_logits": padded([starts[w]]), "end_logits": padded([ends[w]]),
                             "window_ids": torch.tensor([w])}, None)
    assert all(len(m.start[w]) == split.lengths[w] for m in parts for w in m.start)
    half = parts[0].compute()
    assert half["examples"] == 0  # every example has windows on both: none complete alone
    parts[0].merge(parts[1])
    out = parts[0].compute()
    assert out["examples"] == 4
    assert out["exact_match"] == pytest.approx(75.0)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 3) / 4)
    # An example missing a window is left out, not guessed.
    last = max(w for w, e in enumerate(split.example_ids) if e == 3)
    del parts[0].start[last], parts[0].end[last]
    assert parts[0].compute()["examples"] == 3
