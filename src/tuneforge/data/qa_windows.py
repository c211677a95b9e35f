"""Extractive QA examples as overlapping token windows, and the windows' start/end logits back to answers.

Encoding follows Hugging Face's run_qa.py: each (question, context) pair is tokenized question first, with
only the context truncated; a context longer than one window continues in the next, `stride` tokens of
context shared between neighbours so an answer cut by one window boundary lies whole in another. A window's
training target is the token span of the (first) gold answer when the answer lies entirely in the window's
context part, else (0, 0): the CLS token, "no answer here".

Decoding searches, over all windows of an example, the top `n_best` start and end positions (context tokens
only) for the best-scoring valid span (start + end logit), and maps it back to the context's characters
through the windows' offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch

from ..errors import TuneforgeError
from .collate import pad_rows
from .squad import QAExample

CLS = 0          # the CLS position: target and null score of "no answer in this window"
CHUNK = 1000     # examples tokenized per call: bounds the tokenizer's intermediate memory

Offset = Optional[tuple[int, int]]


@dataclass
class QASplit:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    offsets: list[list[Offset]]         # per window position: char span in the context, None outside it
    start_positions: list[int] | None   # per window; CLS (0) when the answer is not inside the window
    end_positions: list[int] | None
    example_ids: list[int]              # the example (index in `examples`) each window comes from
    examples: list[QAExample]
    split_rows: int = 0                 # examples whose context needed more than one window
    truncated: int = 0                  # questions cut to max_question_length (contexts are never cut)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def count(self, indices: Sequence[int], augment=None) -> int:
        """Losses are averaged over windows: each window is one training row."""
        return len(indices)

    def windows_of(self) -> list[list[int]]:
        """The window indices of each example, in order."""
        out: list[list[int]] = [[] for _ in self.examples]
        for w, e in enumerate(self.example_ids):
            out[e].append(w)
        return out

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict[str, torch.Tensor]:
        """Model inputs padded on the right to the batch's longest window, the targets when known, and which
        example and window each row is (`example_ids`, `window_ids`), so outputs can be mapped back; the last
        two are not model inputs and must be taken out before the forward call."""
        indices = list(indices)
        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        out = {"input_ids": pad_rows(rows, width, pad_id), "attention_mask": pad_rows([[1] * len(r) for r in rows], width, 0)}
        if self.token_type_ids is not None:
            out["token_type_ids"] = pad_rows([self.token_type_ids[i] for i in indices], width, 0)
        if self.start_positions is not None and self.end_positions is not None:
            out["start_positions"] = torch.tensor([self.start_positions[i] for i in indices], dtype=torch.long)
            out["end_positions"] = torch.tensor([self.end_positions[i] for i in indices], dtype=torch.long)
        out["example_ids"] = torch.tensor([self.example_ids[i] for i in indices], dtype=torch.long)
        out["window_ids"] = torch.tensor(indices, dtype=torch.long)
        return out


# ---------------------------------------------------------------- encoding

def _cut_questions(tokenizer, questions: list[str], max_question_length: int) -> tuple[list[str], int]:
    """Questions longer than max_question_length tokens cut (as text, at a token's end, so offsets stay those
    of the tokenizer); returns them and how many were cut. A long question must not take the window's room:
    with `truncation="only_second"` the tokenizer refuses a question that leaves the context no space."""
    cut = 0
    offsets = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for i, offs in enumerate(offsets):
        if len(offs) <= max_question_length:
            continue
        cut += 1
        q = questions[i][: offs[max_question_length - 1][1]]
        # A cut word can re-tokenize into more pieces (byte-level BPE): cut again until it fits.
        while len(tokenizer(q, add_special_tokens=False)["input_ids"]) > max_question_length:
            offs = tokenizer(q, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            q = q[: offs[max_question_length - 1][1]] if len(offs) > max_question_length else q[:-1]
        questions[i] = q
    return questions, cut


def answer_tokens(offsets: Sequence[Offset], start_char: int, end_char: int) -> tuple[int, int]:
    """The (start, end) token positions covering characters [start_char, end_char) when they lie wholly in
    this window's context part; (CLS, CLS) otherwise."""
    context = [k for k, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return CLS, CLS
    # First token ending after the answer's start, last token beginning before its end: the tokens that
    # overlap the answer (an answer that starts or ends inside a word takes the whole word piece).
    start = next(k for k in context if offsets[k][1] > start_char)
    end = next(k for k in reversed(context) if offsets[k][0] < end_char)
    return (start, end) if start <= end else (CLS, CLS)


def encode_qa_examples(tokenizer, examples: Sequence[QAExample], max_length: int = 384, stride: int = 128,
                       max_question_length: int = 64) -> QASplit:
    """Examples as windows of at most `max_length` tokens: [CLS] question [SEP] context part [SEP], the
    context parts of one example overlapping by `stride` tokens. Needs a fast tokenizer (for the offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TuneforgeError(f"question answering needs a fast tokenizer (one with character offsets), got "
                             f"{type(tokenizer).__name__}; use a model folder with a tokenizer.json, or one whose "
                             "tokenizer transformers can convert to a fast one")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - max_question_length - specials  # context tokens per window in the worst case
    if room <= stride:
        raise TuneforgeError(
            f"question answering: max_length {max_length} leaves {room} context token(s) per window after a "
            f"question of up to max_question_length {max_question_length} tokens and {specials} special tokens; "
            f"stride {stride} must be smaller than that. Lower stride or max_question_length, or raise max_length")
    examples = list(examples)
    has_answers = [ex.answers is not None for ex in examples]
    if any(has_answers) and not all(has_answers):
        raise ValueError("encode_qa_examples: some examples have gold answers and some do not; "
                         "encode training/evaluation and prediction examples separately")
    with_targets = bool(examples) and all(has_answers)
    questions, truncated = _cut_questions(tokenizer, [ex.question.lstrip() for ex in examples],
                                          max_question_length)  # leading spaces: run_qa.py strips them too

    input_ids, type_ids, offsets, example_ids = [], [], [], []
    starts, ends = [], []
    keeps_types = True
    for lo in range(0, len(examples), CHUNK):
        enc = tokenizer(questions[lo:lo + CHUNK], [ex.context for ex in examples[lo:lo + CHUNK]],
                        truncation="only_second", max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
        keeps_types = keeps_types and "token_type_ids" in enc
        for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
            e = lo + sample
            window = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]
            input_ids.append(enc["input_ids"][w])
            if keeps_types:
                type_ids.append(enc["token_type_ids"][w])
            offsets.append(window)
            example_ids.append(e)
            if with_targets:
                answers = examples[e].answers
                # Several gold answers (evaluation sets): train on the first, as run_qa.py does.
                s, t = (answer_tokens(window, answers[0][1], answers[0][1] + len(answers[0][0]))
                        if answers else (CLS, CLS))
                starts.append(s)
                ends.append(t)
    windows = [0] * len(examples)
    for e in example_ids:
        windows[e] += 1
    return QASplit(input_ids=input_ids, token_type_ids=type_ids if keeps_types else None, offsets=offsets,
                   start_positions=starts if with_targets else None, end_positions=ends if with_targets else None,
                   example_ids=example_ids, examples=examples, split_rows=sum(n > 1 for n in windows),
                   truncated=truncated)


# ---------------------------------------------------------------- decoding

Logits = Union[Sequence[Optional[torch.Tensor]], Mapping[int, torch.Tensor]]


def _window_candidates(offsets: list[Offset], start: torch.Tensor, end: torch.Tensor, n_best: int,
                       max_answer_length: int) -> list[tuple[float, int, int]]:
    """(score, start token, end token) of the valid spans among this window's top starts x top ends."""
    n = len(offsets)
    start, end = start.detach().float().reshape(-1)[:n].cpu(), end.detach().float().reshape(-1)[:n].cpu()
    inside = torch.tensor([o is not None for o in offsets], dtype=torch.bool)
    k = min(n_best, int(inside.sum()))
    if k == 0:
        return []
    # Positions outside the context (question, specials) are masked before the top-k, not filtered after it
    # as run_qa.py does: its top n_best can be used up by question tokens, leaving fewer real candidates.
    top_s, s_idx = start.masked_fill(~inside, float("-inf")).topk(k)
    top_e, e_idx = end.masked_fill(~inside, float("-inf")).topk(k)
    length = e_idx[None, :] - s_idx[:, None] + 1
    valid = (length >= 1) & (length <= max_answer_length)
    scores = (top_s[:, None] + top_e[None, :]).tolist()
    s_idx, e_idx = s_idx.tolist(), e_idx.tolist()  # plain lists: indexing tensors one item at a time is slow
    return [(scores[a][b], s_idx[a], e_idx[b]) for a, b in valid.nonzero().tolist()]


def _stripped(context: str, a: int, b: int) -> tuple[int, int]:
    """A character span without surrounding whitespace: tokenizers whose offsets keep a word's leading space
    (byte-level BPE without offset trimming) would otherwise answer ' Denver'."""
    while a < b and context[a].isspace():
        a += 1
    while b > a and context[b - 1].isspace():
        b -= 1
    return a, b


def decode_answers(split: QASplit, start_logits: Logits, end_logits: Logits, n_best: int = 20,
                   max_answer_length: int = 30, allow_unanswerable: bool = False, null_threshold: float = 0.0,
                   examples: Optional[Sequence[int]] = None) -> list[dict]:
    """The best answer of each example (or of the example indices in `examples`), from the logits of its
    windows: `start_logits[w]` / `end_logits[w]` is window w's (T,) tensor (a list over all windows, or a
    mapping window -> tensor; longer than the window is fine, padding is cut off).

    Each result: {"id", "example" (index), "answer" (text), "start", "end" (characters in the context, None
    when no span), "score" (start + end logit), "n_best": [{"answer", "start", "end", "score"}, ...] (the best
    distinct character spans, whitespace at their edges left out)}. With `allow_unanswerable` also
    "null_score": the lowest CLS start + end logit over the example's windows (as run_qa.py's postprocessing);
    the answer is "" (start/end None, score the null score) when the null score exceeds the best span's score
    + `null_threshold`. Without it the answer is the best span; "" with score None only when no valid span
    exists at all."""
    windows = split.windows_of()
    chosen = range(len(split.examples)) if examples is None else examples
    results = []
    for e in chosen:
        ex = split.examples[e]
        spans: dict[tuple[int, int], float] = {}  # char span -> best score: overlapping windows repeat spans
        null = None
        for w in windows[e]:
            offs = split.offsets[w]
            s_logits, e_logits = start_logits[w], end_logits[w]
            cls_score = float(s_logits.reshape(-1)[CLS]) + float(e_logits.reshape(-1)[CLS])
            null = cls_score if null is None else min(null, cls_score)
            for score, s, t in _window_candidates(offs, s_logits, e_logits, n_best, max_answer_length):
                span = _stripped(ex.context, offs[s][0], offs[t][1])
                if span[0] == span[1]:
                    continue  # whitespace only: no answer text
                if score > spans.get(span, float("-inf")):
                    spans[span] = score
        ranked = sorted(spans.items(), key=lambda kv: -kv[1])[:n_best]
        top = [{"answer": ex.context[a:b], "start": a, "end": b, "score": score} for (a, b), score in ranked]
        best = top[0] if top else {"answer": "", "start": None, "end": None, "score": None}
        result = {"id": ex.id, "example": e, **best, "n_best": top}
        if allow_unanswerable:
            result["null_score"] = null
            if null is not None and (best["score"] is None or null > best["score"] + null_threshold):
                result.update(answer="", start=None, end=None, score=null)
        results.append(result)
    return results
