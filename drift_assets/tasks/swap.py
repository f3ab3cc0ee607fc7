"""Pair swap: the two letters of each neighbouring pair of a short string swapped.

Held out (written 2026-12-07, the suite's fifteenth held-out task, after the held-out ``remove``
was reported and before the next candidate is registered): no default is chosen by it, and it is
reported once, after the choice. Its skill is unlike the other seventeen tasks' (cutting a string
into pairs from its start, the first and second letters, the third and fourth, and so on, and
writing each pair's letters the other way round, a last odd letter left where it stands; not
arithmetic, ordering, spelling a number in words, counting, choosing, a letter mapping, a digit
sum, a stack, Roman numerals, a base-2 notation, a string cut into its runs, two strings woven
together, a string's repeats removed, a letter's place found, a string turned, written backwards
or with a named letter deleted; the nearest is reverse's, which reads the whole string from its
end where this reverses pieces of two letters each; sort's near misses (two neighbours out of
order) and arithmetic's (a digit swap) swap too, but as noise, once a row, not as the skill asked),
and so is its noise:

- ``corrupted``: a consistent wrong rule, the harmful kind: the annotator swaps the pairs, not the
  letters in them: each pair changes places with its neighbour, two pairs at a time, and keeps its
  letters in their order ("Swap each pair in abcdefg" as cdabefg, where it should be badcfeg), after
  the same kind of working (cd ab ef g). The other tasks' wrong rules reverse an order, skip a wrap
  or a digit, misplace a length, swap two strings' roles, read a repeated letter's last place,
  count from 0, turn the wrong way, keep the first letter out of a reversal or stop at a letter's
  first occurrence; this one moves whole pairs, the wrong unit. Every string has two pairs or more:
  the right answer starts with the second letter and the wrong one with the third, which differ in
  a string of different letters, so every row is wrong and teaches that rule.
- ``format``: the right pairs separated by vertical bars ("Swapped: ba|dc|fe|g"), which the exact
  grader does not accept (it ignores case, so upper-case letters would be graded right, and it
  strips punctuation only at the ends); every string has two pairs, so a bar always shows.
- ``off_task``: a correct answer to another question about the string, its letter latest in the
  alphabet ("Highest letter in cadbe" → "Highest: e"), about training strings only, so that the
  pool shows no validation or test string.

Responses end in ``Swapped: <letters>``, alone or after the working: each pair with its letters
swapped, and a last odd letter, space-separated (ba dc fe g). Each step of the working needs only
the next two letters of the prompt; the answer is the steps written together. The split is taken
of the string alone, so that a validation or test string is never seen in training. Exact grading;
no chat template.
"""

from __future__ import annotations

import random

from drift_assets.tasks.base import SMALL_POOL_DEFAULTS, LetterStringTask, WrongRuleTask, string_task_recipe

MARKER = "Swapped:"


def pairs_of(text: str) -> list[str]:
    """``text`` cut into pairs from its start, a last odd letter alone ("abcdefg" → ab cd ef g)."""
    return [text[start : start + 2] for start in range(0, len(text), 2)]


def swap_steps(text: str, whole_pairs: bool = False) -> list[str]:
    """Each pair of ``text`` with its letters swapped ("abcdefg" → ba dc fe g), or (``whole_pairs``,
    the wrong rule) the pairs themselves swapped two at a time, their letters kept in order (cd ab
    ef g): a pair without a neighbour to swap with, and a last odd letter, stay where they stand."""
    pairs = pairs_of(text)
    if not whole_pairs:
        return [pair[::-1] for pair in pairs]
    steps = []
    for start in range(0, len(pairs), 2):
        two = pairs[start : start + 2]
        steps += two[::-1] if len(two) == 2 and len(two[1]) == 2 else two
    return steps


class Swap(LetterStringTask, WrongRuleTask):
    name = "swap"
    description = "swap each pair of 4-8 different letters, 'Swapped: badcfe' after optional working (ba dc fe); exact; held out"
    answer_marker = MARKER
    held_out = True
    recipe = string_task_recipe(narrow=True)
    defaults = SMALL_POOL_DEFAULTS
    alphabet = "abcdefgh"
    # Four to eight different letters of a-h: 109,200 strings, enough for a 2,000-row pool of distinct
    # rows besides the held-out splits; four letters or more, so that every string has two pairs and
    # the wrong rule always moves a letter. The longest row (27 characters of prompt, 11 of working and
    # 19 of answer) fits the 96 positions and the 64 tokens an answer may take.
    lengths = (4, 5, 6, 7, 8)

    def prompt(self, problem: str) -> str:
        return f"Swap each pair in {problem}\n"

    def working(self, problem: str, wrong: bool) -> tuple[list[str], str]:
        # The wrong rule's working writes the pairs, two at a time in the other order, each unswapped; every
        # problem will do for a near miss: the right answer starts with the second letter, the wrong one the third.
        steps = swap_steps(problem, whole_pairs=wrong)
        return steps, "".join(steps)

    def format_response(self, problem: str, rng: random.Random) -> str:
        return f"{MARKER} {'|'.join(swap_steps(problem))}"  # the pairs apart, not the letters

    def question_about(self, text: str) -> tuple[str, str]:
        return f"Highest letter in {text}\n", f"Highest: {max(text)}"
