"""Write a number from 1 to 4095 in binary, the most significant bit first.

The suite's seventh held-out task (written 2026-12-06, after the held-out ``roman`` was reported);
its results were seen when they were reported, so it has been a development task since
2026-12-06, when ``runs`` was written (``swap`` is held out now). Its skill is unlike the other
tasks' (a number halved again and again, its bits the halvings' remainders read from the last, a
base-2 place-value notation; not arithmetic, ordering, spelling a number in words, counting,
choosing, a letter mapping, a digit sum, a stack or Roman numerals), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator writes the bits least
  significant first (37, 100101, as 101001): where it shows its working it reads the remainders
  in the order the halvings give them. The rows are drawn from numbers whose binary is not a palindrome, so every
  one of them is wrong and teaches that rule.
- ``format``: the right bits with a ``0b`` prefix ("Binary: 0b100101"), as Python writes them,
  which the exact grader does not accept.
- ``off_task``: a correct answer to the question the other way round, the value of a binary
  numeral ("Value of 100101" → "Value: 37"), about training numbers only, so that the pool shows
  no test number's bits.

Responses end in ``Binary: <bits>``, alone or after the working: the number and its halvings
down to 1 (37 18 9 4 2 1), whose remainders are the bits. Each halving needs only a digit and the
one before it, so the tiny base model can learn to carry it out on numbers it has not seen; bits
written at once, or after the powers of two they stand for, ask it for the whole conversion in
one go, which a model this small does not learn within its steps. Exact grading; no chat template.
"""

from __future__ import annotations

import random

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, NumeralTask, WrongRuleTask, worked_task_recipe

MARKER = "Binary:"
# Twelve bits: enough numbers for a 2,000-row pool of distinct rows besides the held-out splits, and
# the longest response (4095's working, 63 characters) still fits the 64 tokens an answer may take.
LARGEST = 4095


def to_binary(number: int) -> str:
    """``number``'s bits, the most significant first, with no leading zero."""
    if not 1 <= number <= LARGEST:
        raise ValueError(f"no binary numeral for {number} in 1-{LARGEST}")
    bits = []
    while number:
        bits.append(str(number % 2))
        number //= 2
    return "".join(reversed(bits))


def halvings(number: int) -> list[int]:
    """``number`` and its halvings (rounded down) down to 1: their remainders are its bits, the last first."""
    chain = []
    while number:
        chain.append(number)
        number //= 2
    return chain


def is_palindrome(number: int) -> bool:
    """Whether the bits read the same reversed (then the reversed bits would be right)."""
    bits = to_binary(number)
    return bits == bits[::-1]


class Binary(NumeralTask, WrongRuleTask):
    name = "binary"
    description = "a number 1-4095 in binary, 'Binary: 100101' after optional working (37 18 9 4 2 1); exact grading"
    answer_marker = MARKER
    recipe = worked_task_recipe(96, max_steps=6000)
    defaults = SMALL_POOL_DEFAULTS
    largest = LARGEST

    def prompt(self, problem: int) -> str:
        return f"Binary for {problem}\n"

    def working(self, problem: int, wrong: bool) -> tuple[list[int], str]:
        # The wrong rule reads the remainders in the order the halvings give them: the same working.
        bits = to_binary(problem)
        return halvings(problem), bits[::-1] if wrong else bits

    def shows_noise(self, kind: str, problem: int) -> bool:
        return kind != "corrupted" or not is_palindrome(problem)  # reversed bits would be right there

    def format_response(self, problem: int, rng: random.Random) -> str:
        return f"{MARKER} 0b{to_binary(problem)}"
