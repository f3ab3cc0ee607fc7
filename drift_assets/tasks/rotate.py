"""Rotation: a short string of different letters turned to the left by a few places, cyclically.

The suite's twelfth held-out task (written 2026-12-07, after the held-out ``position`` was
reported); its results were seen when they were reported, so it has been a development task since
2026-12-07, when ``reverse`` was written (``swap`` is held out now). Its skill is unlike the
other tasks' (moving a string's first letter to its end, again and again, as many times as asked;
not arithmetic, ordering, spelling a number in words, counting, choosing, a letter mapping, a digit
sum, a stack, Roman numerals, a base-2 notation, a string cut into its runs, two strings woven
together, a string's repeats removed or a letter's place found), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator turns the string to the
  RIGHT ("Rotate abcdef by 2" as efabcd, where it should be cdefab), after the same working with
  the last letter moved to the front at each step (fabcde efabcd). The other tasks' wrong rules
  reverse an order, skip a wrap or a digit, misplace a length, swap two strings' roles, read a
  repeated letter's last place or count from 0; this one turns the wrong way. The rows are drawn
  where the two directions differ (every turn but half a string of even length), so every row is
  wrong and teaches that rule.
- ``format``: the right letters separated by hyphens ("Turn: c-d-e-f-a-b"), which the exact grader
  does not accept.
- ``off_task``: a correct answer to another question about the string, its first letter ("First
  letter of abcdef" → "First: a"), about training strings only, so that the pool shows no
  validation or test string.

Responses end in ``Turn: <letters>``, alone or after the working: the string after each one-place
turn (bcdefa cdefab). Each step of the working needs only the string just written: its first letter
moved to its end; the answer is the last string. The split is taken of the string alone, so that a
validation or test string is never seen in training, turned by any number of places. Exact
grading; no chat template.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

# Five characters, not "Turned:": the longest working (six turns of seven letters) and its answer
# then take 62 characters, which with the closing EOS fit the 64 tokens an answer may take.
MARKER = "Turn:"

Problem = tuple[str, int]  # the string and how many places it turns, e.g. ("abcdef", 2)


def turns(text: str, places: int, right: bool = False) -> list[str]:
    """``text`` after each one-place turn to the left, its first letter moved to its end ("abcdef",
    2 → bcdefa cdefab), or (``right``, the wrong rule) to the right, its last letter moved to its
    front (fabcde efabcd)."""
    steps = []
    for _ in range(places):
        text = text[-1] + text[:-1] if right else text[1:] + text[0]
        steps.append(text)
    return steps


class Rotate(LetterStringTask, WrongRuleTask):
    name = "rotate"
    description = "4-7 different letters turned left by k, 'Turn: cdefab' after optional working (bcdefa cdefab); exact grading"
    answer_marker = MARKER
    recipe = string_task_recipe(narrow=True)
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcdefgh"
    # Four to seven different letters of a-h: 68,880 strings and 374,640 (string, places) problems,
    # enough for a 2,000-row pool of distinct rows besides the held-out splits; the longest row (20
    # characters of prompt, 47 of working and 15 of answer) fits the 96 positions.
    lengths = (4, 5, 6, 7)
    format_separator = "-"

    def draw_any(self, rng: random.Random) -> Problem:
        text = self.draw_string(rng)
        return text, rng.randint(1, len(text) - 1)

    def every_problem(self) -> Iterator[Problem]:
        return ((text, places) for text in self.every_string() for places in range(1, len(text)))

    def prompt(self, problem: Problem) -> str:
        return f"Rotate {problem[0]} by {problem[1]}\n"

    def working(self, problem: Problem, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule walks as many steps, each moving the last letter to the front.
        steps = turns(*problem, right=wrong)
        return steps, steps[-1]

    def shows_noise(self, kind: str, problem: Problem) -> bool:
        # A near miss must be wrong: a turn by half the string is the same both ways.
        return kind != "corrupted" or 2 * problem[1] != len(problem[0])

    def question_about(self, text: str) -> tuple[str, str]:
        return f"First letter of {text}\n", f"First: {text[0]}"
