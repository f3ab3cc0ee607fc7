"""Sort letters: the answer alone, no marker, no reasoning, exact grading, a chat template.

The base model is pre-trained on words of 3-5 letters only, long enough to be sure of them, while
the pool and the queries hold words of 3-5 and of 8-10 letters. It sorts the short ones right
every time and the long ones wrong every time, so few validation queries get mixed grades (a
*sharp* model), and the pool holds the skill it lacks. Noise: near misses (two neighbours out of
order, or a letter dropped) and format noise (commas between the letters, or brackets), which the
exact grader rejects.
"""

from __future__ import annotations

import random
from dataclasses import replace

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, PretrainRecipe, Task
from drift_assets.tasks.tiny_model import TinyLlamaShape

ALPHABET = "abcdefghijklmnop"
SHORT, LONG = (3, 4, 5), (8, 9, 10)


class Sort(Task):
    name = "sort"
    description = (
        "sort the letters of a 3-5 or 8-10 letter word (pre-trained on short ones), exact grading, chat template; sharp model"
    )
    answer_marker = ""
    chat_template = "roles"
    recipe = PretrainRecipe(examples=6000, target_accuracy=(0.35, 0.6), max_steps=3000, shape=TinyLlamaShape(max_positions=64))
    defaults = replace(SMALL_POOL_DEFAULTS, noise={"corrupted": 0.2, "format": 0.1})

    def draw_any(self, rng: random.Random) -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.choice(SHORT + LONG)))

    def pretraining_problem(self, rng: random.Random) -> str:
        while True:  # short training words only: the long ones are the skill the base model lacks
            word = "".join(rng.choice(ALPHABET) for _ in range(rng.choice(SHORT)))
            if self.split_of(word) == "train":
                return word

    def prompt(self, problem: str) -> str:
        return f"Sort the letters: {problem}"

    def reference(self, problem: str) -> str:
        return "".join(sorted(problem))

    def correct_response(self, problem: str, rng: random.Random) -> str:
        return self.reference(problem)

    def corrupted_response(self, problem: str, rng: random.Random) -> str:
        answer = sorted(problem)
        while True:
            wrong = answer.copy()
            position = rng.randrange(len(wrong) - 1)
            if rng.random() < 0.6:
                wrong[position], wrong[position + 1] = wrong[position + 1], wrong[position]
            else:
                del wrong[position]
            if wrong != answer:
                return "".join(wrong)

    def format_response(self, problem: str, rng: random.Random) -> str:
        answer = self.reference(problem)
        return ",".join(answer) if rng.random() < 0.5 else f"[{answer}]"
