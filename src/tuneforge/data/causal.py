"""Causal-LM examples to token ids and labels: prompt/completion, chat messages, or plain text.

The loss covers only what the model should learn to write: the completion, or the assistant's turns of a
chat (configurable), each ended by the end-of-sequence / end-of-turn token so the model learns to stop.
Label -100 marks positions without loss (the value PyTorch's cross-entropy and transformers ignore).

Chats are rendered with the tokenizer's own chat template. Few templates mark assistant text for
transformers' `return_assistant_tokens_mask`, so the assistant spans are found by rendering each prefix of
the conversation: the text an assistant turn adds is what `messages[:i+1]` renders beyond
`messages[:i]` with the generation prompt. A template whose prefixes do not render as prefixes of the whole
is refused, rather than guessed at.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import DataError

IGNORE = -100  # label of positions without loss


@dataclass
class CausalExample:
    prompt: Optional[str] = None
    completion: Optional[str] = None
    messages: Optional[list[dict]] = None
    text: Optional[str] = None
    source: str = ""


@dataclass
class CausalTokens:
    input_ids: list[int]
    labels: list[int]
    source: str = ""

    @property
    def targets(self) -> int:
        """Positions with loss. The first token is never predicted (nothing comes before it)."""
        return sum(label != IGNORE for label in self.labels[1:])


@dataclass
class CausalSplit:
    rows: list[CausalTokens]
    truncated: int = 0                        # examples cut to max_length
    dropped: list[str] = field(default_factory=list)  # examples left with no target after truncation: where


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError(["the tokenizer has no end-of-sequence token; set one (tokenizer.eos_token) so the model "
                         "can learn to stop"])
    return tokenizer.eos_token_id


def render_messages(tokenizer, messages: list[dict], where: str, generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja's TemplateError, or a template's own raise_exception (e.g. no system role)
        raise DataError([f"{where}: the tokenizer's chat template refused this conversation: {e}"]) from None


def assistant_spans(tokenizer, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (each with its end-of-turn
    marker), found by rendering prefixes."""
    full = render_messages(tokenizer, messages, where)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        upto = render_messages(tokenizer, messages[: i + 1], where)
        if i:
            before = render_messages(tokenizer, messages[:i], where, generation_prompt=True)
            start = len(before)
        else:  # a conversation that opens with the assistant: its text starts where its content does, so a
            # default system prompt the template inserts before it gets no loss
            before = ""
            found = upto.rfind(message["content"]) if message["content"] else -1
            start = found if found >= 0 else len(upto)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError([f"{where}: the chat template does not render this conversation's prefixes as prefixes of "
                             "the whole (it may rewrite earlier turns, e.g. drop past reasoning); tuneforge cannot tell "
                             "which tokens are the assistant's. Give prompt/completion rows instead"])
        spans.append((start, len(upto)))
    return full, spans


def end_of_turn_id(tokenizer) -> Optional[int]:
    """The special token the chat template closes an assistant turn with (ChatML's <|im_end|>, Gemma's
    <end_of_turn>), found by rendering a one-line chat; None without a template or without such a token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    try:
        text, spans = assistant_spans(tokenizer, messages, "chat template")
    except DataError:
        return None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids)
    start, end = spans[-1]
    after = text.index("y", start) + 1  # the first special token after the reply's text closes the turn
    return next((t for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]) if after <= a < end and t in special),
                None)


def stop_ids(tokenizer, model=None) -> list[int]:
    """Tokens that end a reply: the tokenizer's EOS, the template's end-of-turn token, and the model's own
    generation_config.eos_token_id (a list for models with several, such as Llama 3)."""
    ids = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids if i is not None})


def tokenize_chat(tokenizer, messages: list[dict], where: str, train_on: str = "assistant",
                  ends: Optional[set[int]] = None) -> CausalTokens:
    """`train_on`: 'assistant' (every assistant turn), 'last' (the final assistant turn), or 'all' tokens.
    `ends`: tokens that may close a turn; a trained turn that ends otherwise (a template without an end-of-turn
    token) gets EOS appended, so the model learns to stop."""
    text, spans = assistant_spans(tokenizer, messages, where)
    if train_on == "last":
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if train_on == "all":
        return CausalTokens(ids, list(ids), where)
    ends = ends if ends is not None else {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} - {None}
    out_ids, labels = [], []
    for k, (token, (start, _)) in enumerate(zip(ids, offsets)):
        inside = any(s <= start < e for s, e in spans)
        out_ids.append(token)
        labels.append(token if inside else IGNORE)
        next_inside = k + 1 < len(ids) and any(s <= offsets[k + 1][0] < e for s, e in spans)
        if inside and not next_inside and token not in ends:
            out_ids.append(_eos(tokenizer))
            labels.append(_eos(tokenizer))
    return CausalTokens(out_ids, labels, where)


# Between a prompt and its completion rendered as plain text, unless one side already has whitespace there:
# without it `Country: Kenya` + `Nairobi` trains the model to write `Country: KenyaNairobi`.
PLAIN_SEPARATOR = "\n"


def plain_completion(prompt: str, completion: str) -> str:
    """The completion as it follows the prompt in plain text: after the separator, which is the completion's (it has
    loss), so the model learns to write it and a plain `prompt` given to any text-generation pipeline continues
    on a new line."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return completion
    return PLAIN_SEPARATOR + completion


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str, where: str,
                               train_on: str = "assistant") -> CausalTokens:
    """Without a chat template: prompt tokens (no loss unless train_on is 'all'), then the separator, completion
    tokens and EOS."""
    head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if head and head[-1] == tokenizer.eos_token_id:  # tokenizers that append EOS: the prompt does not end the text
        head = head[:-1]
    tail = tokenizer(plain_completion(prompt, completion), add_special_tokens=False)["input_ids"] + [_eos(tokenizer)]
    prompt_labels = list(head) if train_on == "all" else [IGNORE] * len(head)
    return CausalTokens(head + tail, prompt_labels + tail, where)


def tokenize_text(tokenizer, text: str, where: str) -> CausalTokens:
    """Language modelling: every token has loss, and EOS ends the text."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids = ids + [_eos(tokenizer)]
    return CausalTokens(list(ids), list(ids), where)


def tokenize(tokenizer, example: CausalExample, use_chat_template: bool, train_on: str = "assistant",
             ends: Optional[set[int]] = None) -> CausalTokens:
    if example.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError([f"{example.source}: chat messages need a tokenizer with a chat template; this one has none"])
        return tokenize_chat(tokenizer, example.messages, example.source, train_on, ends)
    if example.prompt is not None:
        if use_chat_template and getattr(tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": example.prompt},
                        {"role": "assistant", "content": example.completion or ""}]
            # One assistant turn: 'last' and 'assistant' agree; 'all' also trains on the prompt.
            return tokenize_chat(tokenizer, messages, example.source, train_on, ends)
        return tokenize_prompt_completion(tokenizer, example.prompt, example.completion or "", example.source, train_on)
    return tokenize_text(tokenizer, example.text or "", example.source)


def encode_causal(tokenizer, examples: Sequence[CausalExample], max_length: int, use_chat_template: bool = True,
                  train_on: str = "assistant") -> CausalSplit:
    """Tokenize, cut to max_length (counted), and drop (and count) examples left without any target: an example
    that trains nothing must not pass as a silent zero loss."""
    split = CausalSplit(rows=[])
    ends = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} - {None}  # found once, not per row
    for example in examples:
        row = tokenize(tokenizer, example, use_chat_template, train_on, ends)
        if len(row.input_ids) > max_length:
            split.truncated += 1
            row = CausalTokens(row.input_ids[:max_length], row.labels[:max_length], row.source)
        if row.targets == 0:
            split.dropped.append(row.source)
            continue
        split.rows.append(row)
    return split


def pack(rows: Sequence[CausalTokens], max_length: int) -> list[dict]:
    """Greedy packing of whole examples into rows of at most max_length tokens, in order.

    Each packed row carries position_ids that restart at 0 for every example: transformers then attends only
    within each example (no attention across examples) when the forward gets no attention_mask and no key/value
    cache (pass use_cache=False: with a cache, packed sequences are not looked for). The first token of each
    example gets no loss, exactly as it has none unpacked (nothing before it in its own example).
    """
    packed, current = [], {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        n = len(row.input_ids)
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            packed.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"].extend(row.input_ids)
        current["labels"].extend([IGNORE] + row.labels[1:])
        current["position_ids"].extend(range(n))
    if current["input_ids"]:
        packed.append(current)
    return packed


# ---------------------------------------------------------------- reading rows

ROLES = ("system", "user", "assistant")


def _messages(value, where: str, problems: list[str]) -> Optional[list[dict]]:
    import json

    if isinstance(value, str):  # a chat stored as JSON text (CSV, TSV)
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not a JSON list of messages ({e.msg})")
            return None
    if hasattr(value, "tolist"):  # Parquet gives arrays
        value = value.tolist()
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: expected a non-empty list of {{role, content}} messages, got {type(value).__name__}")
        return None
    return checked_messages(value, where, problems)


def checked_messages(value: list, where: str, problems: list[str]) -> Optional[list[dict]]:
    """Each item a {role, content} message with a known role and text content (extra keys dropped); None, with
    the first bad message named in `problems`, otherwise."""
    out = []
    for j, m in enumerate(value, start=1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            problems.append(f"{where}, message {j}: expected {{\"role\": one of {'/'.join(ROLES)}, \"content\": text}}, "
                            f"got {str(m)[:80]}")
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_causal_examples(path, fmt: str, text_col: str, prompt_col: str, completion_col: str, messages_col: str,
                         train_on: str = "assistant") -> list[CausalExample]:
    """Rows of one file, by the columns present: chat (messages), prompt/completion, or plain text. Every row is
    checked; problems name the file, row and column."""
    from .chat_formats import map_chat_format
    from .dataset import is_missing
    from .readers import read_table

    df = read_table(path, fmt)
    # Published layouts (ShareGPT conversations, Alpaca instructions) mapped to the columns read below.
    df, messages_col = map_chat_format(df, str(path), text_col, prompt_col, completion_col, messages_col)
    columns = list(map(str, df.columns))
    if messages_col in df.columns:
        kind = "chat"
    elif prompt_col in df.columns:
        if completion_col not in df.columns:
            raise DataError([f"{path}: has a {prompt_col!r} column but no {completion_col!r} column (columns are: "
                             f"{', '.join(columns)}); set data.completion_column"])
        kind = "prompt"
    elif text_col in df.columns:
        kind = "text"
    else:
        raise DataError([f"{path}: no {messages_col!r} (chat), {prompt_col!r} + {completion_col!r} or {text_col!r} "
                         f"column (columns are: {', '.join(columns)}); set data.messages_column, data.prompt_column "
                         "or data.text_column"])
    problems: list[str] = []
    examples = []
    records = df.to_dict("records")
    for i, row in enumerate(records, start=1):
        where = f"{path} row {i}"
        if kind == "chat":
            messages = _messages(row[messages_col], f"{where}, column {messages_col!r}", problems)
            if messages is None:
                continue
            if train_on != "all" and not any(m["role"] == "assistant" for m in messages):
                problems.append(f"{where}, column {messages_col!r}: no assistant message, so nothing to learn "
                                "(or set data.train_on: all)")
                continue
            examples.append(CausalExample(messages=messages, source=where))
            continue
        cells = {prompt_col: row[prompt_col], completion_col: row[completion_col]} if kind == "prompt" \
            else {text_col: row[text_col]}
        bad = [c for c, v in cells.items() if is_missing(v) or not isinstance(v, str)]
        for c in bad:
            problems.append(f"{where}, column {c!r}: expected non-empty text, got {cells[c]!r}")
        if bad:
            continue
        if kind == "prompt":
            examples.append(CausalExample(prompt=cells[prompt_col], completion=cells[completion_col], source=where))
        else:
            examples.append(CausalExample(text=cells[text_col], source=where))
    if problems:
        raise DataError(problems)
    return examples
