"""Shift each letter of a short word along the alphabet (a Caesar shift), wrapping past z.

The suite's third held-out task (written 2026-12-06, before that day's candidate defaults ran);
its results were seen when they were reported, so it has been a development task since
(``swap`` is held out now). Its skill is unlike the other tasks'
(a letter-wise mapping with a wrap-around, not arithmetic, ordering, spelling, counting or
choosing), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind of noise: the annotator never wraps,
  and a letter shifted past z stays z ("y by 3" → "z" where it should be "b"). The rows are drawn
  from words that need a wrap, so every one of them teaches the same wrong rule.
- ``format``: the shifted word spelled with dots between the letters ("c.d.e"), which the exact
  grader does not accept.
- ``off_task``: the word's letters shifted the wrong way (a shift back, asked as a shift
  forward in another wording), about something else than what is asked.

Responses end in ``Result: <word>``, after the letter-by-letter working or alone; exact grading;
no chat template.
"""

from __future__ import annotations

import random
import string
from dataclasses import replace

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, WrongRuleTask, worked_task_recipe

LETTERS = string.ascii_lowercase
MARKER = "Result:"

Problem = tuple[str, int]  # (word, shift)


def shifted(word: str, shift: int, wrap: bool = True) -> str:
    if wrap:
        return "".join(LETTERS[(LETTERS.index(letter) + shift) % len(LETTERS)] for letter in word)
    return "".join(LETTERS[min(LETTERS.index(letter) + shift, len(LETTERS) - 1)] for letter in word)


def needs_wrap(problem: Problem) -> bool:
    word, shift = problem
    return any(LETTERS.index(letter) + shift >= len(LETTERS) for letter in word)


class Shift(WrongRuleTask):
    name = "shift"
    description = "shift a 3-5 letter word by 1-3 letters (Caesar), 'Result: <word>' after optional working; exact grading"
    answer_marker = MARKER
    recipe = worked_task_recipe(96)
    defaults = replace(SMALL_POOL_DEFAULTS, noise={"corrupted": 0.2, "format": 0.06, "off_task": 0.06})
    working_below_half = False

    def draw_any(self, rng: random.Random) -> Problem:
        return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5))), rng.randint(1, 3)

    def problem_key(self, problem: Problem) -> str:
        word, shift = problem
        return f"shift:{word}:{shift}"

    def prompt(self, problem: Problem) -> str:
        word, shift = problem
        return f"Shift {word} by {shift}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # Each letter and its shift (a>b); the wrong rule stops at z instead of wrapping to a.
        word, shift = problem
        wrap = not wrong
        return [f"{letter}>{shifted(letter, shift, wrap)}" for letter in word], shifted(word, shift, wrap)

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        return kind != "corrupted" or needs_wrap(problem)  # the wrong rule shows only where a letter passes z

    def format_response(self, problem: Problem, rng: random.Random) -> str:
        steps, answer = self.working(problem, wrong=False)
        return self.half_worked(steps, ".".join(answer), rng)

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        word, shift = self.draw(rng)
        return f"Move {word} back {shift}\n", f"{MARKER} {shifted(word, -shift)}"
