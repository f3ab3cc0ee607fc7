"""Interleave two short strings: their letters taken in turn, the first string's first.

The suite's ninth held-out task (written 2026-12-06, after the held-out ``runs`` was reported);
its results were seen when they were reported, so it has been a development task since
2026-12-06, when ``unique`` was written (``swap`` is held out now). Its skill is unlike the
other tasks' (reading two strings in step, one position of each at a time, and merging them, the
longer one's rest written out once the shorter ends; not arithmetic, ordering, spelling a number
in words, counting, choosing, a letter mapping, a digit sum, a stack, Roman numerals, a base-2
notation or a string cut into its runs), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator takes the SECOND string's
  letter first at every position ("abc" and "dca" as dacbac, where it should be adbcca), after the
  same working with each pair written second-first. The other tasks' wrong rules misread one input
  (a reversed numeral, a length before its letter, a skipped digit); this one swaps the roles of
  two. The rows are drawn from pairs whose two orders give different strings, so every one of them
  is wrong and teaches that rule.
- ``format``: the right letters joined by hyphens ("Woven: a-d-b-c-c-a"), which the exact grader
  does not accept.
- ``off_task``: a correct answer to the question the other way round, a woven string split back
  into its two strings given their lengths ("Unweave adbcca into 3 and 3" → "Strands: abc dca"),
  about training pairs only, so that the pool shows no validation or test pair.

Responses end in ``Woven: <letters>``, alone or after the working: the pairs taken in turn written
apart (ad bc ca; a lone letter where one string has run out). Each step of the working needs only
the two letters at one position, one of each string. Exact grading; no chat template.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

MARKER = "Woven:"

Problem = tuple[str, str]  # the two strings, e.g. ("abc", "dca")


def pairs_of(first: str, second: str) -> list[str]:
    """The letters at each position, the first string's first: ("abc", "dca") → ["ad", "bc", "ca"];
    a position only the longer string reaches gives its letter alone."""
    return ["".join(letters) for letters in itertools.zip_longest(first, second, fillvalue="")]


def weave(first: str, second: str) -> str:
    """The letters taken in turn, starting from ``first``, the longer string's rest after."""
    return "".join(pairs_of(first, second))


class Interleave(LetterStringTask, WrongRuleTask):
    name = "interleave"
    description = "two 2-4 letter strings interleaved, 'Woven: adbcca' after optional working (ad bc ca); exact grading"
    answer_marker = MARKER
    recipe = string_task_recipe()
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcd"
    # Two to four letters a string: 336 strings, 112,896 ordered pairs, enough for a 2,000-row pool of
    # distinct rows besides the held-out splits; the longest row (two four-letter strings, 21 characters
    # of prompt and 28 of working and answer) fits the 96 positions and the 64 tokens an answer may take.
    lengths = (2, 3, 4)
    distinct = False
    format_separator = "-"

    def draw_any(self, rng: random.Random) -> Problem:
        return self.draw_string(rng), self.draw_string(rng)

    def problem_key(self, problem: Problem) -> str:
        return f"{self.name}:{problem[0]} {problem[1]}"  # the split is taken of the pair, not one string

    def every_problem(self) -> Iterator[Problem]:
        return itertools.product(self.every_string(), repeat=2)

    def prompt(self, problem: Problem) -> str:
        return f"Interleave {problem[0]} {problem[1]}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule walks the same positions, each pair written with the second string's letter first.
        first, second = problem[::-1] if wrong else problem
        return pairs_of(first, second), weave(first, second)

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        # Starting from the second string must be wrong: pairs whose two orders differ.
        return kind != "corrupted" or weave(*problem) != weave(*problem[::-1])

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        first, second = self.draw(rng)  # a training pair: the pool never shows a validation or test pair
        return f"Unweave {weave(first, second)} into {len(first)} and {len(second)}\n", f"Strands: {first} {second}"
