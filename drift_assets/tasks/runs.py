"""Run-length encoding: each run of one letter in a short string written as the letter and its length.

The suite's eighth held-out task (written 2026-12-06, after the held-out ``binary`` was reported);
its results were seen when they were reported, so it has been a development task since
2026-12-06, when ``interleave`` was written (``swap`` is held out now). Its skill is unlike
the other tasks' (cutting a string where its letter changes and measuring each piece; not
arithmetic, ordering, spelling a number in words, counting one letter over a whole string,
choosing, a letter mapping, a digit sum, a stack, Roman numerals or a base-2 notation), and so is
its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator writes each run's length
  before its letter ("aaabcc" as 3a1b2c, where it should be a3b1c2), after the same working. The
  answer then opens with a digit where the right one opens with a letter, so every one of them is
  wrong and teaches that rule.
- ``format``: the right runs with a space between them ("Runs: a3 b1 c2"), which the exact
  grader does not accept.
- ``off_task``: a correct answer to the question the other way round, a run-length code expanded
  ("Expand a3b1c2" → "Expand: aaabcc"), about training strings only, so that the pool shows no
  test string.

Responses end in ``Runs: <letter><length>…``, alone or after the working: the string written
again with a space where its letter changes (aaa b cc). Each step of the working needs only the
letters around it, a space where the next letter differs, and each piece's letter and length, at
most four, are read off its own piece. Exact grading; no chat template.
"""

from __future__ import annotations

import itertools
import random

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, WrongRuleTask, string_task_recipe

MARKER = "Runs:"
ALPHABET = "abcd"
# Three or four runs of one to four letters: some thirty thousand strings, enough for a 2,000-row
# pool of distinct rows besides the held-out splits (two runs would be 192 strings, a third of the
# draws repeating few problems); the longest response (sixteen letters, their working and the
# code, 35 characters) fits the 64 tokens an answer may take.
RUN_COUNTS = (3, 4)
LONGEST_RUN = 4

Problem = str  # the string, e.g. "aaabcc"


def runs_of(text: str) -> list[str]:
    """``text`` cut where its letter changes: "aaabcc" → ["aaa", "b", "cc"]."""
    pieces: list[str] = []
    for letter in text:
        if pieces and pieces[-1][0] == letter:
            pieces[-1] += letter
        else:
            pieces.append(letter)
    return pieces


def encode(text: str, length_first: bool = False) -> str:
    """The run-length code: each run's letter and its length ("a3b1c2"), or (``length_first``,
    the wrong rule) its length and its letter ("3a1b2c")."""
    return "".join(f"{len(run)}{run[0]}" if length_first else f"{run[0]}{len(run)}" for run in runs_of(text))


def every_string() -> tuple[str, ...]:
    """The whole problem space: three or four runs of one to four letters, no two neighbours alike."""
    strings = []
    for count in RUN_COUNTS:
        for letters in itertools.product(ALPHABET, repeat=count):
            if any(left == right for left, right in itertools.pairwise(letters)):
                continue
            for lengths in itertools.product(range(1, LONGEST_RUN + 1), repeat=count):
                strings.append("".join(letter * length for letter, length in zip(letters, lengths, strict=True)))
    return tuple(strings)


class Runs(WrongRuleTask):
    name = "runs"
    description = "a 3-16 letter string's run-length code, 'Runs: a3b1c2' after optional working (aaa b cc); exact grading"
    answer_marker = MARKER
    recipe = string_task_recipe()
    defaults = SMALL_POOL_DEFAULTS

    def draw_any(self, rng: random.Random) -> Problem:
        letters = [rng.choice(ALPHABET)]
        for _ in range(rng.choice(RUN_COUNTS) - 1):
            letters.append(rng.choice([letter for letter in ALPHABET if letter != letters[-1]]))
        return "".join(letter * rng.randint(1, LONGEST_RUN) for letter in letters)

    def every_problem(self) -> tuple[str, ...]:
        return every_string()

    def prompt(self, problem: Problem) -> str:
        return f"Runs of {problem}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule reads the same pieces, each length written before its letter.
        return runs_of(problem), encode(problem, length_first=wrong)

    def format_response(self, problem: Problem, rng: random.Random) -> str:
        return f"{MARKER} {' '.join(encode(run) for run in runs_of(problem))}"

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        text = self.draw(rng)  # a training string: the pool never shows a test string
        return f"Expand {encode(text)}\n", f"Expand: {text}"
