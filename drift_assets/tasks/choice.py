"""Multiple choice, as MMLU-Pro's questions are: which of four numbers is the largest or the smallest.

The suite's second held-out task; its results were seen when the defaults of 2026-12-05 were
reported, so it has been a development task since 2026-12-06 (``swap`` is held out now). Answers end in ``The answer is (X)``, with or without the options ordered first;
exact grading of the letter; a chat template. Noise: near misses (the runner-up's letter),
format noise (the number instead of its letter, which the grader does not read as an answer) and
off-task rows (letter chores).
"""

from __future__ import annotations

import random
from dataclasses import replace

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, Task, worked_task_recipe

LETTERS = "ABCD"
MARKER = "The answer is"
CHORES = ("Reverse: {w}", "Repeat: {w}", "Last letter: {w}")

Problem = tuple[str, tuple[int, ...]]  # ("largest" | "smallest", four distinct numbers)


class Choice(Task):
    name = "choice"
    description = "which of four numbers is largest/smallest, '(A)'-'(D)' after an optional ordering; exact grading"
    answer_marker = MARKER
    chat_template = "roles"
    recipe = worked_task_recipe(128)
    defaults = replace(SMALL_POOL_DEFAULTS, noise={"corrupted": 0.2, "off_task": 0.05, "format": 0.05})
    working_below_half = False

    def draw_any(self, rng: random.Random) -> Problem:
        return rng.choice(("largest", "smallest")), tuple(rng.sample(range(10, 100), len(LETTERS)))

    def problem_key(self, problem: Problem) -> str:
        which, numbers = problem
        return f"choice:{which}:{','.join(map(str, numbers))}"

    def prompt(self, problem: Problem) -> str:
        which, numbers = problem
        return f"Which is {which}? " + " ".join(f"({letter}) {number}" for letter, number in zip(LETTERS, numbers))

    def _ordered(self, problem: Problem) -> list[int]:
        """The options best first."""
        which, numbers = problem
        return sorted(numbers, reverse=which == "largest")

    def _letter(self, problem: Problem, rank: int) -> str:
        return LETTERS[problem[1].index(self._ordered(problem)[rank])]

    def reference(self, problem: Problem) -> str:
        return f"({self._letter(problem, 0)})"

    def _respond(self, problem: Problem, answer: str, rng: random.Random) -> str:
        relation = " > " if problem[0] == "largest" else " < "
        return self.half_worked([relation.join(map(str, self._ordered(problem)))], answer, rng)  # the options in order

    def correct_response(self, problem: Problem, rng: random.Random) -> str:
        return self._respond(problem, self.reference(problem), rng)

    def corrupted_response(self, problem: Problem, rng: random.Random) -> str:
        return self._respond(problem, f"({self._letter(problem, 1)})", rng)

    def format_response(self, problem: Problem, rng: random.Random) -> str:
        return self._respond(problem, str(self._ordered(problem)[0]), rng)

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        chore = rng.randrange(len(CHORES))
        return CHORES[chore].format(w=word), (word[::-1], word, word[-1])[chore]
