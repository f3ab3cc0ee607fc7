"""The original demo: small-number addition and subtraction, answered after ``Answer:``.

Three response styles (the bare answer, an equation, a worded sum), numeric grading, a tokenizer
without a chat template, and a model in the middle of its learning curve, so most validation
queries get mixed grades. Noise: near misses (a dropped carry or borrow, off by one or ten,
transposed digits) and off-task string chores. The generators live in
:mod:`drift_assets.tasks.demo_task`.
"""

from __future__ import annotations

import random

from drift_assets.tasks import demo_task
from drift_assets.tasks.base import PretrainRecipe, Task, TaskDefaults
from drift_assets.tasks.demo_task import Problem


class Arithmetic(Task):
    name = "arithmetic"
    description = "addition and subtraction of numbers 0-30, 'Answer: N' after optional reasoning; diffuse model"
    grader = "numeric"
    answer_marker = demo_task.ANSWER_MARKER
    chat_template = "plain"
    recipe = PretrainRecipe(examples=6000, target_accuracy=(0.3, 0.7), max_steps=3000)
    defaults = TaskDefaults(n_train=2400, noise={"corrupted": 0.25, "off_task": 0.08}, selection_fraction=0.5)

    def draw_any(self, rng: random.Random) -> Problem:
        return demo_task._draw_any(rng)

    def problem_key(self, problem: Problem) -> str:
        return problem.key

    def prompt(self, problem: Problem) -> str:
        return problem.prompt

    def reference(self, problem: Problem) -> str:
        return str(problem.answer)

    def reference_response(self, problem: Problem) -> str:
        return demo_task.format_response(problem, problem.answer, 0)

    def correct_response(self, problem: Problem, rng: random.Random) -> str:
        return demo_task.format_response(problem, problem.answer, rng.randrange(3))

    def corrupted_response(self, problem: Problem, rng: random.Random) -> str:
        return demo_task.format_response(problem, demo_task.plausible_wrong_answer(problem, rng), rng.randrange(3))

    def off_task_row(self, rng: random.Random) -> tuple[str, str]:
        return demo_task.off_task_example(rng)

    def problems_in(self, split: str) -> int:
        return demo_task.problems_in(split)
