"""Build the `concise-answers` preference set: for short questions, a reply of at most 12 words that ends by
itself (chosen) is preferred to a long or unfinished one (rejected). A rule a program checks, and one
SmolLM2-135M-Instruct breaks on most questions: it explains at length, and often runs out of tokens.

    python examples/concise_answers.py     # writes examples/data/concise-answers/{train,validation,test}.jsonl
                                           # and prompts-{train,validation}.jsonl (questions and answers, for GRPO)

The questions are those of examples/json_answers.py (the test split's values and some of its templates are never
seen in training). The rejected reply of each pair is the model's own greedy reply (48 new tokens at most), so
preference tuning pushes down what the model actually does; the chosen reply is one short sentence with the
right answer, opening the way the model's own replies open ("The capital of Peru is Lima."), so the pair differs
in what follows rather than in style. Only questions whose own reply breaks the rule become pairs. Needs
`make smollm2`; deterministic (greedy decoding).
"""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from json_answers import questions, write_splits  # noqa: E402

MAX_WORDS = 12
MAX_NEW_TOKENS = 48


def is_concise(reply: str, stopped: bool) -> bool:
    """The preferred behaviour: at most MAX_WORDS words, and the reply ended by itself (not cut off)."""
    return stopped and 0 < len(reply.split()) <= MAX_WORDS


# One short sentence per question form of json_answers.questions; other forms get "The answer is X."
SENTENCES = [
    (r"What is (\d+) \+ (\d+)\?", lambda m, a: f"{m[1]} + {m[2]} = {a}."),
    (r"What is (\d+) times (\d+)\?", lambda m, a: f"{m[1]} times {m[2]} is {a}."),
    (r"What is the capital of (.+)\?", lambda m, a: f"The capital of {m[1]} is {a}."),
    (r"What is the (opposite|plural) of '(.+)'\?", lambda m, a: f"The {m[1]} of '{m[2]}' is '{a}'."),
    (r"What colour is (.+)\?", lambda m, a: f"{m[1][0].upper()}{m[1][1:]} is {a}."),
    (r"Spell '(.+)' backwards\.", lambda m, a: f"'{m[1]}' backwards is '{a}'."),
    (r"How many letters are in the word '(.+)'\?", lambda m, a: f"The word '{m[1]}' has {a} letters."),
]


def answer_sentence(question: str, answer: str) -> str:
    """The preferred reply: the right answer in one short sentence."""
    for pattern, make in SENTENCES:
        m = re.fullmatch(pattern, question)
        if m:
            return make(m, answer)
    return f"The answer is {answer}."


def base_replies(prompts: list[str], model_name: str = "smollm2-135m") -> list[tuple[str, bool]]:
    """(greedy reply, ended at an end token) of the base model for each prompt, rendered as `tuneforge generate`
    renders a chat run's prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.assets import resolve_model_path
    from tuneforge.data.causal import stop_ids
    from tuneforge.generation import GenerationOptions, decode, generate_ids

    path = resolve_model_path(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).eval()
    stops, options = set(stop_ids(tokenizer, model)), GenerationOptions(max_new_tokens=MAX_NEW_TOKENS)
    out = []
    for i, prompt in enumerate(prompts, start=1):
        new = generate_ids(model, tokenizer, prompt, options)
        out.append((decode(tokenizer, new).strip(), bool(new) and new[-1] in stops))
        print(f"\r{i}/{len(prompts)} replies", end="", flush=True)
    print()
    return out


def write_prompts(out: Path = Path(__file__).parent / "data" / "concise-answers") -> dict[str, Path]:
    """The same training questions as prompts with their answers, for GRPO (no model needed): 20 for validation,
    the rest for training."""
    rng = random.Random(0)
    seen = questions(rng, held_out=False)
    rng.shuffle(seen)
    rows = [{"prompt": q, "answer": a} for q, a in seen]
    return write_splits(out, {"prompts-validation": rows[:20], "prompts-train": rows[20:]})


def main(out: Path = Path(__file__).parent / "data" / "concise-answers") -> dict[str, Path]:
    write_prompts(out)
    rng = random.Random(0)
    seen = questions(rng, held_out=False)
    rng.shuffle(seen)
    held_out = questions(rng, held_out=True)
    replies = base_replies([q for q, _ in seen])
    pairs = [{"prompt": q, "chosen": answer_sentence(q, a), "rejected": reply}
             for (q, a), (reply, stopped) in zip(seen, replies) if not is_concise(reply, stopped)]
    print(f"{len(pairs)} of {len(seen)} questions get a reply that breaks the rule: they become pairs")
    validation, train = pairs[:30], pairs[30:]
    test = [{"prompt": q, "answer": a} for q, a in held_out]
    return write_splits(out, {"train": train, "validation": validation, "test": test})


if __name__ == "__main__":
    main()
