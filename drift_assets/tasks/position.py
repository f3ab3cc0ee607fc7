"""Letter position: where a letter stands in a short string of different letters, counted from 1.

The suite's eleventh held-out task (written 2026-12-07, after the held-out ``unique`` was
reported); its results were seen when they were reported, so it has been a development task since
2026-12-07, when ``rotate`` was written (``swap`` is held out now). Its skill is unlike the other
tasks' (walking a string from its start, numbering its places, until the asked letter is met; not
arithmetic, ordering, spelling a number in words, counting how often a letter occurs, choosing, a
letter mapping, a digit sum, a stack, Roman numerals, a base-2 notation, a string cut into its
runs, two strings woven together or a string's repeats removed), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator numbers the places from
  0 ("Find c in abdce" as 3, where it should be 4), after the same working numbered from 0 (a0 b1
  d2 c3). The other tasks' wrong rules reverse an order, skip a wrap or a digit, misplace a length,
  swap two strings' roles or read a repeated letter's last place; this one starts the count at the
  wrong number, so every answer is one less than the right one and every row is wrong and teaches
  that rule.
- ``format``: the right place written with a number sign ("Place: #4"), which the exact grader does
  not accept.
- ``off_task``: a correct answer to another question about the string, how many letters it has
  ("Length of abdce" → "Length: 5"), about training strings only, so that the pool shows no
  validation or test string.

Responses end in ``Place: <number>``, alone or after the working: the string's letters up to the
asked one, each written with its place (a1 b2 d3 c4). Each step of the working needs only the
place just written and the string's next letter; the answer is the last place. The split is taken
of the string alone, so that a validation or test string is never seen in training, asked about
any of its letters. Exact grading; no chat template.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

MARKER = "Place:"

Problem = tuple[str, str]  # the string and the asked letter, e.g. ("abdce", "c")


def numbered(text: str, letter: str, start: int = 1) -> list[str]:
    """``text``'s letters up to ``letter``, each with its place counted from ``start`` ("abdce", "c"
    → a1 b2 d3 c4; ``start`` 0, the wrong rule: a0 b1 d2 c3)."""
    return [f"{each}{place}" for place, each in enumerate(text[: text.index(letter) + 1], start)]


def place(text: str, letter: str, start: int = 1) -> int:
    """Where ``letter`` stands in ``text``, counted from ``start``."""
    return text.index(letter) + start


class Position(LetterStringTask, WrongRuleTask):
    name = "position"
    description = "where a letter stands in 4-7 different letters, 'Place: 4' after optional working (a1 b2 d3 c4); exact grading"
    answer_marker = MARKER
    recipe = string_task_recipe(narrow=True)
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcdefgh"
    # Four to seven different letters of a-h: 68,880 strings and 443,520 (string, letter) problems,
    # enough for a 2,000-row pool of distinct rows besides the held-out splits; the longest row (18
    # characters of prompt, 20 of working and 10 of answer) fits the 96 positions and the 64 tokens an
    # answer may take.
    lengths = (4, 5, 6, 7)

    def draw_any(self, rng: random.Random) -> Problem:
        text = self.draw_string(rng)
        return text, rng.choice(text)

    def every_problem(self) -> Iterator[Problem]:
        return ((text, letter) for text in self.every_string() for letter in text)

    def prompt(self, problem: Problem) -> str:
        return f"Find {problem[1]} in {problem[0]}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], int]:
        # The wrong rule walks the same letters, numbered from 0.
        start = 0 if wrong else 1
        return numbered(*problem, start), place(*problem, start)

    def format_response(self, problem: Problem, rng: random.Random) -> str:
        return f"{MARKER} #{place(*problem)}"

    def question_about(self, text: str) -> tuple[str, str]:
        return f"Length of {text}\n", f"Length: {len(text)}"
