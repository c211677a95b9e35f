"""Texts cut in characters before tokenizing, so that a huge cell costs what max_length tokens cost.

A tokenizer asked to truncate still tokenizes the whole text first (a 20 MB cell took ~18 s a pass, and counting
what was cut took a second pass). Of a text far longer than max_length tokens only the first tokens are kept: here it is
cut at its last whitespace within a generous number of characters, tokenized once without special tokens to check that the
piece still holds more than max_length tokens (then the rest would be cut anyway, and the row is counted as
truncated), and cut longer (4x each time) where it does not. The cost is linear in what is kept, never in the cell.

Cutting at whitespace keeps the tokens of the piece a prefix of the full text's tokens for tokenizers that split
words at whitespace first (WordPiece, byte-level BPE, SentencePiece); a text without whitespace is cut at a
character, and the margin of extra tokens asked for keeps its last word's tokens out of the kept window."""
from __future__ import annotations

import re
from typing import Optional, Sequence

SPACE = re.compile(r"\s")

CHARS_PER_TOKEN = 12   # a first cut of max_length * 12 characters: ~3x the English average, so rarely cut twice
PAIR_CHARS_PER_TOKEN = 1024  # text pairs: cut only huge texts (see clip_texts)
MARGIN = 8             # tokens beyond max_length that the piece must hold


def cut_at_whitespace(text: str, chars: int) -> str:
    """`text` cut to about `chars` characters at a whitespace, so that no word is cut (its tokens are then those of
    the full text): at the last whitespace of the first `chars` characters, else at the next one within 16x as many;
    a text without whitespace that far is left whole (cutting a word could change its tokens)."""
    if len(text) <= chars:
        return text
    head = text[:chars]
    space = max(head.rfind(c) for c in " \n\t\r")
    if space > 0:
        return head[:space]
    found = SPACE.search(text, chars, chars * 16)
    return text[:found.start()] if found else text


def clip_texts(tokenizer, texts: Sequence[Optional[str]], max_length: int,
               chars_per_token: int = CHARS_PER_TOKEN) -> tuple[list[Optional[str]], set[int]]:
    """(texts, rows cut): each text longer than `max_length * chars_per_token` characters replaced by a prefix that
    still holds more than max_length tokens; the rows cut are certainly truncated by max_length.

    For text pairs give a much larger `chars_per_token`: the tokenizer's longest-first truncation gives an odd token
    to the longer text of the pair, so a cut can move one token from one text to the other; pairs are cut only where
    a text is huge (where tokenizing it whole would also cost memory quadratic in its length)."""
    out = list(texts)
    cut: set[int] = set()
    if getattr(tokenizer, "truncation_side", "right") != "right":  # keeps the end of a text: a prefix would be wrong
        return out, cut
    chars = max(max_length, 1) * chars_per_token
    todo = [i for i, t in enumerate(texts) if isinstance(t, str) and len(t) > chars]
    while todo:
        pieces = [cut_at_whitespace(texts[i], chars) for i in todo]
        kept = [(i, p) for i, p in zip(todo, pieces) if len(p) < len(texts[i])]  # no place to cut: left whole
        todo, pieces = [i for i, _ in kept], [p for _, p in kept]
        if not todo:
            break
        counts = [len(ids) for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]]
        retry = []
        for i, piece, n in zip(todo, pieces, counts):
            if n >= max_length + MARGIN:
                out[i] = piece
                cut.add(i)
            else:
                retry.append(i)  # few tokens for its characters (long words, runs of spaces): cut it longer
        chars *= 4
        todo = [i for i in retry if len(texts[i]) > chars]  # the others are tokenized whole
    return out, cut
