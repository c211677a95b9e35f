"""Score (prompt, response) pairs with a finished reward-model run.

A file of prompt and response columns gets one score per row; a file of preference pairs (prompt, chosen,
rejected) gets both responses scored, and the share of pairs where the chosen one scores higher.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from .data.preference import PreferenceExample, encode_reward_inputs, encoder_batch, reward_text, text_or_messages
from .errors import DataError, RunDirError


class Scorer:
    """A reward-model run ready to score responses."""

    def __init__(self, run_dir: str | Path, device: Optional[str] = None):
        from .runs import open_run

        self.run = open_run(run_dir, device)
        if not self.run.recipe.task_kind.scores_responses:
            raise RunDirError(f"{run_dir} is a {self.run.recipe.task.type} model; scoring needs a reward-model run")

    @torch.no_grad()
    def scores(self, examples: Sequence[PreferenceExample], responses: Sequence, batch_size: Optional[int] = None) -> list[float]:
        """The reward of each (example's prompt, response)."""
        tokenizer, recipe = self.run.tokenizer, self.run.recipe
        use_template = recipe.data.chat_template
        templated = use_template and bool(getattr(tokenizer, "chat_template", None))
        rows, _ = encode_reward_inputs(tokenizer, [reward_text(tokenizer, e, r, use_template)
                                                   for e, r in zip(examples, responses)], recipe.model.max_length, templated)
        size = batch_size or recipe.training.eval_batch_size
        pad_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.run.model.eval()
        out: list[float] = []
        for start in range(0, len(rows), size):
            batch = self.run.runtime.to_device(encoder_batch(rows[start:start + size], pad_id))
            out.extend(self.run.model(**batch).logits.float().squeeze(-1).tolist())
        return out

    def score_file(self, data: str | Path, response_column: str = "response", batch_size: Optional[int] = None,
                   prompt_column: Optional[str] = None) -> tuple[list[dict], dict]:
        """(one record per row, summary). Rows are (prompt, response), or preference pairs when the file has the
        run's chosen and rejected columns."""
        from .data.preference import read_preference_examples
        from .data.readers import read_table

        d = self.run.recipe.data
        prompt_col = prompt_column or d.prompt_column
        columns = set(map(str, read_table(data, d.format).columns))
        if {d.chosen_column, d.rejected_column} <= columns:
            pairs = read_preference_examples(data, d.format, prompt_col, d.chosen_column, d.rejected_column)
            chosen = self.scores(pairs, [p.chosen for p in pairs], batch_size)
            rejected = self.scores(pairs, [p.rejected for p in pairs], batch_size)
            records = [{"row": p.source.rsplit(" ", 1)[-1], "chosen_score": c, "rejected_score": r,
                        "prefers_chosen": c > r} for p, c, r in zip(pairs, chosen, rejected)]
            n = len(records)
            return records, {"pairs": n, "accuracy": sum(r["prefers_chosen"] for r in records) / n,
                             "margin": sum(c - r for c, r in zip(chosen, rejected)) / n}
        examples = read_responses(data, d.format, prompt_col, response_column)
        values = self.scores(examples, [e.chosen for e in examples], batch_size)
        records = [{"row": e.source.rsplit(" ", 1)[-1], "score": v} for e, v in zip(examples, values)]
        return records, {"rows": len(records), "mean_score": sum(values) / len(values)}


def read_responses(path, fmt: str, prompt_col: str, response_col: str) -> list[PreferenceExample]:
    """(prompt, response) rows, checked: each a PreferenceExample whose chosen is the response."""
    from .data.readers import read_table

    df = read_table(path, fmt)
    missing = [c for c in (prompt_col, response_col) if c not in df.columns]
    if missing:
        raise DataError([f"{path}: no column {c!r} (columns are: {', '.join(map(str, df.columns))}); give "
                         f"{'data.prompt_column in the run' if c == prompt_col else '--response-column'}, or a file of "
                         "preference pairs" for c in missing])
    problems: list[str] = []
    out = []
    for i, row in enumerate(df.to_dict("records"), start=1):
        where = f"{path} row {i}"
        prompt = text_or_messages(row[prompt_col], f"{where}, column {prompt_col!r}", problems)
        response = text_or_messages(row[response_col], f"{where}, column {response_col!r}", problems)
        if prompt is not None and response is not None:
            out.append(PreferenceExample(prompt, response, response, where))
    if problems:
        raise DataError(problems)
    if not out:
        raise DataError([f"{path}: no rows to score"])
    return out


def score(run_dir: str | Path, data: str | Path, response_column: str = "response",
          batch_size: Optional[int] = None, prompt_column: Optional[str] = None,
          device: Optional[str] = None) -> tuple[list[dict], dict]:
    """Score a file with a reward-model run: (one record per row, summary)."""
    return Scorer(run_dir, device).score_file(data, response_column, batch_size, prompt_column)
