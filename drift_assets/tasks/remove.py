"""Removal: every occurrence of a named letter deleted from a short string.

The suite's fourteenth held-out task (written 2026-12-07, after the held-out ``reverse`` was
reported); its results were seen when they were reported, so it has been a development task since
2026-12-07, when ``swap`` was written (``swap`` is held out now). Its skill is unlike the other
tasks' (walking a string and leaving out each letter that is the named one, keeping the others in
their order; not arithmetic, ordering, spelling a number in words, counting, choosing, a letter
mapping, a digit sum, a stack, Roman numerals, a base-2 notation, a string cut into its runs, two
strings woven together, a string's repeats removed, a letter's place found, a string turned or
written backwards; the nearest are count's, which finds a named letter's occurrences but answers
how many there are, and unique's, which drops letters too, but every letter met again rather than
one named letter), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator removes only the FIRST
  occurrence of the letter ("Remove c from abcdcef" as abdcef, where it should be abdef), after the
  same kind of working (a b d c e f). The other tasks' wrong rules reverse an order, skip a wrap or
  a digit, misplace a length, swap two strings' roles, read a repeated letter's last place, count
  from 0, turn the wrong way or keep the first letter out of a reversal; this one stops at the
  first occurrence. The letter occurs at least twice in every string, so the wrong answer always
  keeps one and every row is wrong and teaches that rule.
- ``format``: the right letters separated by slashes ("Left: a/b/d/e/f"), which the exact grader
  does not accept (it ignores case, so upper-case letters would be graded right, and it strips
  punctuation only at the ends); drawn where two letters or more are left, so that a slash always
  shows.
- ``off_task``: a correct answer to another question about the string, its last letter ("Last
  letter of abcdcef" → "Last: f"), about training strings only, so that the pool shows no
  validation or test string.

Responses end in ``Left: <letters>``, alone or after the working: the letters kept, one at a time
(a b d e f). Each step of the working is the string's next letter other than the named one, read
from the prompt; the answer is the steps written together. The split is taken of the string alone,
so that a validation or test string is never seen in training, with any of its letters named.
Exact grading; no chat template.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, Task, string_task_recipe

MARKER = "Left:"
ALPHABET = "abcdef"
# Five to eight letters of a-f, repeats allowed, the named letter at least twice and not every one:
# 4,621,380 (string, letter) problems, enough for a 2,000-row pool of distinct rows besides the
# held-out splits. Each length is drawn uniformly, so that short and long strings are equally
# common; the longest row (a near miss of eight letters with the named one twice: 23 characters of
# prompt, 15 of working and 13 of answer) fits the 96 positions and the 64 tokens an answer may take.
LENGTHS = (5, 6, 7, 8)

Problem = tuple[str, str]  # the string and the named letter, e.g. ("abcdcef", "c")


def allowed(text: str, letter: str) -> bool:
    """Whether ``letter`` occurs at least twice in ``text`` (so that removing only its first
    occurrence is wrong) and some other letter is left."""
    return 2 <= text.count(letter) < len(text)


def kept_letters(text: str, letter: str, first_only: bool = False) -> list[str]:
    """``text``'s letters without ``letter`` ("abcdcef", "c" → a b d e f), or (``first_only``, the
    wrong rule) without its first occurrence only (a b d c e f)."""
    if first_only:
        cut = text.index(letter)
        return [*text[:cut], *text[cut + 1 :]]
    return [each for each in text if each != letter]


def removed(text: str, letter: str, first_only: bool = False) -> str:
    """``text`` with every ``letter`` deleted (``first_only``: its first occurrence only)."""
    return "".join(kept_letters(text, letter, first_only))


class Remove(Task):
    name = "remove"
    description = "delete a letter from 5-8 letters of a-f, 'Left: abdef' after optional working (a b d e f); exact"
    answer_marker = MARKER
    recipe = string_task_recipe(narrow=True)
    defaults = SMALL_POOL_DEFAULTS

    def draw_any(self, rng: random.Random) -> Problem:
        length, letter = rng.choice(LENGTHS), rng.choice(ALPHABET)
        while True:  # uniform over the strings of that length in which the letter may be named
            text = "".join(rng.choices(ALPHABET, k=length))
            if allowed(text, letter):
                return text, letter

    def problem_key(self, problem: Problem) -> str:
        # The string alone: its problems (one per letter it repeats) all fall in one split.
        return f"remove:{problem[0]}"

    def every_problem(self) -> Iterator[Problem]:
        return (
            (text, letter)
            for length in LENGTHS
            for text in map("".join, itertools.product(ALPHABET, repeat=length))
            for letter in ALPHABET
            if allowed(text, letter)
        )

    def prompt(self, problem: Problem) -> str:
        return f"Remove {problem[1]} from {problem[0]}\n"

    def reference(self, problem: Problem) -> str:
        return removed(*problem)

    def _respond(self, problem: Problem, rng: random.Random, first_only: bool = False) -> str:
        # The wrong rule walks the same string, leaving out the letter's first occurrence only.
        steps = kept_letters(*problem, first_only)
        return self.half_worked(steps, "".join(steps), rng)

    def correct_response(self, problem: Problem, rng: random.Random) -> str:
        return self._respond(problem, rng)

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        return kind != "format" or len(self.reference(problem)) >= 2  # a format row must show a slash

    def corrupted_response(self, problem: Problem, rng: random.Random) -> str:
        # Every problem will do: the letter occurs at least twice, so one occurrence stays.
        return self._respond(problem, rng, first_only=True)

    def format_response(self, problem: Problem, rng: random.Random) -> str:
        return f"{MARKER} {'/'.join(removed(*problem))}"

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        text, _ = self.draw(rng)  # a training string: the pool never shows a validation or test string
        return f"Last letter of {text}\n", f"Last: {text[-1]}"
