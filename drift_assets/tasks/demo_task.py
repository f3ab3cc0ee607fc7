"""The embedded demo task: small-number addition and subtraction with an exact answer checker.

Everything is generated deterministically from a seed:

- a *pre-training corpus* (all correct) that teaches the tiny base model the task only partly,
- a *training pool* for SFT that mixes correct examples with realistic noise: corrupted examples
  whose final answer is wrong the way careless annotators get it wrong (a dropped carry, an
  off-by-one, transposed digits) and off-task examples (string chores that teach nothing about
  arithmetic). Each row carries a hidden ``is_corrupted`` flag (true for corrupted *and*
  off-task rows) and a ``category`` used only to evaluate attribution, never to score,
- validation queries (with references) for on-policy rollouts, and held-out test queries.

Problems are split by a hash of the problem itself: validation (and calibration) queries, test
queries and the training data (pre-training corpus and pool) come from three disjoint sets of
problems, as a real evaluation set is disjoint from the training data. With one shared set, nearly
all the test problems appeared in the pool and test accuracy measured memorisation of the pool's
answers: any selection that kept half the pool lost coverage of test problems, and a corrupted
example could only hurt its own problem, which a few validation queries rarely look at. Held-out
problems make test accuracy measure what SFT teaches that transfers, which is what validation
influence estimates.

The generators draw each split from its own seeded stream so that, for instance, asking for more
test queries does not change the training pool.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

ANSWER_MARKER = "Answer:"
# Small operands keep the task learnable by a tiny model on a CPU, and leave enough problems for
# disjoint training, validation and test sets.
OPERAND_RANGE = (0, 30)
# Shares of the problem space, by a hash of the problem: [0, 0.1) validation and calibration,
# [0.1, 0.4) test, the rest training (pre-training corpus and SFT pool).
SPLIT_BOUNDS = {"validation": (0.0, 0.1), "calibration": (0.0, 0.1), "test": (0.1, 0.4), "train": (0.4, 1.0)}
OFF_TASK_WORDS = (
    "table",
    "river",
    "garden",
    "pencil",
    "window",
    "orange",
    "silver",
    "planet",
    "bridge",
    "castle",
    "forest",
    "rocket",
    "candle",
    "basket",
    "meadow",
    "mirror",
    "harbor",
    "violet",
    "summer",
    "thunder",
)


@dataclass(frozen=True)
class Problem:
    left: int
    right: int
    operator: str  # "+" or "-"

    @property
    def answer(self) -> int:
        return self.left + self.right if self.operator == "+" else self.left - self.right

    @property
    def prompt(self) -> str:
        return f"What is {self.left} {self.operator} {self.right}?\n"

    @property
    def key(self) -> str:
        """The text its split is the hash of."""
        return f"{self.left}{self.operator}{self.right}"


def _draw_any(rng: random.Random) -> Problem:
    operator = rng.choice("+-")
    left, right = rng.randint(*OPERAND_RANGE), rng.randint(*OPERAND_RANGE)
    if operator == "-" and right > left:
        left, right = right, left
    return Problem(left, right, operator)


def split_of_key(key: str) -> str:
    """The split of a problem whose canonical text is ``key``: where its hash falls in SPLIT_BOUNDS."""
    digest = hashlib.sha256(key.encode()).digest()
    position = int.from_bytes(digest[:8], "little") / 2**64
    for split in ("validation", "test", "train"):
        low, high = SPLIT_BOUNDS[split]
        if low <= position < high:
            return split
    raise AssertionError(position)


@cache
def problems_in(split: str) -> int:
    """How many distinct problems ``split`` holds."""
    if split not in SPLIT_BOUNDS:
        raise ValueError(f"unknown demo split {split!r} (known: {sorted(SPLIT_BOUNDS)})")
    low, high = OPERAND_RANGE
    every = {Problem(a, b, "+") for a in range(low, high + 1) for b in range(low, high + 1)}
    every |= {Problem(a, b, "-") for a in range(low, high + 1) for b in range(low, a + 1)}
    target = "validation" if split == "calibration" else split
    return sum(split_of_key(p.key) == target for p in every)


def format_response(problem: Problem, answer: int, style: int) -> str:
    """Three response styles of different lengths, all ending in the final number."""
    if style == 0:
        return f"{ANSWER_MARKER} {answer}"
    if style == 1:
        return f"{problem.left} {problem.operator} {problem.right} = {answer}. {ANSWER_MARKER} {answer}"
    return f"We compute {problem.left} {problem.operator} {problem.right} and get {answer}. {ANSWER_MARKER} {answer}"


def plausible_wrong_answer(problem: Problem, rng: random.Random) -> int:
    """A wrong answer of the kind people write: dropped carry/borrow, off by one or ten, digit swap."""
    correct = problem.answer
    candidates = []
    ones_left, ones_right = problem.left % 10, problem.right % 10
    if problem.operator == "+" and ones_left + ones_right >= 10:
        candidates.append(correct - 10)  # forgot the carry
    if problem.operator == "-" and ones_left < ones_right:
        candidates.append(correct + 10)  # forgot the borrow
    candidates += [correct + 1, correct - 1, correct + 10, correct - 10]
    if correct >= 10 and str(correct)[::-1] != str(correct):
        candidates.append(int(str(correct)[::-1]))  # transposed digits
    candidates = [value for value in candidates if value != correct and value >= 0]
    return rng.choice(candidates)


def off_task_example(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(OFF_TASK_WORDS)
    second = rng.choice(OFF_TASK_WORDS)
    kind = rng.randrange(4)
    if kind == 0:
        return f"Spell backwards: {word} {second}\n", f"{second[::-1]} {word[::-1]}"
    if kind == 1:
        return f"Write in capitals: {word} {second}\n", f"{word.upper()} {second.upper()}"
    if kind == 2:
        return f"Repeat twice: {word}\n", f"{word} {word}"
    return f"Join with a dash: {word} {second}\n", f"{word}-{second}"


# The generators are the arithmetic task's (drift_assets.tasks.arithmetic), under the signatures the
# tests and benchmarks call them with: the pool without its reference_answer column.
def pretraining_corpus(n_examples: int, seed: int) -> list[tuple[str, str]]:
    """Correct (prompt, response) pairs for training the base model."""
    return _arithmetic().pretraining_corpus(n_examples, seed)


def training_pool_rows(n_examples: int, corrupted_fraction: float, off_task_fraction: float, seed: int) -> list[dict]:
    """SFT pool rows: ``prompt``, ``response``, ``category`` (correct/corrupted/off_task), ``is_corrupted``."""
    noise = {"corrupted": corrupted_fraction, "off_task": off_task_fraction}
    rows = _arithmetic().training_pool_rows(n_examples, noise, seed)
    return [{key: value for key, value in row.items() if key != "reference_answer"} for row in rows]


def query_rows(n_queries: int, seed: int, split: str) -> list[dict]:
    """Distinct queries: ``query_id``, ``prompt``, ``reference`` (answer), ``reference_response``, ``grader``."""
    return _arithmetic().query_rows(n_queries, seed, split)


def _arithmetic():
    from drift_assets.tasks.arithmetic import Arithmetic

    return Arithmetic()
