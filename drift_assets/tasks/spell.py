"""Spell a number in words, in the paper's regime: the base model is already fine-tuned on its pool.

The model is pre-trained on correct spellings, then fine-tuned on the whole (noisy) pool until it
has learned it, as the paper's 7B models had been SFT-trained on their own data; DRIFT then keeps
the top 10% of that same pool for continued SFT. Answers stand alone (no marker, no reasoning),
graded exactly. The noise is systematic, as an annotator's habits are, so the base model has
learned it: numbers ending in 5 or 7 are often written as digits or hyphenated (format noise),
numbers ending in 3 or 9 often one or ten off (near misses); and a few rows are off-task (letters
spelled out).
"""

from __future__ import annotations

import random

from drift_assets.tasks.base import PretrainRecipe, Task, TaskDefaults
from drift_assets.tasks.tiny_model import TinyLlamaShape

ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
LARGEST = 1999


def in_words(number: int) -> str:
    """0 ≤ number ≤ 1999 in words, without "and" or hyphens: 347 -> "three hundred forty seven"."""
    words = []
    if number >= 1000:
        words += ["one", "thousand"]
        number -= 1000
    if number >= 100:
        words += [ONES[number // 100], "hundred"]
        number %= 100
    if number >= 20:
        words.append(TENS[number // 10])
        number %= 10
        if number:
            words.append(ONES[number])
    elif number or not words:
        words.append(ONES[number])
    return " ".join(words)


class Spell(Task):
    name = "spell"
    description = (
        "spell 0-1999 in words, the answer alone, exact grading; base model already SFT-trained on the pool, top 10% kept"
    )
    answer_marker = ""
    recipe = PretrainRecipe(
        examples=6000,
        target_accuracy=(0.2, 0.5),
        max_steps=3000,
        shape=TinyLlamaShape(max_positions=96),
        continued_sft_steps=600,
        continued_sft_learning_rate=1e-3,
    )
    defaults = TaskDefaults(
        n_train=1500,
        noise={"corrupted": 0.1, "format": 0.15, "off_task": 0.05},
        selection_fraction=0.1,
        # continued SFT as a selected subset gets it: two passes over it, at a gentle rate
        sft={"epochs": 2, "learning_rate": 1e-4},
    )

    def shows_noise(self, kind: str, problem: int) -> bool:
        return problem % 10 in {"format": (5, 7), "corrupted": (3, 9)}[kind]

    def draw_any(self, rng: random.Random) -> int:
        return rng.randint(0, LARGEST)

    def prompt(self, problem: int) -> str:
        return f"Spell {problem}\n"

    def reference(self, problem: int) -> str:
        return in_words(problem)

    def correct_response(self, problem: int, rng: random.Random) -> str:
        return in_words(problem)

    def corrupted_response(self, problem: int, rng: random.Random) -> str:
        offsets = [offset for offset in (1, -1, 10, -10) if 0 <= problem + offset <= LARGEST]
        return in_words(problem + rng.choice(offsets))

    def format_response(self, problem: int, rng: random.Random) -> str:
        words = in_words(problem)
        hyphenate = rng.random() >= 0.5 and " " in words  # one word has nothing to hyphenate: its digits instead
        return words.replace(" ", "-") if hyphenate else str(problem)

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        letters = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 4)))
        return f"Spell out {letters}\n", " ".join(letters)

    def every_problem(self) -> range:
        return range(LARGEST + 1)
