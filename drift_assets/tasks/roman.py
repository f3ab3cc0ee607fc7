"""Write a number from 1 to 3999 in Roman numerals, with subtractive notation (IV, IX, XL, XC, CD, CM).

The suite's sixth held-out task (written 2026-12-06, after the held-out ``brackets`` was reported);
its results were seen when they were reported, so it has been a development task since
2026-12-06, when ``binary`` was written (``swap`` is held out now). Its skill is unlike the other
tasks' (a place-value notation rewritten digit by digit into letters whose value depends on the
place, where 4 and 9 are written as a letter taken away from the next one; not arithmetic,
ordering, spelling a number in words, counting, choosing, a letter mapping, a digit sum or a
stack), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator writes additive
  notation only, 4 as IIII and 9 as VIIII (XXXX, LXXXX, CCCC, DCCCC at the higher places),
  an old style that a clock face keeps and the task's grader does not accept. The rows are drawn
  from numbers with a 4 or a 9 below the thousands, so every one of them teaches that rule.
- ``format``: the right numeral with its places written apart ("Roman: MM CD XL VII"), which
  the exact grader does not accept; drawn from numbers with at least two nonzero places.
- ``off_task``: a correct answer to the question the other way round, the value of a numeral
  ("Value of XIV" → "Value: 14"), asked and answered in its own words, about training numbers
  only, so that the pool shows no test numeral.

Responses end in ``Roman: <numeral>``, after the numeral of each place joined by "+" or alone;
exact grading; no chat template.
"""

from __future__ import annotations

import random

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, NumeralTask, WrongRuleTask, worked_task_recipe

MARKER = "Roman:"
LARGEST = 3999  # MMMCMXCIX: no letter for 5000, so the thousands stop at three
# The letters for one, five and ten at each place, the units first.
PLACES = (("I", "V", "X"), ("X", "L", "C"), ("C", "D", "M"), ("M", "", ""))


def place_numeral(digit: int, place: int, subtractive: bool = True) -> str:
    """The numeral of ``digit`` at ``place`` (0 the units): subtractive 4 and 9, or additive."""
    one, five, ten = PLACES[place]
    if subtractive and digit == 4:
        return one + five
    if subtractive and digit == 9:
        return one + ten
    return (five if digit >= 5 else "") + one * (digit % 5)


def place_numerals(number: int, subtractive: bool = True) -> list[str]:
    """The numerals of ``number``'s nonzero places, the highest first."""
    digits = [int(digit) for digit in str(number)]
    return [place_numeral(digit, len(digits) - 1 - index, subtractive) for index, digit in enumerate(digits) if digit]


def to_roman(number: int, subtractive: bool = True) -> str:
    if not 1 <= number <= LARGEST:
        raise ValueError(f"no Roman numeral for {number} in 1-{LARGEST}")
    return "".join(place_numerals(number, subtractive))


def has_subtraction(number: int) -> bool:
    """Whether additive notation writes ``number`` otherwise: a 4 or a 9 below the thousands."""
    return to_roman(number) != to_roman(number, subtractive=False)


class Roman(NumeralTask, WrongRuleTask):
    name = "roman"
    description = "a number 1-3999 in Roman numerals (IV, XC), 'Roman: XIV' after optional working; exact grading"
    answer_marker = MARKER
    recipe = worked_task_recipe(96)
    defaults = SMALL_POOL_DEFAULTS
    working_below_half = False
    largest = LARGEST

    def prompt(self, problem: int) -> str:
        return f"Roman for {problem}\n"

    def working(self, problem: int, wrong: bool) -> tuple[list[str], str]:
        # One step, the places' numerals summed (M+CD+XC+IV); the wrong rule writes them additively.
        subtractive = not wrong
        return ["+".join(place_numerals(problem, subtractive))], to_roman(problem, subtractive)

    def shows_noise(self, kind: str, problem: int) -> bool:
        if kind == "corrupted":
            return has_subtraction(problem)  # elsewhere additive notation would be right
        if kind == "format":
            return len(place_numerals(problem)) >= 2  # a single place written apart is the numeral itself
        return True

    def format_response(self, problem: int, rng: random.Random) -> str:
        return f"{MARKER} {' '.join(place_numerals(problem))}"
