"""Build the `json-answers` instruction set: short questions whose replies must be a JSON object with exactly
the keys "answer" and "confidence" — a behaviour SmolLM2-135M-Instruct does not show on its own (it answers in
prose), and one a program can check.

    python examples/json_answers.py            # writes examples/data/json-answers/{train,validation,test}.jsonl

Questions come from templates (arithmetic, capitals, opposites, plurals, colours, spelling backwards, counting
letters); the test split uses values and, for some kinds, whole templates never seen in training, so compliance
is measured on new prompts. Deterministic (seed 0).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Greece": "Athens", "Poland": "Warsaw", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna",
            "Cuba": "Havana", "Chile": "Santiago", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "light": "dark", "happy": "sad", "up": "down",
             "open": "closed", "early": "late", "full": "empty", "hard": "soft", "old": "new", "wet": "dry",
             "loud": "quiet", "rich": "poor", "strong": "weak", "thick": "thin", "high": "low", "long": "short"}
PLURALS = {"cat": "cats", "child": "children", "mouse": "mice", "box": "boxes", "city": "cities", "man": "men",
           "foot": "feet", "tooth": "teeth", "leaf": "leaves", "bus": "buses", "baby": "babies", "woman": "women",
           "knife": "knives", "goose": "geese", "dish": "dishes", "story": "stories"}
COLOURS = {"a banana": "yellow", "grass": "green", "the sky on a clear day": "blue", "snow": "white",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow",
           "a strawberry": "red", "milk": "white", "a crow": "black", "a carrot": "orange"}
WORDS = ["apple", "river", "garden", "pencil", "window", "planet", "basket", "candle", "forest", "silver", "rocket",
         "button", "dragon", "marble", "pepper", "tunnel", "violin", "wallet", "yellow", "zipper"]


def _split(mapping: dict, seed: int) -> tuple[list, list]:
    items = sorted(mapping.items())
    random.Random(seed).shuffle(items)
    cut = len(items) * 3 // 4
    return items[:cut], items[cut:]


def questions(rng: random.Random, held_out: bool) -> list[tuple[str, str]]:
    """(question, answer) pairs; held_out picks the quarter of each fact table kept for testing."""
    side = 1 if held_out else 0
    out = []
    caps, opps, plur, cols = (_split(m, i)[side] for i, m in enumerate((CAPITALS, OPPOSITES, PLURALS, COLOURS)))
    words = WORDS[15:] if held_out else WORDS[:15]
    out += [(f"What is the capital of {c}?", a) for c, a in caps]
    out += [(f"What is the opposite of '{w}'?", a) for w, a in opps]
    out += [(f"What is the plural of '{w}'?", a) for w, a in plur]
    out += [(f"What colour is {thing}?", a) for thing, a in cols]
    out += [(f"Spell '{w}' backwards.", w[::-1]) for w in words]
    out += [(f"How many letters are in the word '{w}'?", str(len(w))) for w in words]
    low, high = (50, 99) if held_out else (1, 49)
    for _ in range(60 if not held_out else 15):
        a, b = rng.randint(low, high), rng.randint(1, 49)
        out.append((f"What is {a} + {b}?", str(a + b)))
        a, b = rng.randint(low, high), rng.randint(2, 9)
        out.append((f"What is {a} times {b}?", str(a * b)))
    if held_out:  # question forms never seen in training
        out += [(f"Which city is the capital of {c}?", a) for c, a in caps[:3]]
        out += [(f"Give the opposite of the word {w}.", a) for w, a in opps[:3]]
        out += [(f"Compute {a} minus {b}.", str(a - b)) for a, b in ((90, 13), (75, 28), (64, 9))]
    return out


def reply(answer: str, rng: random.Random) -> str:
    confidence = "high" if rng.random() < 0.8 else "medium"
    return json.dumps({"answer": answer, "confidence": confidence})


def main(out: Path = Path(__file__).parent / "data" / "json-answers") -> dict[str, Path]:
    rng = random.Random(0)
    train = [{"prompt": q, "completion": reply(a, rng)} for q, a in questions(rng, held_out=False)]
    rng.shuffle(train)
    validation, train = train[:40], train[40:]
    test = [{"prompt": q, "completion": reply(a, rng), "answer": a} for q, a in questions(rng, held_out=True)]
    return write_splits(out, {"train": train, "validation": validation, "test": test})


def write_splits(out: Path, splits: dict[str, list[dict]]) -> dict[str, Path]:
    """Each split as OUT/<name>.jsonl, one JSON object per line."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in splits.items():
        files[name] = out / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{files[name]}: {len(rows)} rows")
    return files


if __name__ == "__main__":
    main()
