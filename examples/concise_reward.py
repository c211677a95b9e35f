"""The reward of examples/smollm2-grpo.yaml: half a point for a concise reply (at most 12 words), half a point for
the right answer in it. Called by tuneforge as concise_and_right(prompts, completions, answer=[...]).

Both halves matter: concision alone is won by saying anything short, and the answer alone by explaining at
length."""
from __future__ import annotations

MAX_WORDS = 12


def concise_and_right(prompts, completions, answer, **other):
    rewards = []
    for completion, right in zip(completions, answer):
        words = completion.split()
        concise = 0 < len(words) <= MAX_WORDS
        rewards.append(0.5 * concise + 0.5 * (str(right).lower() in completion.lower()))
    return rewards
