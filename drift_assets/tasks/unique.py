"""Unique letters: a short string's letters with every repeat removed, each kept where it first stands.

The suite's tenth held-out task (written 2026-12-06, after the held-out ``interleave`` was
reported); its results were seen when they were reported, so it has been a development task since
2026-12-07, when ``position`` was written (``swap`` is held out now). Its skill is unlike the
other tasks' (remembering which letters a string has shown so far and dropping a letter met again;
not arithmetic, ordering, spelling a number in words, counting one letter, choosing, a letter
mapping, a digit sum, a stack, Roman numerals, a base-2 notation, a string cut into its runs or two
strings woven together), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator keeps each letter where
  it LAST stands ("abacbd" as acbd, where it should be abcd), after the same working with a letter
  met again moved to the end of the letters kept so far. The other tasks' wrong rules reverse an
  order, skip a wrap or a digit, misplace a length or swap two strings' roles; this one reads the
  wrong one of a repeated letter's places, so the letters are right and their order is not. The
  rows are drawn from strings whose two orders differ, so every one of them is wrong and teaches
  that rule.
- ``format``: the right letters separated by commas ("Kept: a,b,c,d"), which the exact grader does
  not accept; drawn from strings of two different letters or more, so that a comma always shows.
- ``off_task``: a correct answer to another question about the string, how many different letters
  it has ("Distinct letters in abacbd" → "Distinct: 4"), about training strings only, so that the
  pool shows no validation or test string.

Responses end in ``Kept: <letters>``, alone or after the working: the letters kept so far, written
again after each letter of the string (a ab ab abc abc abcd). Each step of the working needs only
the group just written (at most five letters) and the string's next letter: the group again, with
that letter added at its end unless the group holds it; the answer is the last group. Exact
grading; no chat template.
"""

from __future__ import annotations

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

MARKER = "Kept:"

Problem = str  # the string, e.g. "abacbd"


def kept_after_each(text: str, last: bool = False) -> list[str]:
    """The letters kept after each letter of ``text``, each where it first stands ("abacbd" → a ab
    ab abc abc abcd) or (``last``, the wrong rule) moved to the end when met again (a ab ba bac acb
    acbd)."""
    groups, kept = [], ""
    for letter in text:
        if letter not in kept:
            kept += letter
        elif last:
            kept = kept.replace(letter, "") + letter
        groups.append(kept)
    return groups


def unique(text: str, last: bool = False) -> str:
    """``text``'s letters with every repeat removed, each at its first (``last``: its last) place."""
    return kept_after_each(text, last)[-1]


class Unique(LetterStringTask, WrongRuleTask):
    name = "unique"
    description = (
        "a 5-9 letter string's letters without repeats, 'Kept: abcd' after optional working (a ab ab abc); exact grading"
    )
    answer_marker = MARKER
    recipe = string_task_recipe(narrow=True)
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcde"
    # Five to nine letters: 2,440,625 strings, enough for a 2,000-row pool of distinct rows besides the
    # held-out splits; the longest row (17 characters of prompt, 43 of working and 13 of answer) fits
    # the 96 positions and the 64 tokens an answer may take.
    lengths = (5, 6, 7, 8, 9)
    distinct = False
    format_separator = ","

    def prompt(self, problem: Problem) -> str:
        return f"Unique {problem}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule walks the same letters, a letter met again moved to the end of the group.
        groups = kept_after_each(problem, last=wrong)
        return groups, groups[-1]

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        # A near miss must be wrong, and a format row must show a comma.
        if kind == "corrupted":
            return unique(problem) != unique(problem, last=True)
        return len(unique(problem)) > 1

    def question_about(self, text: str) -> tuple[str, str]:
        return f"Distinct letters in {text}\n", f"Distinct: {len(unique(text))}"
