"""Reversal: a short string of different letters written backwards.

The suite's thirteenth held-out task (written 2026-12-07, after the held-out ``rotate`` was
reported); its results were seen when they were reported, so it has been a development task since
2026-12-07, when ``remove`` was written (``swap`` is held out now). Its skill is unlike the other
tasks' (reading a string from its end, letter by letter, back to its start; not arithmetic,
ordering, spelling a number in words, counting, choosing, a letter mapping, a digit sum, a stack,
Roman numerals, a base-2 notation, a string cut into its runs, two strings woven together, a
string's repeats removed, a letter's place found or a string turned; the nearest is brackets'
stack, which closes the open brackets in the reverse of their order, each mapped to its closer;
binary's near misses and arithmetic's and choice's off-task rows reverse too, but as noise, not as
the skill asked), and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator keeps the first letter
  where it stands and reverses the rest ("Reverse abcdefg" as agfedcb, where it should be gfedcba),
  after the same kind of working (a g f e d c b). The other tasks' wrong rules reverse an order,
  skip a wrap or a digit, misplace a length, swap two strings' roles, read a repeated letter's last
  place, count from 0 or turn the wrong way; this one leaves the first letter out of the reversal.
  The right answer starts with the last letter and the wrong one with the first, which differ in a
  string of different letters, so every row is wrong and teaches that rule.
- ``format``: the right letters separated by full stops ("Back: g.f.e.d.c.b.a"), which the exact
  grader does not accept (it ignores case, so upper-case letters would be graded right, and it
  strips punctuation only at the ends).
- ``off_task``: a correct answer to another question about the string, how many letters it has
  ("Letters in abcdef" → "Letters: 6"), about training strings only, so that the pool shows no
  validation or test string.

Responses end in ``Back: <letters>``, alone or after the working: the string's letters read from
its end, one at a time (g f e d c b a). Each step of the working needs only the letter just written
and the prompt: the letter that stands before it in the string; the answer is the steps written
together. The split is taken of the string alone, so that a validation or test string is never
seen in training. Exact grading; no chat template.
"""

from __future__ import annotations

from dataclasses import replace

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

MARKER = "Back:"


def read_back(text: str, keep_first: bool = False) -> list[str]:
    """``text``'s letters from its end to its start ("abcdefg" → g f e d c b a), or (``keep_first``,
    the wrong rule) its first letter and then the others from the end (a g f e d c b)."""
    if keep_first:
        return [text[0], *read_back(text[1:])]
    return [text[index] for index in range(len(text) - 1, -1, -1)]


class Reverse(LetterStringTask, WrongRuleTask):
    name = "reverse"
    description = "4-7 different letters written backwards, 'Back: gfedcba' after optional working (g f e d c b a); exact grading"
    answer_marker = MARKER
    # rotate's recipe at a quarter of its learning rate: at 2e-3 the calibration accuracy leapt past the
    # band between two evaluations; the slower rate spreads the rise over more of them.
    recipe = replace(string_task_recipe(narrow=True), learning_rate=5e-4)
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcdefgh"
    # Four to seven different letters of a-h: 68,880 strings, enough for a 2,000-row pool of distinct
    # rows besides the held-out splits; the longest row (16 characters of prompt, 15 of working and 13
    # of answer) fits the 96 positions and the 64 tokens an answer may take.
    lengths = (4, 5, 6, 7)
    format_separator = "."

    def prompt(self, problem: str) -> str:
        return f"Reverse {problem}\n"

    def working(self, problem: str, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule's working writes the first letter, then the others from the end; every problem
        # will do for a near miss: the first letter never stands first in the right answer.
        steps = read_back(problem, keep_first=wrong)
        return steps, "".join(steps)

    def question_about(self, text: str) -> tuple[str, str]:
        return f"Letters in {text}\n", f"Letters: {len(text)}"
