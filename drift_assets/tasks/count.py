"""Count one letter in a string, answered after ``####``, with or without listing the matches first.

The suite's first held-out task; its results were seen when the defaults of 2026-11-30 were
reported, so it has been a development task since (``swap`` is held out now). Numeric grading,
no chat template. Noise: near misses (the count one off), off-task rows (string chores), and format noise
(the count as a word, which the numeric grader cannot read).
"""

from __future__ import annotations

import random
from dataclasses import replace

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, Task, worked_task_recipe

ALPHABET = "abcd"
MARKER = "####"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
CHORES = ("Upper: {w}", "Double: {w}", "First letter: {w}")


class Count(Task):
    name = "count"
    description = "count a letter in 4-10 letters, '#### N' after an optional list of the matches, numeric grading"
    grader = "numeric"
    answer_marker = MARKER
    recipe = worked_task_recipe(64)
    defaults = replace(SMALL_POOL_DEFAULTS, noise={"corrupted": 0.2, "off_task": 0.06, "format": 0.06})
    working_below_half = False

    def draw_any(self, rng: random.Random) -> tuple[str, str]:
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(4, 10)))
        return rng.choice(ALPHABET), text

    def problem_key(self, problem: tuple[str, str]) -> str:
        letter, text = problem
        return f"count:{letter}:{text}"

    def prompt(self, problem: tuple[str, str]) -> str:
        letter, text = problem
        return f"Count {letter} in {text}\n"

    def reference(self, problem: tuple[str, str]) -> str:
        letter, text = problem
        return str(text.count(letter))

    def _respond(self, problem: tuple[str, str], answer: str, rng: random.Random) -> str:
        letter, text = problem
        return self.half_worked(letter * text.count(letter) or ["none"], answer, rng)  # the working: the matches

    def correct_response(self, problem: tuple[str, str], rng: random.Random) -> str:
        return self._respond(problem, self.reference(problem), rng)

    def corrupted_response(self, problem: tuple[str, str], rng: random.Random) -> str:
        count = problem[1].count(problem[0])
        wrong = count + 1 if count == 0 or rng.random() < 0.5 else count - 1
        return self._respond(problem, str(wrong), rng)

    def format_response(self, problem: tuple[str, str], rng: random.Random) -> str:
        return self._respond(problem, WORDS[problem[1].count(problem[0])], rng)

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 6)))
        chore = rng.randrange(len(CHORES))
        answer = (word.upper(), word + word, word[0])[chore]
        return CHORES[chore].format(w=word) + "\n", answer
