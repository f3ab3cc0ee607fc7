"""Add up the digits of a number, answered after ``Sum:``, with or without the running totals first.

The suite's fourth held-out task (written 2026-12-06, after the held-out ``shift`` was reported);
its results were seen when they were reported, so it has been a development task since
2026-12-06, when ``brackets`` was written (``swap`` is held out now). Its skill is unlike the other tasks' (a running total over a number's own digits), and so is its
pool, a mixed-skill one, as LESS's pools are, where part of the pool is correct but on another skill:

- ``corrupted``: a careless annotator skips one digit (a different one on each row), so the sum
  and the running totals fall short by that digit: near misses that follow no single rule.
- ``format``: the sum in Roman numerals ("Sum: XXI"), which the numeric grader cannot read.
- ``off_task``: a correct answer to a neighbouring question, the product of the digits, asked
  and answered in its own words; a sixth of the pool.

Numeric grading; no chat template.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, Task, worked_task_recipe

MARKER = "Sum:"
ROMAN = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))


def roman(number: int) -> str:
    """``number`` (0-36, a digit sum of up to four digits) in Roman numerals; "N" (nulla) for 0."""
    if number == 0:
        return "N"
    letters = []
    for value, letter in ROMAN:
        while number >= value:
            letters.append(letter)
            number -= value
    return "".join(letters)


def running_totals(digits: list[int]) -> str:
    totals, total = [], 0
    for digit in digits:
        total += digit
        totals.append(str(total))
    return ",".join(totals)


class Digits(Task):
    name = "digits"
    description = "the digit sum of a 2-4 digit number, 'Sum: N' after optional running totals; mixed-skill pool; numeric grading"
    grader = "numeric"
    answer_marker = MARKER
    recipe = worked_task_recipe(64)
    defaults = replace(SMALL_POOL_DEFAULTS, noise={"corrupted": 0.2, "format": 0.06, "off_task": 0.16})
    working_below_half = False

    def draw_any(self, rng: random.Random) -> int:
        return rng.randint(10, 9999)

    def prompt(self, problem: int) -> str:
        return f"Digit sum of {problem}\n"

    def reference(self, problem: int) -> str:
        return str(sum(int(digit) for digit in str(problem)))

    def correct_response(self, problem: int, rng: random.Random) -> str:
        digits = [int(digit) for digit in str(problem)]
        return self.half_worked([running_totals(digits)], sum(digits), rng)

    def shows_noise(self, kind: str, problem: int) -> bool:
        # A skipped digit must change the sum: a number with a nonzero digit to skip.
        return kind != "corrupted" or sum(int(digit) for digit in str(problem)) > 0

    def corrupted_response(self, problem: int, rng: random.Random) -> str:
        digits = [int(digit) for digit in str(problem)]
        skipped = rng.choice([index for index, digit in enumerate(digits) if digit > 0])
        kept = digits[:skipped] + digits[skipped + 1 :]
        return self.half_worked([running_totals(kept)], sum(kept), rng)

    def format_response(self, problem: int, rng: random.Random) -> str:
        return f"{MARKER} {roman(int(self.reference(problem)))}"  # bare: a numeral in the working would be graded

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        number = self.draw(rng)
        return f"Digit product of {number}\n", f"Product: {math.prod(int(digit) for digit in str(number))}"
