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

import random
from collections.abc import Iterator

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

MARKER = "Left:"

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


class Remove(LetterStringTask, WrongRuleTask):
    name = "remove"
    description = "delete a letter from 5-8 letters of a-f, 'Left: abdef' after optional working (a b d e f); exact"
    answer_marker = MARKER
    recipe = string_task_recipe(narrow=True)
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcdef"
    # Five to eight letters of a-f, repeats allowed, the named letter at least twice and not every one:
    # 4,621,380 (string, letter) problems, enough for a 2,000-row pool of distinct rows besides the
    # held-out splits; the longest row (a near miss of eight letters with the named one twice: 23
    # characters of prompt, 15 of working and 13 of answer) fits the 96 positions and the 64 tokens an
    # answer may take.
    lengths = (5, 6, 7, 8)
    distinct = False
    format_separator = "/"

    def draw_any(self, rng: random.Random) -> Problem:
        length, letter = rng.choice(self.lengths), rng.choice(self.alphabet)
        while True:  # uniform over the strings of that length in which the letter may be named
            text = "".join(rng.choices(self.alphabet, k=length))
            if allowed(text, letter):
                return text, letter

    def every_problem(self) -> Iterator[Problem]:
        return ((text, letter) for text in self.every_string() for letter in self.alphabet if allowed(text, letter))

    def prompt(self, problem: Problem) -> str:
        return f"Remove {problem[1]} from {problem[0]}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule walks the same string, leaving out the letter's first occurrence only; every
        # problem will do for a near miss: the letter occurs at least twice, so one occurrence stays.
        steps = kept_letters(*problem, first_only=wrong)
        return steps, "".join(steps)

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        return kind != "format" or len(self.reference(problem)) >= 2  # a format row must show a slash

    def question_about(self, text: str) -> tuple[str, str]:
        return f"Last letter of {text}\n", f"Last: {text[-1]}"
