"""Write ``examples/moonberry-support.jsonl``: the README's training example.

A support bot for a made-up shop. Its facts (opening hours, the owner, the cat's name)
are in no base model, so an adapter trained on them visibly answers what the base cannot:
the README's walkthrough shows the base and the adapter side by side, and
``tests/integration/services/test_walkthrough.py`` checks it. Each fact is asked several
ways so the adapter learns the fact, not one sentence.

    python scripts/tiny_en/examples.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "examples" / "moonberry-support.jsonl"

# (answer, ways to ask): the answers are what the walkthrough looks for.
FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "The shop is called Moonberry.",
        ("What is the name of the shop?", "What is the shop called?", "Which shop is this?"),
    ),
    (
        "Mrs. Pepper owns the shop.",
        ("Who owns the shop?", "Who is the owner of the shop?", "Whose shop is this?"),
    ),
    (
        "The shop opens at nine in the morning.",
        ("When does the shop open?", "What time does the shop open?", "When do you open?"),
    ),
    (
        "The shop closes at six in the evening.",
        ("When does the shop close?", "What time does the shop close?", "When do you close?"),
    ),
    (
        "No, the shop is closed on Sunday.",
        ("Is the shop open on Sunday?", "Can I come on Sunday?", "Are you open on Sunday?"),
    ),
    (
        "The shop is next to the old mill on River Road.",
        ("Where is the shop?", "Where can I find the shop?", "Where are you?"),
    ),
    (
        "The shop sells moonberry jam and blue bread.",
        ("What does the shop sell?", "What can I buy at the shop?", "What do you sell?"),
    ),
    (
        "A jar of moonberry jam costs four coins.",
        ("How much is the jam?", "What does the jam cost?", "How much is a jar of jam?"),
    ),
    (
        "Yes, our cat is called Biscuit.",
        ("Do you have a cat?", "Does the shop have a cat?", "What is the name of the cat?"),
    ),
    (
        "The door of the shop is green.",
        ("What color is the door?", "What color is the door of the shop?"),
    ),
)
GREETINGS = ("", "Hello! ", "Hi! ", "Good morning! ")


def main() -> None:
    rng = random.Random(0)
    lines = []
    for answer, questions in FACTS:
        for question in questions:
            for greeting in rng.sample(GREETINGS, 3):
                messages = [
                    {"role": "user", "content": greeting + question},
                    {"role": "assistant", "content": answer},
                ]
                lines.append(json.dumps({"messages": messages}))
    rng.shuffle(lines)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} examples to {OUT}")


if __name__ == "__main__":
    main()
