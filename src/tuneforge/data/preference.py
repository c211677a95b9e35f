"""Preference pairs: a prompt and two responses, one preferred (chosen) to the other (rejected).

Rows come as plain text (prompt, chosen, rejected strings) or as chat messages: the prompt a string or a list
of {role, content}, each response a string or a list holding one assistant message. A row whose chosen and
rejected are full conversations, with no prompt column, has the shared turns before them as its prompt (the
"implicit prompt" form of many public preference sets).

A pair is encoded twice: for a policy (DPO and relatives), each response as a causal-LM row whose labels cover
the response only, rendered exactly as instruction tuning renders a prompt/completion or chat row; for a reward
model, each (prompt, response) as one input to a sequence-scoring head.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from ..errors import DataError
from .causal import CausalExample, CausalTokens, render_messages, checked_messages, end_of_turn_id, tokenize
from .collate import pad_rows

Text = Union[str, list]  # a string, or chat messages


@dataclass
class PreferenceExample:
    prompt: Optional[Text]     # None only when both responses carry their whole conversation
    chosen: Text
    rejected: Text
    source: str = ""

    @property
    def is_chat(self) -> bool:
        return isinstance(self.chosen, list)

    def conversation(self, response: Text) -> list[dict]:
        """Prompt and response as chat messages."""
        prompt = self.prompt if isinstance(self.prompt, list) else [{"role": "user", "content": self.prompt or ""}]
        reply = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        return prompt + reply

    def causal(self, response: Text) -> CausalExample:
        """One response as an instruction-tuning row: loss on the response alone."""
        if self.is_chat or isinstance(self.prompt, list):
            return CausalExample(messages=self.conversation(response), source=self.source)
        return CausalExample(prompt=self.prompt or "", completion=response, source=self.source)


def _parse_messages(text: str):
    """A list of messages written into a text cell (CSV, TSV): as JSON, or as a Python literal (what pandas'
    to_csv writes); None when the text is not such a list."""
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            continue
        if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
            return value
    return None


def text_or_messages(cell, where: str, problems: list[str], allow_messages: bool = True,
           empties: Optional[list[str]] = None) -> Optional[Text]:
    """A cell as text or a message list; None when it is neither (a problem noted) or is empty (noted in
    `empties` when given, else among the problems)."""
    if hasattr(cell, "tolist"):  # Parquet gives arrays
        cell = cell.tolist()
    empty = (empties if empties is not None else problems).append
    if isinstance(cell, str) and allow_messages and cell.lstrip().startswith("["):  # messages written as text?
        parsed = _parse_messages(cell)
        if parsed is not None:
            cell = parsed
        elif cell.lstrip().startswith("[{") and ('"role"' in cell or "'role'" in cell):
            problems.append(f"{where}: looks like a list of chat messages but is neither valid JSON nor a Python "
                            f"literal: {cell[:80]!r}")
            return None
    if cell is None or (isinstance(cell, float) and cell != cell):
        empty(f"{where}: empty")
        return None
    if isinstance(cell, str):
        if not cell.strip():
            empty(f"{where}: empty")
            return None
        return cell
    if isinstance(cell, list) and allow_messages:
        if not cell:
            empty(f"{where}: empty list of messages")
            return None
        return checked_messages(cell, where, problems)
    problems.append(f"{where}: expected text{' or a list of chat messages' if allow_messages else ''}, got "
                    f"{repr(cell)[:80]}")
    return None


def _split_implicit(chosen: list, rejected: list) -> tuple[list, list, list]:
    """(shared prompt turns, chosen reply turns, rejected reply turns) of two full conversations."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _response_problem(turns: list) -> Optional[str]:
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        return (f"expected exactly one assistant message after the prompt, got "
                f"{', '.join(m['role'] for m in turns) or 'none'}")
    if not turns[0]["content"].strip():
        return "the assistant message is empty"
    return None


def _same(a: Text, b: Text) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


def read_preference_examples(path, fmt: str, prompt_col: str, chosen_col: str, rejected_col: str,
                             drop_invalid: bool = False, report=None) -> list[PreferenceExample]:
    """Every row of one file, checked. Empty responses and pairs whose responses are identical are named by row;
    they stop the run, or with `drop_invalid` are skipped and listed through `report` (a callable)."""
    from .readers import read_table

    df = read_table(path, fmt)
    columns = list(map(str, df.columns))
    missing = [c for c in (chosen_col, rejected_col) if c not in df.columns]
    if missing:
        keys = {chosen_col: "data.chosen_column", rejected_col: "data.rejected_column"}
        raise DataError([f"{path}: no column {c!r} (columns are: {', '.join(columns)}); set {keys[c]}" for c in missing])
    has_prompt = prompt_col in df.columns
    problems: list[str] = []   # malformed rows: always errors
    invalid: list[str] = []    # empty or identical responses: errors, or skipped with drop_invalid
    examples = []
    for i, row in enumerate(df.to_dict("records"), start=1):
        where = f"{path} row {i}"
        cells: dict[str, Optional[Text]] = {}
        bad: list[str] = []           # malformed cells
        empty_responses: list[str] = []
        for col in ([prompt_col] if has_prompt else []) + [chosen_col, rejected_col]:
            # An empty prompt is malformed; an empty response makes an invalid pair (skippable).
            cells[col] = text_or_messages(row[col], f"{where}, column {col!r}", bad,
                                empties=None if col == prompt_col else empty_responses)
        if bad or empty_responses:
            problems.extend(bad)
            if not bad:
                invalid.extend(empty_responses)
            continue
        prompt, chosen, rejected = cells.get(prompt_col), cells[chosen_col], cells[rejected_col]
        if isinstance(chosen, list) != isinstance(rejected, list):
            problems.append(f"{where}: {chosen_col!r} and {rejected_col!r} must both be text or both chat messages")
            continue
        if isinstance(chosen, list):
            if prompt is None or (len(chosen) > 1 and len(rejected) > 1):
                # Whole conversations: their shared turns are the prompt (a prompt column, if any, repeats them).
                prompt, chosen, rejected = _split_implicit(chosen, rejected)
                if not prompt:
                    problems.append(f"{where}: no {prompt_col!r} column, and the two conversations share no turns "
                                    f"to serve as the prompt; add a {prompt_col!r} column (or set data.prompt_column)")
                    continue
            found = [f"{where}, column {c!r}: {p}" for c, turns in ((chosen_col, chosen), (rejected_col, rejected))
                     if (p := _response_problem(turns))]
            if found:
                (invalid if all(f.endswith("is empty") for f in found) else problems).extend(found)
                continue
        elif prompt is None:
            problems.append(f"{where}: text responses need a {prompt_col!r} column (columns are: {', '.join(columns)}); "
                            "set data.prompt_column")
            continue
        if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
            problems.append(f"{where}, column {prompt_col!r}: the prompt ends with an assistant turn; it should end "
                            "where the responses begin (a user turn)")
            continue
        if _same(chosen, rejected):
            invalid.append(f"{where}: {chosen_col!r} and {rejected_col!r} are identical, so the pair prefers nothing")
            continue
        examples.append(PreferenceExample(prompt, chosen, rejected, where))
    if problems or (invalid and not drop_invalid):
        fix = [] if not invalid else [f"{len(invalid)} pair(s) above have an empty or identical response: fix or remove "
                                      "them, or set data.drop_invalid_pairs: true to skip them"]
        raise DataError(problems + invalid + fix)
    if invalid and report is not None:
        report(f"{path}: skipped {len(invalid)} invalid pair(s) (data.drop_invalid_pairs): " + "; ".join(invalid[:5])
               + (" ..." if len(invalid) > 5 else ""))
    if not examples:
        raise DataError([f"{path}: no valid preference pairs"])
    return examples


# ---------------------------------------------------------------- encoding for a policy (DPO and relatives)

@dataclass
class PolicyPairSplit:
    """Token rows of each pair's chosen and rejected responses (labels -100 outside the response), batched
    together as [chosen rows; rejected rows]; `reference` holds reference log-probs once computed (n x 2)."""
    chosen: list[CausalTokens]
    rejected: list[CausalTokens]
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)
    reference: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def lengths(self) -> list[int]:
        return [max(len(c.input_ids), len(r.input_ids)) for c, r in zip(self.chosen, self.rejected)]

    def count(self, indices: Sequence[int], augment=None) -> int:
        """Loss sums are over pairs, so they are divided by pairs."""
        return len(indices)

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict:
        rows = [self.chosen[i] for i in indices] + [self.rejected[i] for i in indices]
        width = max(len(r.input_ids) for r in rows)
        batch = {"input_ids": pad_rows([r.input_ids for r in rows], width, pad_id),
                 "attention_mask": pad_rows([[1] * len(r.input_ids) for r in rows], width, 0),
                 "labels": pad_rows([r.labels for r in rows], width, -100),
                 "use_cache": False}
        if self.reference is not None:
            batch["reference_logps"] = self.reference[torch.as_tensor(list(indices), dtype=torch.long)]
        return batch


def encode_policy_pairs(tokenizer, examples: Sequence[PreferenceExample], max_length: int,
                        use_chat_template: bool = True) -> PolicyPairSplit:
    """Both responses of every pair tokenized with the response as the only target; rows longer than max_length
    are cut (counted); a pair where either response loses every target token is dropped (named)."""
    split = PolicyPairSplit([], [])
    ends = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} - {None}
    for example in examples:
        rows = []
        for response in (example.chosen, example.rejected):
            row = tokenize(tokenizer, example.causal(response), use_chat_template, "last", ends)
            if len(row.input_ids) > max_length:
                split.truncated += 1
                row = CausalTokens(row.input_ids[:max_length], row.labels[:max_length], row.source)
            rows.append(row)
        if min(r.targets for r in rows) == 0:
            split.dropped.append(example.source)
            continue
        split.chosen.append(rows[0])
        split.rejected.append(rows[1])
    return split


# ---------------------------------------------------------------- encoding for a reward model

def reward_text(tokenizer, example: PreferenceExample, response: Text,
                use_chat_template: bool = True) -> tuple[str, Optional[str]]:
    """What a reward model reads for one (prompt, response): the conversation rendered with the chat template when
    the tokenizer has one (and data.chat_template is on); else the two texts as a pair for tokenizers with a
    separator (encoders); else the prompt and response on separate lines."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return render_messages(tokenizer, example.conversation(response), example.source), None
    if example.is_chat or isinstance(example.prompt, list):
        raise DataError([f"{example.source}: chat messages need a tokenizer with a chat template; this one has none"])
    if getattr(tokenizer, "sep_token", None):
        return example.prompt or "", response
    return f"{example.prompt}\n\n{response}", None


@dataclass
class RewardPairSplit:
    """Tokenized (prompt, chosen) and (prompt, rejected) inputs, batched as [chosen rows; rejected rows]."""
    chosen: list[dict]
    rejected: list[dict]
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)  # pairs whose two inputs became identical when cut

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def lengths(self) -> list[int]:
        return [max(len(c["input_ids"]), len(r["input_ids"])) for c, r in zip(self.chosen, self.rejected)]

    def count(self, indices: Sequence[int], augment=None) -> int:
        return len(indices)

    def batch(self, indices: Sequence[int], pad_id: int, augment=None) -> dict:
        rows = [self.chosen[i] for i in indices] + [self.rejected[i] for i in indices]
        return encoder_batch(rows, pad_id)


def encoder_batch(rows: list[dict], pad_id: int) -> dict:
    width = max(len(r["input_ids"]) for r in rows)
    batch = {"input_ids": pad_rows([r["input_ids"] for r in rows], width, pad_id),
             "attention_mask": pad_rows([[1] * len(r["input_ids"]) for r in rows], width, 0)}
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = pad_rows([r["token_type_ids"] for r in rows], width, 0)
    return batch


def encode_reward_inputs(tokenizer, texts: Sequence[tuple[str, Optional[str]]], max_length: int,
                         templated: bool = False) -> tuple[list[dict], int]:
    """(token rows, rows cut to max_length). Long inputs lose their beginning (the prompt's start), never the
    response the reward is about: the score is read at the end."""
    if not texts:
        return [], 0
    firsts, seconds = [t for t, _ in texts], [p for _, p in texts]
    pairs = seconds if seconds[0] is not None else None
    kwargs = {"add_special_tokens": not templated}  # a rendered template already holds its special tokens
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(firsts, pairs, truncation="only_first" if pairs else True, max_length=max_length, **kwargs)
    except Exception:  # a response longer than max_length by itself: cut both, from the left
        enc = tokenizer(firsts, pairs, truncation=True, max_length=max_length, **kwargs)
    finally:
        tokenizer.truncation_side = side
    full = tokenizer(firsts, pairs, **kwargs)["input_ids"]
    rows = [{k: enc[k][i] for k in enc.keys() if k in ("input_ids", "token_type_ids")} for i in range(len(firsts))]
    return rows, sum(len(ids) > max_length for ids in full)


def encode_reward_pairs(tokenizer, examples: Sequence[PreferenceExample], max_length: int,
                        use_chat_template: bool = True) -> RewardPairSplit:
    """Both sides of every pair; a pair whose two inputs are identical once cut to max_length (nothing left to
    tell them apart) is dropped and named."""
    texts = lambda side: [reward_text(tokenizer, e, getattr(e, side), use_chat_template) for e in examples]  # noqa: E731
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    chosen, cut_c = encode_reward_inputs(tokenizer, texts("chosen"), max_length, templated)
    rejected, cut_r = encode_reward_inputs(tokenizer, texts("rejected"), max_length, templated)
    split = RewardPairSplit([], [], cut_c + cut_r)
    for example, c, r in zip(examples, chosen, rejected):
        if c["input_ids"] == r["input_ids"]:
            split.dropped.append(example.source)
            continue
        split.chosen.append(c)
        split.rejected.append(r)
    return split
