"""Token-classification data (NER tagging): sentences of words with one tag each, read from CoNLL-style files or
tables, then encoded into windows of sub-word tokens where each word is scored exactly once.

Formats. `fmt="auto"` picks by suffix: .conll .iob .iob2 .bio .bioes .txt are CoNLL (one `token<TAB>tag` line per
word, a blank line between sentences); .tsv is CoNLL too, unless its first line is a header naming the tokens
column (then it is a table: a CoNLL file cannot start that way, since "tags" is no tag); every other suffix goes to
`read_table` (csv, tsv, json, jsonl, parquet), whose rows hold a list of tokens and a list of tags.
.conllu is not read as CoNLL: its last column is MISC, not an entity tag.

Tags are `O` or `<P>-<TYPE>`, P one of B, I (BIO), E, S (BIOES) or L, U (BILOU)."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DataError, TuneforgeError

CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".bioes", ".txt", ".tsv")
TAG = re.compile(r"O|[BIESLU]-\S+")
WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")
MAX_PROBLEMS = 50


@dataclass
class TokenExample:
    tokens: list[str]
    tags: list[str] | None    # None when reading for prediction without tags
    source: str               # "file.conll line 12" (the sentence's first line) or "file.jsonl row 3"
    text: str | None = None   # the original text when built from a raw string (words_with_offsets)
    offsets: list[tuple[int, int]] | None = None  # character span of each token in `text`


def _raise(problems: list[str]) -> None:
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise DataError(problems[:MAX_PROBLEMS] + ([f"... and {more} more"] if more > 0 else []))


def _bad_tag(where: str, tag, token) -> str:
    return (f"{where}: tag {tag!r} (token {token!r}) is not 'O' or '<P>-<TYPE>' with P one of B, I (BIO), E, S "
            "(BIOES), L, U (BILOU), e.g. 'B-PER'; fix the tag (the tag is the last column)")


# ---------------------------------------------------------------- reading

def read_token_examples(path, fmt: str = "auto", tokens_column: str = "tokens",
                        tags_column: str | None = "tags") -> list[TokenExample]:
    """Sentences of one file. `tags_column=None` reads for prediction: tags are neither required nor read (a CoNLL
    line's first field is its token, other fields are ignored). Every problem is collected, then raised together."""
    from .sources import is_dataset_source

    if is_dataset_source(path):  # a save_to_disk folder or Hub split: rows of token and tag lists
        return _read_rows(path, "auto", tokens_column, tags_column)
    path = Path(path)
    if not path.exists():
        raise DataError([f"{path}: no such file"])
    if path.stat().st_size == 0:
        raise DataError([f"{path}: the file is empty"])
    from .formats import EXTENSIONS

    kind, suffix = fmt, path.suffix.lower()
    if fmt == "auto":
        if suffix not in CONLL_SUFFIXES and suffix not in EXTENSIONS:
            raise DataError([f"{path}: cannot tell the format from {suffix!r}: CoNLL files end in "
                             f"{', '.join(CONLL_SUFFIXES)}, tables in {', '.join(EXTENSIONS)}; set data.format"])
        tsv_table = suffix == ".tsv" and _has_header(path, tokens_column)
        kind = "conll" if suffix in CONLL_SUFFIXES and not tsv_table else "auto"
    elif fmt not in ("conll", "csv", "tsv", "json", "jsonl", "parquet", "arrow"):
        raise DataError([f"{path}: unknown format {fmt!r}; use auto, conll, csv, tsv, json, jsonl, parquet or arrow"])
    if kind == "conll":
        return _read_conll(path, tags_column is not None)
    return _read_rows(path, kind, tokens_column, tags_column)


def _has_header(path: Path, tokens_column: str) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    return tokens_column in [field.strip() for field in first.split("\t")]


def _read_conll(path: Path, with_tags: bool) -> list[TokenExample]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        from .rawfile import encoding_problem
        raise DataError([encoding_problem(path, "conll")]) from None
    examples, problems = [], []
    tokens, tags, first_line = [], [], 0

    def flush():
        if tokens:
            examples.append(TokenExample(list(tokens), list(tags) if with_tags else None, f"{path} line {first_line}"))
        tokens.clear()
        tags.clear()

    for lineno, line in enumerate(lines, start=1):
        if not line.strip():  # WNUT-style separators hold a tab or spaces: still a sentence boundary
            flush()
            continue
        # With a tab, fields are tab-separated (a token may then hold a space); else any run of whitespace.
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        while fields and not fields[-1]:
            fields.pop()
        token = fields[0]
        if token == "-DOCSTART-":  # CoNLL-2003 document marker: not a sentence
            flush()
            continue
        where = f"{path} line {lineno}"
        if not token:
            problems.append(f"{where}: empty token before {fields[-1]!r}; expected 'token<TAB>tag'")
            continue
        if not tokens:
            first_line = lineno
        tokens.append(token)
        if not with_tags:
            continue
        if len(fields) < 2:
            problems.append(f"{where}: {token!r} has no tag; expected 'token<TAB>tag'")
        elif not TAG.fullmatch(fields[-1]):
            problems.append(_bad_tag(where, fields[-1], token))
        tags.append(fields[-1] if len(fields) > 1 else "O")
    flush()
    _raise(problems)
    if not examples:
        raise DataError([f"{path}: no sentences; expected one 'token<TAB>tag' line per token and a blank line "
                         "between sentences"])
    return examples


def _as_list(value):
    """A list cell: a list, a numpy array (parquet) or a string holding a JSON list; None when it is none of them."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return list(value) if isinstance(value, (list, tuple)) else None


def _read_rows(path: Path, fmt: str, tokens_column: str, tags_column: str | None) -> list[TokenExample]:
    from .readers import read_table

    df = read_table(path, fmt)
    for column, key in ((tokens_column, "tokens"), (tags_column, "tags")):
        if column is not None and column not in df.columns:
            raise DataError([f"{path}: no {column!r} column (columns are: {', '.join(map(str, df.columns))}); "
                             f"set data.{key}_column"])
    columns = [tokens_column] + ([tags_column] if tags_column else [])
    examples, problems = [], []
    for i, cells in enumerate(zip(*(df[c].tolist() for c in columns)), start=1):
        where = f"{path} row {i}"
        values = [_as_list(cell) for cell in cells]
        for column, cell, value in zip(columns, cells, values):
            if value is None:
                problems.append(f"{where}, column {column!r}: expected a list (e.g. [\"EU\", \"rejects\"] or a JSON "
                                f"list in a string), got {str(cell)[:60]!r}")
        if any(v is None for v in values):
            continue
        tokens, tags = values[0], values[1] if tags_column else None
        bad = [(j, t) for j, t in enumerate(tokens) if not isinstance(t, str) or not t.strip()]
        if not tokens:
            problems.append(f"{where}, column {tokens_column!r}: no tokens; drop the row or give its tokens")
        for j, t in bad[:3]:
            problems.append(f"{where}, column {tokens_column!r}, token {j}: expected a non-empty string, got {t!r}")
        if tags is not None:
            if len(tags) != len(tokens):
                problems.append(f"{where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
            if tags and all(isinstance(t, int) for t in tags):
                problems.append(f"{where}, column {tags_column!r}: tags are integer ids ({tags[:5]}...); give tag "
                                "names such as 'B-PER' (ids cannot be named without the dataset's label list)")
                continue
            bad_tags = [(t, tok) for t, tok in zip(tags, tokens) if not isinstance(t, str) or not TAG.fullmatch(t)]
            problems.extend(_bad_tag(where, t, tok) for t, tok in bad_tags[:3])
        examples.append(TokenExample([str(t) for t in tokens], [str(t) for t in tags] if tags is not None else None,
                                     where))
    _raise(problems)
    return examples


# ---------------------------------------------------------------- tags and entities

def tag_scheme(tag_names) -> str:
    """'BIO', 'BIOES' or 'BILOU' (seqeval's IOB2, IOBES, BILOU) from the prefixes seen; IO/IOB1 tags read as BIO."""
    names = list(tag_names)
    bad = [n for n in names if not isinstance(n, str) or not TAG.fullmatch(n)]
    if bad:
        raise DataError([f"tags {bad[:5]} are not 'O' or '<P>-<TYPE>' with P one of B, I, E, S, L, U"])
    prefixes = {n[0] for n in names if n != "O"}
    if prefixes & {"E", "S"} and prefixes & {"L", "U"}:
        raise DataError([f"tags mix BIOES (E-, S-) and BILOU (L-, U-) prefixes ({sorted(prefixes)}); use one scheme"])
    return "BIOES" if prefixes & {"E", "S"} else "BILOU" if prefixes & {"L", "U"} else "BIO"


def looks_like_tag_lists(values) -> bool:
    """True when a column's values are lists of entity tags (['B-PER', 'O']): other tasks refuse such a column and
    point to token-classification. Looks at the first 50 present values."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and v != v)]  # NaN: missing
    seen = 0
    for value in present[:50]:
        items = _as_list(value)
        if items is None or not all(isinstance(t, str) and TAG.fullmatch(t) for t in items):
            return False
        seen += len(items)
    return seen > 0


def words_with_offsets(text: str, source: str = "text") -> TokenExample:
    """Raw text split into words (runs of word characters, joined by inner - or ', and single punctuation marks),
    each with its character span, so predicted entities can be shown as spans of the original text."""
    matches = list(WORD.finditer(text))
    return TokenExample([m.group() for m in matches], None, source, text, [m.span() for m in matches])


def _split_tag(tag: str) -> tuple[str, str]:
    return (tag, "_") if tag == "O" else (tag[0], tag[2:] or "_")


def entity_spans(tags: list[str], scheme: str = "BIO") -> list[tuple[str, int, int]]:
    """(type, first word, last word inclusive) of each entity. scheme "BIO": seqeval's default (conlleval-style,
    lenient) reading, exactly `seqeval.metrics.sequence_labeling.get_entities` (an I- after O starts an entity; E-/S-
    are understood, L-/U- read as E-/S-). "BIOES"/"BILOU": seqeval's strict mode (an entity is S-X/U-X alone or
    B-X, I-X..., E-X/L-X; anything else is no entity). EntityMetrics counts entities the same way."""
    if scheme in ("BIOES", "BILOU", "IOBES"):
        return _strict_spans(tags)
    spans, prev, prev_type, begin = [], "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        p, t = _split_tag(tag)
        p = {"L": "E", "U": "S"}.get(p, p)
        # seqeval's end_of_chunk, then start_of_chunk, rule for rule
        if prev in "ES" or (prev in "BI" and p in "BSO") or (prev != "O" and prev_type != t):
            spans.append((prev_type, begin, i - 1))
        if p in "BS" or (prev in "ESO" and p in "EI") or (p != "O" and prev_type != t):
            begin = i
        prev, prev_type = p, t
    return spans


def _strict_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    starts, ends = {"B", "S", "U"}, {"E", "S", "L", "U"}
    parts = [_split_tag(t) for t in tags]
    spans, i = [], 0
    while i < len(parts):
        p, t = parts[i]
        if p not in starts:
            i += 1
            continue
        j = i + 1  # continue while the previous piece may go on (B, I) and this one goes on with the same type
        while j < len(parts) and parts[j - 1][0] in "BI" and parts[j][0] in "IEL" and parts[j][1] == t:
            j += 1
        if parts[j - 1][0] in ends:
            spans.append((t, i, j - 1))
        i = j
    return spans


# ---------------------------------------------------------------- encoding

@dataclass
class TokenSplit:
    input_ids: list[list[int]]          # one row per window
    token_type_ids: list[list[int]] | None
    word_ids: list[list[int]]           # per position: the word this position scores, -1 elsewhere
    labels: list[list[int]] | None      # per position: target id, -100 for no loss; None without tags
    example_ids: list[int]              # the example each window comes from
    examples: list[TokenExample]
    split_rows: int = 0                 # examples longer than one window (split with a stride, never cut)
    truncated: int = 0                  # always 0: nothing is cut (kept so reports treat all splits alike)
    unknown_words: int = 0              # words the tokenizer gave no piece (e.g. a lone zero-width space): [UNK]

    def __post_init__(self):
        rows = self.labels if self.labels is not None else self.word_ids
        self._targets = [sum(v >= 0 for v in row) for row in rows]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def count(self, indices: Sequence[int], augment=None) -> int:
        """Positions with a loss (labels other than -100; scored positions without labels): a loss summed over
        tokens is divided by this, so accumulated steps weigh every labelled token alike."""
        return sum(self._targets[i] for i in indices)

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict[str, torch.Tensor]:
        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)

        def pad(table, value):
            return torch.tensor([table[i] + [value] * (width - len(table[i])) for i in indices], dtype=torch.long)

        batch = {"input_ids": pad(self.input_ids, pad_id),
                 "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
                 "word_ids": pad(self.word_ids, -1),
                 "example_ids": torch.tensor([self.example_ids[i] for i in indices], dtype=torch.long)}
        if self.token_type_ids is not None:
            batch["token_type_ids"] = pad(self.token_type_ids, 0)
        if self.labels is not None:
            batch["labels"] = pad(self.labels, -100)
        return batch


def _pieces(tokenizer, words: list[list[str]]):
    # verbose=False: no "longer than the maximum" warning, these pieces are windowed below
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False, verbose=False)
    return [(enc["input_ids"][i], enc.word_ids(i)) for i in range(len(words))]


def _word_ready(tokenizer):
    """A tokenizer that encodes pre-split words as it encodes running text. Byte-level BPE (RoBERTa, GPT-2) without
    add_prefix_space encodes each word as if it began the text ("york", not " york"): fixed on a copy."""
    if not getattr(tokenizer, "is_fast", False):
        raise TuneforgeError(f"token-classification needs a fast tokenizer (its word_ids align tags to sub-tokens); "
                             f"{type(tokenizer).__name__} is not one: use a model folder with tokenizer.json")

    def consistent(tok):
        text = tok(["hello world", "hello"], add_special_tokens=False)["input_ids"]
        split = _pieces(tok, [["hello", "world"]])[0]
        return text[0] == text[1] + [i for i, w in zip(*split) if w == 1]

    if consistent(tokenizer):
        return tokenizer
    from tokenizers import pre_tokenizers

    old = tokenizer.backend_tokenizer.pre_tokenizer
    if isinstance(old, pre_tokenizers.ByteLevel):
        fixed = copy.deepcopy(tokenizer)
        fixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(
            add_prefix_space=True, use_regex=old.use_regex, trim_offsets=old.trim_offsets)
        if consistent(fixed):
            return fixed
    raise TuneforgeError(f"{type(tokenizer).__name__} encodes pre-split words differently from running text; load "
                         "it with add_prefix_space=True (AutoTokenizer.from_pretrained(folder, add_prefix_space=True))")


def _template(tokenizer):
    """The special tokens around one sequence (e.g. [CLS] ... [SEP]) and their token types."""
    enc = tokenizer([["hello"]], is_split_into_words=True)
    ids, wids = enc["input_ids"][0], enc.word_ids(0)
    inside = [p for p, w in enumerate(wids) if w is not None]
    types = enc["token_type_ids"][0] if "token_type_ids" in enc else None
    first, last = inside[0], inside[-1] + 1
    return ids[:first], ids[last:], (types[:first], types[first], types[last:]) if types is not None else None


def _windows(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    out, start = [], 0
    while True:
        out.append((start, min(start + size, n)))
        if start + size >= n:
            return out
        start += size - stride


def encode_token_examples(tokenizer, examples: Sequence[TokenExample], max_length: int,
                          label2id: dict[str, int] | None, label_all_tokens: bool = False,
                          stride: int = 32) -> TokenSplit:
    """Sentences as windows of at most max_length tokens (specials included), overlapping by `stride` tokens.

    The first sub-token of each word carries its tag (later sub-tokens -100, or with `label_all_tokens` the tag
    with B- turned into I-). A word in several windows is labelled and scored only in the one where its first
    sub-token has the most context: the most tokens on its nearer side, a sentence's own start or end counting
    as unlimited (ties: the earlier window). So training counts each word once and prediction gives one per word."""
    tokenizer = _word_ready(tokenizer)
    prefix, suffix, types = _template(tokenizer)
    size = max_length - len(prefix) - len(suffix)
    if size < 1 or not 0 <= stride < size:
        raise TuneforgeError(f"max_length {max_length} leaves {size} tokens per window after "
                             f"{len(prefix) + len(suffix)} special tokens; the stride ({stride}) must be at least 0 "
                             "and below that: raise max_length or lower the stride")
    tagged = [ex.tags is not None for ex in examples]
    with_labels = label2id is not None and any(tagged)
    problems = []
    if with_labels:
        problems += [f"{ex.source}: no tags, while other examples have them" for ex in examples if ex.tags is None]
        problems += [f"{ex.source}: tag {t!r} is not among the training tags ({', '.join(label2id)})"
                     for ex in examples if ex.tags for t in sorted(set(ex.tags) - set(label2id))]
    unk = tokenizer.unk_token_id
    nonempty = [ex.tokens for ex in examples if ex.tokens]
    encoded = iter(_pieces(tokenizer, nonempty) if nonempty else [])
    input_ids, type_ids, word_ids, labels, example_ids = [], [], [], [], []
    split_rows = unknown = 0
    for e, ex in enumerate(examples):
        ids, wids = next(encoded) if ex.tokens else ([], [])
        per_word = [[] for _ in ex.tokens]
        for i, w in zip(ids, wids):
            per_word[w].append(i)
        for w, pieces in enumerate(per_word):
            if not pieces:  # nothing to score the word on: stand it in as unknown rather than lose it
                if unk is None:
                    problems.append(f"{ex.source}: word {w + 1} {ex.tokens[w]!r} has no token and the tokenizer no "
                                    "unknown token; remove or replace the word")
                per_word[w] = [unk]
                unknown += 1
        content = [i for pieces in per_word for i in pieces]
        owner = [w for w, pieces in enumerate(per_word) for _ in pieces]
        starts = [p for p in range(len(owner)) if p == 0 or owner[p] != owner[p - 1]]  # each word's first piece
        n = len(content)
        wins = _windows(n, size, stride)
        split_rows += len(wins) > 1
        # Each word's window: where its first piece sits furthest from an edge that cuts the sentence (a
        # sentence's own start or end is no cut: n stands for unlimited room).
        home = []
        for g in starts:
            room = [min(g - s if s > 0 else n, end - 1 - g if end < n else n) if s <= g < end else -1
                    for s, end in wins]
            home.append(room.index(max(room)))
        for k, (s, end) in enumerate(wins):
            first = {g: w for w, g in enumerate(starts) if home[w] == k and s <= g < end}
            input_ids.append(prefix + content[s:end] + suffix)
            word_ids.append([-1] * len(prefix) + [first.get(p, -1) for p in range(s, end)] + [-1] * len(suffix))
            example_ids.append(e)
            if types:
                type_ids.append(types[0] + [types[1]] * (end - s) + types[2])
            if with_labels and not problems:
                row = []
                for p in range(s, end):
                    w, tag = owner[p], ex.tags[owner[p]]
                    if p in first:
                        row.append(label2id[tag])
                    elif label_all_tokens and home[w] == k:  # a later piece of a word scored in this window
                        inner = "I-" + tag[2:] if tag.startswith("B-") else tag
                        row.append(label2id.get(inner, label2id[tag]))
                    else:
                        row.append(-100)
                labels.append([-100] * len(prefix) + row + [-100] * len(suffix))
    _raise(problems)
    return TokenSplit(input_ids, type_ids if types else None, word_ids, labels if with_labels else None, example_ids,
                      list(examples), split_rows=split_rows, unknown_words=unknown)


def word_predictions(split: TokenSplit, window_logits) -> list[list[int]]:
    """Per example, the predicted label id of each word in word order, from per-window logits (T_i, C) in split
    order (padded or not: positions past a window's length are ignored)."""
    if len(window_logits) != len(split):
        raise ValueError(f"{len(window_logits)} windows of logits for a split of {len(split)}: pass every window, "
                         "in split order")
    out: list[list[int | None]] = [[None] * len(ex.tokens) for ex in split.examples]
    for k, logits in enumerate(window_logits):
        row = split.word_ids[k]
        best = logits[: len(row)].argmax(-1).tolist()
        for p, w in enumerate(row):
            if w >= 0:
                out[split.example_ids[k]][w] = best[p]
    missing = [split.examples[e].source for e, words in enumerate(out) if None in words]
    if missing:
        raise ValueError(f"words without a prediction in {missing[:3]}: pass the logits of every window, in order")
    return out
