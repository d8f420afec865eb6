"""The training text of the built-in ``tiny-en`` model, generated from a seed.

``tiny-en`` has to write readable English with about three million parameters and a few
minutes of CPU training, and nothing may be downloaded. So its corpus is small, simple
English made by a grammar: short children's stories (characters, places, things, a
problem, a friend, an ending) and chat turns in the model's template (greetings, colours,
animal sounds, sums, opposites). The vocabulary is a few hundred words, which a model
that size learns well; what it writes outside them is still words built from its BPE
pieces, never bytes.

Deterministic: the same seed gives the same text on every machine (``random.Random``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["FACTS", "chat_turn", "generate_corpus", "story"]

NAMES = (
    "Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Zoe", "Leo", "Ella", "Jack",
    "Nora", "Tim", "Lucy", "Finn", "Ruby", "Oscar", "Grace",
)  # fmt: skip
HE_SHE = {
    "Tom": "he", "Ben": "he", "Sam": "he", "Max": "he", "Leo": "he", "Jack": "he",
    "Tim": "he", "Finn": "he", "Oscar": "he",
}  # fmt: skip
ANIMALS = (
    "cat", "dog", "bird", "fox", "rabbit", "bear", "duck", "frog", "mouse", "horse",
    "owl", "pig", "lion", "turtle",
)  # fmt: skip
KINDS = (*ANIMALS, "girl", "boy")
LOOKS = (
    "little", "big", "happy", "small", "brave", "kind", "old", "young", "funny",
    "shy", "clever", "curious", "gentle", "busy",
)  # fmt: skip
COLOURS = ("red", "blue", "green", "yellow", "white", "brown", "pink", "orange", "purple")
THINGS = (
    "ball", "kite", "book", "hat", "box", "cake", "flower", "apple", "boat", "toy",
    "drum", "map", "key", "shell", "stone", "cup", "bell", "leaf", "star", "sock",
    "lamp", "shoe", "bag", "chair", "clock", "ring", "bottle", "basket", "candle",
    "blanket", "coat", "spoon", "plate", "pencil", "brush", "rope", "wheel", "jar",
    "feather", "button", "mirror", "ladder", "bucket", "whistle", "scarf", "cookie",
)  # fmt: skip
FOODS = (
    "bread", "jam", "pie", "milk", "cheese", "soup", "honey", "cookies", "apples",
    "carrots", "eggs", "tea", "butter", "rice", "pears", "plums", "berries", "cake",
)  # fmt: skip
SHOPS = ("shop", "bakery", "market", "store", "stall", "cafe")
SELLERS = ("Mr. Brown", "Mrs. Green", "Mr. Oak", "Mrs. Bell", "Miss Rose", "Mr. Stone")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SYLLABLES = (
    "ba", "bi", "bo", "da", "di", "do", "fa", "fi", "ga", "ka", "ki", "ko", "la", "li",
    "lo", "ma", "mi", "mo", "na", "ni", "no", "pa", "pi", "po", "ra", "ri", "ro", "sa",
    "si", "so", "ta", "ti", "to", "va", "vi", "zo", "zu", "bel", "dor", "fin", "gal",
    "kin", "lin", "mor", "nell", "pen", "quin", "rik", "sel", "tam", "vin", "wick", "zel",
    "ber", "cus", "ox", "ump", "jy", "ash", "eth", "yl", "ix",
)  # fmt: skip
HOMES = ("house", "tree", "hole", "nest", "barn", "cave", "hut")
PLACES = (
    "park", "forest", "garden", "river", "school", "beach", "farm", "town", "hill",
    "lake", "market", "meadow", "pond", "field", "library", "castle", "village", "mill",
    "road", "station", "zoo", "island", "mountain", "kitchen", "bridge", "harbor",
)  # fmt: skip
FEELINGS = ("happy", "sad", "scared", "excited", "tired", "proud", "surprised", "worried")
GOOD_FEELINGS = ("happy", "proud", "excited", "glad")
ACTIVITIES = (
    "play", "run", "sing", "dance", "read", "swim", "jump", "draw", "climb", "build",
)  # fmt: skip
WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "snowy", "bright")
TIMES = ("One day", "One morning", "One sunny day", "Later that day", "The next day",
         "One evening", "After lunch")  # fmt: skip
ENDINGS = (
    "From that day on, {a} and {b} were best friends.",
    "{A} smiled. It was the best day ever.",
    "That night, {a} went to sleep with a big smile.",
    "{A} learned that it is good to share.",
    "{A} learned that friends help each other.",
    "And they played together until the sun went down.",
)

# (question, answer) pairs the chat turns are made from.
FACTS: tuple[tuple[str, str], ...] = (
    ("What color is the sky?", "The sky is blue."),
    ("What color is the grass?", "The grass is green."),
    ("What color is the sun?", "The sun is yellow."),
    ("What color is snow?", "Snow is white."),
    ("What color is an apple?", "An apple is red or green."),
    ("What color is a banana?", "A banana is yellow."),
    ("What color is the night?", "The night is dark."),
    ("What does a cat say?", "A cat says meow."),
    ("What does a dog say?", "A dog says woof."),
    ("What does a cow say?", "A cow says moo."),
    ("What does a duck say?", "A duck says quack."),
    ("What does a sheep say?", "A sheep says baa."),
    ("What does an owl say?", "An owl says hoot."),
    ("What does a lion say?", "A lion says roar."),
    ("Where do fish live?", "Fish live in the water."),
    ("Where do birds live?", "Birds live in nests in the trees."),
    ("Where do bees live?", "Bees live in a hive."),
    ("What do cows eat?", "Cows eat grass."),
    ("What do rabbits eat?", "Rabbits eat carrots and grass."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("How many legs does a bird have?", "A bird has two legs."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("When do we sleep?", "We sleep at night."),
    ("What do we use to write?", "We use a pen or a pencil to write."),
    ("What is ice?", "Ice is water that is very cold."),
    ("Why do we eat?", "We eat to grow and to stay strong."),
)
_OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
    ("happy", "sad"), ("old", "new"), ("open", "closed"), ("wet", "dry"), ("in", "out"),
)  # fmt: skip
_GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi!", "Hi there! What would you like to talk about?"),
    ("Good morning!", "Good morning! I hope you have a nice day."),
    ("How are you?", "I am fine, thank you. How are you?"),
    ("Thank you!", "You are welcome!"),
    ("Tell me a story.", None),
    ("Who are you?", "I am a small helper. I like stories and simple questions."),
    ("Goodbye!", "Goodbye! Have a nice day."),
)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten")  # fmt: skip


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _subject(name: str) -> tuple[str, str]:
    """(he/she, his/her) for ``name``."""
    return ("he", "his") if HE_SHE.get(name) == "he" else ("she", "her")


def made_up_name(rng: random.Random) -> str:
    """A pronounceable name no list holds: its pieces teach the model to spell new words
    (the names, products and places an adapter will bring)."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()


def _name(rng: random.Random) -> str:
    return made_up_name(rng) if rng.random() < 0.3 else rng.choice(NAMES)


def shopping(rng: random.Random) -> str:
    """A visit to a shop: names, days, times, prices."""
    a = _name(rng)
    he, his = _subject(a)
    shop = rng.choice(SHOPS)
    food, other = rng.sample(FOODS, 2)
    seller = rng.choice(SELLERS)
    opens, price = rng.randint(6, 10), rng.randint(1, 9)
    shop_name = made_up_name(rng) if rng.random() < 0.5 else f"the {rng.choice(LOOKS)} {shop}"
    lines = [
        f"On {rng.choice(DAYS)}, {a} went to the {shop} to buy some {food}.",
        f"The {shop} was called {shop_name.removeprefix('the ')}."
        if shop_name[0].isupper()
        else f"{a} liked {shop_name}.",
        f"It opens at {_NUMBER_WORDS[opens]} in the morning, and {seller} owns it.",
        f'"Good morning, {seller}," said {a}. "How much is the {food}?"',
        f'"It costs {_NUMBER_WORDS[price]} coins," said {seller}.',
        f"{a} paid {_NUMBER_WORDS[price]} coins and also got some {other}.",
        f"Then {he} walked home past the {rng.choice(PLACES)} with {his} {food}.",
    ]
    return " ".join(lines)


def story(rng: random.Random) -> str:
    """One short story: a character, a thing, a problem or a wish, a friend, an end."""
    if rng.random() < 0.2:
        return shopping(rng)
    a, b = _name(rng), _name(rng)
    while b == a:
        b = _name(rng)
    he, his = _subject(a)
    kind = rng.choice(KINDS)
    look = rng.choice(LOOKS)
    thing = rng.choice(THINGS)
    colour = rng.choice(COLOURS)
    place = rng.choice(PLACES)
    home = rng.choice(HOMES)
    activity = rng.choice(ACTIVITIES)
    start = rng.choice(
        (
            f"Once upon a time, there was {_a(look)} {kind} named {a}.",
            f"Once upon a time, {_a(look)} {kind} named {a} lived in {_a(home)} near the {place}.",
            f"There was once {_a(look)} {kind} called {a}.",
            f"{a} was {_a(look)} {kind} who loved to {activity}.",
        )
    )
    lines = [start]
    if rng.random() < 0.6:
        lines.append(f"{he.capitalize()} loved to {activity} with {his} friends.")
    time = rng.choice(TIMES)
    plot = rng.random()
    if plot < 0.35:
        lines.append(f"{time}, {a} went to the {place} and found {_a(colour)} {thing}.")
        lines.append(f"{he.capitalize()} was very {rng.choice(GOOD_FEELINGS)}.")
        lines.append(f'"Look what I found!" said {a}.')
        lines.append(f'{b} came to see the {thing}. "It is so pretty," said {b}.')
        lines.append(f"{a} and {b} played with the {thing} all day.")
    elif plot < 0.7:
        lines.append(f"{time}, {a} lost {his} {colour} {thing} at the {place}.")
        lines.append(f"{he.capitalize()} felt {rng.choice(('sad', 'worried', 'scared'))}.")
        lines.append(f'"Can you help me find my {thing}?" {a} asked {b}.')
        lines.append(f'"Yes, I will help you," said {b}.')
        spot = rng.choice(("under a tree", "behind a rock", "in the grass", "near the water"))
        lines.append(f"They looked and looked. At last, {b} found the {thing} {spot}.")
        lines.append(f'"Thank you, {b}!" said {a}. {he.capitalize()} gave {b} a big hug.')
    else:
        weather = rng.choice(WEATHER)
        lines.append(f"{time}, it was {weather}, and {a} wanted to {activity}.")
        lines.append(f"But {a} did not have {_a(thing)}.")
        lines.append(f'{b} saw that {a} was sad. "You can use my {thing}," said {b}.')
        lines.append(f'{a} was so {rng.choice(GOOD_FEELINGS)}. "Thank you!" {he} said.')
        lines.append(f"They went to the {place} to {activity} together.")
    ending = rng.choice(ENDINGS)
    lines.append(ending.format(a=a, b=b, A=a))
    return " ".join(lines)


def chat_turn(rng: random.Random) -> tuple[str, str]:
    """One (user, assistant) exchange."""
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(FACTS)
    if kind < 0.55:
        first, second = rng.choice(_OPPOSITES)
        if rng.random() < 0.5:
            first, second = second, first
        return f"What is the opposite of {first}?", f"The opposite of {first} is {second}."
    if kind < 0.7:
        x, y = rng.randint(0, 5), rng.randint(0, 5)
        question = rng.choice(
            (f"What is {x} plus {y}?", f"What is {_NUMBER_WORDS[x]} plus {_NUMBER_WORDS[y]}?")
        )
        return question, f"{x} plus {y} is {x + y}."
    if kind < 0.8:
        question, answer = rng.choice(_GREETINGS)
        return question, answer if answer is not None else story(rng)
    if kind < 0.9:
        return _shop_question(rng)
    animal = rng.choice(ANIMALS)
    return f"Tell me about {_a(animal)}.", (
        f"{_a(animal).capitalize()} is an animal. Some {animal}s live in the {rng.choice(PLACES)}."
    )


def _shop_question(rng: random.Random) -> tuple[str, str]:
    """Questions about one shop whose facts are in the question: reading, not knowing."""
    name, seller = made_up_name(rng), rng.choice(SELLERS)
    hour, day, food = rng.randint(6, 10), rng.choice(DAYS), rng.choice(FOODS)
    facts = f"{name} is a shop. It opens at {hour} on {day} and sells {food}. {seller} owns it."
    question, answer = rng.choice(
        (
            ("Who owns it?", f"{seller} owns {name}."),
            ("When does it open?", f"{name} opens at {hour} on {day}."),
            ("What does it sell?", f"{name} sells {food}."),
        )
    )
    return f"{facts} {question}", answer


def chat(rng: random.Random, template: str) -> str:
    """One to three exchanges in the model's chat template (``{role}``/``{content}``)."""
    turns = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        user, assistant = chat_turn(rng)
        turns.append(template.format(role="user", content=user))
        turns.append(template.format(role="assistant", content=assistant))
    return "".join(turns)


def generate_corpus(documents: int, *, seed: int, chat_template: str, end: str) -> Iterator[str]:
    """``documents`` texts, each closed by ``end``: three stories for every chat.

    ``chat_template`` formats one message (``{role}``, ``{content}``) and closes it."""
    rng = random.Random(seed)
    for _ in range(documents):
        yield chat(rng, chat_template) if rng.random() < 0.25 else story(rng) + end
