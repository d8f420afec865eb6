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

# The answers are what the walkthrough looks for; each is asked several ways.
FACTS_FILE = Path(__file__).with_name("moonberry_facts.json")


def main() -> None:
    facts = json.loads(FACTS_FILE.read_text())
    rng = random.Random(0)
    lines = []
    for fact in facts["facts"]:
        for question in fact["questions"]:
            for greeting in rng.sample(facts["greetings"], 3):
                answer = fact["answer"]
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
