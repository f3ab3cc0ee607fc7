"""Close the brackets a short sequence left open, innermost first (BIG-bench's Dyck-language completion).

The suite's fifth held-out task (written 2026-12-06, after the held-out ``digits`` was reported);
its results were seen when they were reported, so it has been a development task since
2026-12-06, when ``roman`` was written (``swap`` is held out now). Its skill is unlike the other
tasks' (keeping a stack: the brackets still open, closed last-opened first, not arithmetic,
ordering, spelling, counting, choosing, a letter mapping or a digit sum), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator closes the open brackets
  in the order they were opened (a queue, not a stack): "( {" is closed ") }" where it should be
  "} )". The rows are drawn from sequences whose open brackets that rule gets wrong, so every one
  of them teaches it.
- ``format``: the whole completed sequence instead of the missing part ("Close: ( { } )"),
  which the exact grader does not accept.
- ``off_task``: a correct answer to a neighbouring question, the nesting depth of a balanced
  sequence, asked and answered in its own words.

Responses end in ``Close: <closing brackets>``, after the still-open brackets listed or alone;
exact grading; no chat template.
"""

from __future__ import annotations

import random

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, WrongRuleTask, worked_task_recipe

MARKER = "Close:"
PAIRS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {closer: opener for opener, closer in PAIRS.items()}
MAX_DEPTH = 4

Problem = str  # the bracket sequence without spaces, e.g. "([]{(": a prefix of a balanced one, some still open


def still_open(sequence: str) -> str:
    """The brackets ``sequence`` leaves open, in the order they were opened."""
    stack = []
    for bracket in sequence:
        if bracket in PAIRS:
            stack.append(bracket)
        else:
            assert stack and stack[-1] == CLOSERS[bracket], sequence
            stack.pop()
    return "".join(stack)


def spaced(brackets: str) -> str:
    return " ".join(brackets)


def random_prefix(rng: random.Random, length: int, end_open: bool) -> str:
    """A random walk of ``length`` brackets nesting at most :data:`MAX_DEPTH` deep: a prefix of a
    balanced sequence, or (``end_open`` false) a balanced one where ``length`` is even."""
    sequence, stack = [], []
    for step in range(length):
        left = length - step
        must_close = len(stack) >= MAX_DEPTH or (not end_open and len(stack) >= left)
        if stack and (must_close or rng.random() < 0.5):
            sequence.append(PAIRS[stack.pop()])
        else:
            opener = rng.choice(tuple(PAIRS))
            stack.append(opener)
            sequence.append(opener)
    return "".join(sequence)


def depth(sequence: str) -> int:
    deepest = level = 0
    for bracket in sequence:
        level += 1 if bracket in PAIRS else -1
        deepest = max(deepest, level)
    return deepest


class Brackets(WrongRuleTask):
    name = "brackets"
    description = "close the brackets a 4-10 bracket sequence left open, 'Close: ) ]' after optional working; exact grading"
    answer_marker = MARKER
    recipe = worked_task_recipe(96)
    defaults = SMALL_POOL_DEFAULTS
    working_below_half = False

    def draw_any(self, rng: random.Random) -> Problem:
        while True:
            sequence = random_prefix(rng, rng.randint(4, 10), end_open=True)
            if still_open(sequence):
                return sequence

    def prompt(self, problem: Problem) -> str:
        return f"Complete {spaced(problem)}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # The brackets left open (every problem leaves one); the wrong rule closes them in their opening order.
        opened = still_open(problem)
        closers = [PAIRS[opener] for opener in (opened if wrong else reversed(opened))]
        return ["open", *opened], " ".join(closers)

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        # Closing in the opening order must be wrong: open brackets that are no palindrome.
        opened = still_open(problem)
        return kind != "corrupted" or opened != opened[::-1]

    def format_response(self, problem: Problem, rng: random.Random) -> str:
        return f"{MARKER} {spaced(problem)} {self.reference(problem)}"

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        sequence = random_prefix(rng, 2 * rng.randint(2, 5), end_open=False)
        return f"Depth of {spaced(sequence)}\n", f"Depth: {depth(sequence)}"
