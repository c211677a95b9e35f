"""Chat and instruction data in the layouts they are published in, mapped to tuneforge's causal-LM columns before the
rows are checked:

- ShareGPT: a `conversations` column of turns `{"from": human | gpt | system, "value": text}` becomes chat messages
  `{"role": user | assistant | system, "content": text}`;
- Alpaca: `instruction`, optional `input` and `output` columns become prompt (the instruction, then the input after a
  blank line where there is one) and completion (the output).

A layout is taken from the column names, and only where the recipe's own columns (data.messages_column,
data.prompt_column) are absent, so a file in tuneforge's layout reads as before; a messages column whose turns are
ShareGPT's is mapped too. Each mapping applied is one note naming the file and what became what."""
from __future__ import annotations

import json
from typing import Any, Optional

import pandas as pd

from ..errors import DataError
from .reading import note

SHAREGPT_COLUMN = "conversations"
# ShareGPT's speaker names (and those of its common variants) -> chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
ALPACA = ("instruction", "input", "output")


def _turns(value: Any) -> Any:
    if isinstance(value, str):  # a conversation stored as JSON text (CSV, TSV)
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.tolist() if hasattr(value, "tolist") else value  # Parquet and datasets give arrays


def _first_turn(column: pd.Series) -> Optional[dict]:
    for value in column.tolist():
        turns = _turns(value)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return turns[0]
    return None


def is_sharegpt(column: pd.Series) -> bool:
    first = _first_turn(column)
    return first is not None and "from" in first and "value" in first


def _sharegpt_messages(value: Any, where: str, problems: list[str], seen: dict[str, str]) -> Optional[list[dict]]:
    turns = _turns(value)
    if not isinstance(turns, list) or not turns:
        problems.append(f"{where}: expected a non-empty list of ShareGPT turns {{\"from\": human/gpt/system, "
                        f"\"value\": text}}, got {str(value)[:80]!r}")
        return None
    messages = []
    for j, turn in enumerate(turns, start=1):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        text = turn.get("value") if isinstance(turn, dict) else None
        if not isinstance(speaker, str) or not isinstance(text, str):
            problems.append(f"{where}, turn {j}: expected {{\"from\": human/gpt/system, \"value\": text}}, got "
                            f"{str(turn)[:80]}")
            return None
        role = SHAREGPT_ROLES.get(speaker.strip().lower())
        if role is None:
            problems.append(f"{where}, turn {j}: 'from' is {speaker!r}; the ShareGPT speakers read are "
                            f"{', '.join(SHAREGPT_ROLES)}. Rename the speaker, or drop the turn")
            return None
        seen.setdefault(speaker, role)
        messages.append({"role": role, "content": text})
    return messages


def _map_sharegpt(df: pd.DataFrame, path: str, column: str) -> pd.DataFrame:
    problems: list[str] = []
    seen: dict[str, str] = {}
    mapped = [_sharegpt_messages(v, f"{path} row {i}, column {column!r}", problems, seen)
              for i, v in enumerate(df[column].tolist(), start=1)]
    if problems:
        raise DataError(problems)
    df = df.copy()
    df[column] = pd.Series(mapped, index=df.index, dtype=object)
    roles = ", ".join(f"{speaker} -> {role}" for speaker, role in seen.items())
    note(f"{path}: column {column!r} (ShareGPT: from/value) -> messages; roles {roles}")
    return df


def _text(value: Any) -> Optional[str]:
    if value is None or isinstance(value, float) and value != value:
        return None
    return value if isinstance(value, str) else None


def _map_alpaca(df: pd.DataFrame, path: str, prompt_col: str, completion_col: str, text_col: str) -> pd.DataFrame:
    instruction, extra, output = ALPACA
    has_input = extra in df.columns
    problems, prompts, completions = [], [], []
    inputs = df[extra].tolist() if has_input else [None] * len(df)
    for i, (ins, inp, out) in enumerate(zip(df[instruction].tolist(), inputs, df[output].tolist()), start=1):
        where = f"{path} row {i}"
        for column, value in ((instruction, ins), (output, out)):
            if _text(value) is None or not value.strip():
                problems.append(f"{where}, column {column!r}: expected non-empty text, got {value!r}")
        if inp is not None and not (isinstance(inp, float) and inp != inp) and not isinstance(inp, str):
            problems.append(f"{where}, column {extra!r}: expected text (or nothing), got {type(inp).__name__} {inp!r}")
        given = inp.strip() if isinstance(inp, str) else ""
        prompts.append(f"{ins}\n\n{inp}" if given and isinstance(ins, str) else ins)
        completions.append(out)
    if problems:
        raise DataError(problems)
    df = df.copy()
    df[prompt_col] = pd.Series(prompts, index=df.index, dtype=object)
    df[completion_col] = pd.Series(completions, index=df.index, dtype=object)
    source = f"{instruction} + {extra}" if has_input else instruction
    unused = f"; column {text_col!r} is not read" if text_col in df.columns else ""
    note(f"{path}: columns {source} -> prompt{' (instruction, a blank line, input)' if has_input else ''}, "
         f"{output} -> completion (Alpaca){unused}")
    return df


def map_chat_format(df: pd.DataFrame, path: str, text_col: str, prompt_col: str, completion_col: str,
                    messages_col: str) -> tuple[pd.DataFrame, str]:
    """The table with a ShareGPT or Alpaca layout mapped to tuneforge's columns, and the column chat messages are
    then read from (data.messages_column, or `conversations` where ShareGPT's turns were mapped in place, so that
    problems found later name the user's column)."""
    columns = set(map(str, df.columns))
    if messages_col in columns:
        if is_sharegpt(df[messages_col]):
            return _map_sharegpt(df, path, messages_col), messages_col
        return df, messages_col
    if prompt_col in columns:
        return df, messages_col
    if SHAREGPT_COLUMN in columns:
        if is_sharegpt(df[SHAREGPT_COLUMN]):
            return _map_sharegpt(df, path, SHAREGPT_COLUMN), SHAREGPT_COLUMN
        first = _first_turn(df[SHAREGPT_COLUMN])
        if first is not None and "role" in first and "content" in first:
            note(f"{path}: column {SHAREGPT_COLUMN!r} (role/content) -> messages")
            return df, SHAREGPT_COLUMN
    if {ALPACA[0], ALPACA[2]} <= columns:
        return _map_alpaca(df, path, prompt_col, completion_col, text_col), messages_col
    return df, messages_col
