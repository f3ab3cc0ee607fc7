"""The embedded task suite: every task's generators, checked by parsers written here from the task's
statement (not by the task's own code), its noise kinds, splits and tokenizer."""

from __future__ import annotations

import itertools
import math
import re

import pytest

from drift_assets.core.data.sequences import encode_prompt, render_prompt
from drift_assets.core.grading.graders import grade_answer
from drift_assets.settings import SettingsError, parse_settings
from drift_assets.tasks import TASKS, get_task
from drift_assets.tasks.demo_task import split_of_key
from drift_assets.tasks.spell import in_words
from drift_assets.tasks.tiny_model import build_char_tokenizer

WORD_VALUES = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}


def words_value(text: str) -> int:
    """An independent reading of English number words (hundred and thousand multiply what precedes them)."""
    total = current = 0
    for word in text.split():
        if word == "hundred":
            current *= 100
        elif word == "thousand":
            total, current = total + current * 1000, 0
        else:
            current += WORD_VALUES[word]
    return total + current


def closing(sequence: str) -> str:
    """The brackets that close what ``sequence`` leaves open, the last opened first, space-separated."""
    pairs, stack = {"(": ")", "[": "]", "{": "}"}, []
    for bracket in sequence.split():
        if bracket in pairs:
            stack.append(pairs[bracket])
        else:
            assert stack.pop() == bracket, sequence
    return " ".join(reversed(stack))


# Greedy over the values, largest first: with the subtractive pairs the standard numeral, without
# them additive notation (4 as IIII, 9 as VIIII); not the task's digit-by-digit construction.
SUBTRACTIVE = ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"))
SUBTRACTIVE += ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
ADDITIVE = tuple((value, letters) for value, letters in SUBTRACTIVE if len(letters) == 1)


def numeral(number: int, table: tuple = SUBTRACTIVE) -> str:
    letters = []
    for value, symbol in table:
        while number >= value:
            letters.append(symbol)
            number -= value
    return "".join(letters)


def roman_value(text: str) -> int:
    """A numeral's value, a letter before a larger one taken away (reads either notation)."""
    letter_values = {letter: value for value, letter in ADDITIVE}
    values = [letter_values[letter] for letter in text]
    return sum(-value if later > value else value for value, later in zip(values, values[1:] + [0], strict=True))


def run_length_code(text: str, length_first: bool = False) -> str:
    """Each run of one letter as the letter and its length (or, ``length_first``, the other way round)."""
    groups = [(letter, len(list(run))) for letter, run in itertools.groupby(text)]
    return "".join(f"{length}{letter}" if length_first else f"{letter}{length}" for letter, length in groups)


def woven(first: str, second: str) -> str:
    """The letters of two strings taken in turn, the first's first, the longer one's rest after."""
    return "".join(letter for pair in itertools.zip_longest(first, second) for letter in pair if letter is not None)


def kept(text: str, last: bool = False) -> str:
    """Each letter once, where it first stands (or, ``last``, where it last stands)."""
    return "".join(dict.fromkeys(text[::-1]))[::-1] if last else "".join(dict.fromkeys(text))


def place_of(text: str, letter: str) -> int:
    """Where ``letter`` first stands in ``text``, counted from 1."""
    return text.index(letter) + 1


def turned_left(text: str, places: int) -> str:
    """``text`` rotated ``places`` places to the left, by slicing."""
    return text[places:] + text[:places]


def turned_right(text: str, places: int) -> str:
    """``text`` rotated ``places`` places to the right, by slicing."""
    return text[-places:] + text[:-places]


def backwards(text: str) -> str:
    """``text`` written backwards, by slicing."""
    return text[::-1]


def backwards_but_first(text: str) -> str:
    """``text``'s first letter, then the others backwards, by slicing."""
    return text[0] + text[:0:-1]


def without(text: str, letter: str) -> str:
    """``text`` with every ``letter`` deleted, by str.replace."""
    return text.replace(letter, "")


def without_first(text: str, letter: str) -> str:
    """``text`` with only the first ``letter`` deleted, by str.replace."""
    return text.replace(letter, "", 1)


def pairs_swapped(text: str) -> str:
    """``text`` with the two letters of each pair swapped, by slicing: each letter in an even place
    written after the one that follows it."""
    return "".join(second + first for first, second in itertools.zip_longest(text[::2], text[1::2], fillvalue=""))


def blocks_swapped(text: str) -> str:
    """``text`` cut into blocks of four letters from its start, each block's two halves swapped and a
    shorter last block kept, by slicing."""
    blocks = [text[start : start + 4] for start in range(0, len(text), 4)]
    return "".join(block[2:] + block[:2] if len(block) == 4 else block for block in blocks)


def true_answer(task: str, prompt: str) -> str:
    """What a correct response says, computed from the prompt alone."""
    if task == "swap":
        return pairs_swapped(re.fullmatch(r"Swap each pair in ([a-h]+)\n", prompt).group(1))
    if task == "remove":
        letter, text = re.fullmatch(r"Remove ([a-f]) from ([a-f]+)\n", prompt).groups()
        return without(text, letter)
    if task == "reverse":
        return backwards(re.fullmatch(r"Reverse ([a-h]+)\n", prompt).group(1))
    if task == "rotate":
        text, places = re.fullmatch(r"Rotate ([a-h]+) by (\d)\n", prompt).groups()
        return turned_left(text, int(places))
    if task == "position":
        letter, text = re.fullmatch(r"Find ([a-h]) in ([a-h]+)\n", prompt).groups()
        return str(place_of(text, letter))
    if task == "unique":
        return kept(re.fullmatch(r"Unique ([a-e]+)\n", prompt).group(1))
    if task == "interleave":
        return woven(*re.fullmatch(r"Interleave ([a-d]+) ([a-d]+)\n", prompt).groups())
    if task == "runs":
        return run_length_code(re.fullmatch(r"Runs of ([a-d]+)\n", prompt).group(1))
    if task == "binary":
        return format(int(re.fullmatch(r"Binary for (\d+)\n", prompt).group(1)), "b")
    if task == "roman":
        return numeral(int(re.fullmatch(r"Roman for (\d+)\n", prompt).group(1)))
    if task == "brackets":
        return closing(re.fullmatch(r"Complete ([()\[\]{}](?: [()\[\]{}])*)\n", prompt).group(1))
    if task == "arithmetic":
        left, operator, right = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?\n", prompt).groups()
        return str(int(left) + int(right) if operator == "+" else int(left) - int(right))
    if task == "sort":
        return "".join(sorted(re.fullmatch(r"Sort the letters: ([a-p]+)", prompt).group(1)))
    if task == "spell":
        return re.fullmatch(r"Spell (\d+)\n", prompt).group(1)
    if task == "count":
        letter, text = re.fullmatch(r"Count ([a-d]) in ([a-d]+)\n", prompt).groups()
        return str(text.count(letter))
    if task == "digits":
        return str(sum(int(digit) for digit in re.fullmatch(r"Digit sum of (\d+)\n", prompt).group(1)))
    if task == "shift":  # each letter moved along the alphabet, wrapping past z
        word, shift = re.fullmatch(r"Shift ([a-z]+) by ([1-3])\n", prompt).groups()
        return "".join(chr((ord(letter) - ord("a") + int(shift)) % 26 + ord("a")) for letter in word)
    which, *options = re.fullmatch(
        r"Which is (largest|smallest)\? \(A\) (\d+) \(B\) (\d+) \(C\) (\d+) \(D\) (\d+)", prompt
    ).groups()
    values = [int(option) for option in options]
    best = max(values) if which == "largest" else min(values)
    return f"({'ABCD'[values.index(best)]})"


# Where each task's answer stands at the end of a response (its group: the answer).
STATED = {
    "arithmetic": r"Answer: (-?\d+)$",
    "count": r"#### (\d+)$",
    "brackets": r"Close: ([)\]}](?: [)\]}])*)$",
    "roman": r"Roman: ([IVXLCDM]+)$",
    "binary": r"Binary: ([01]+)$",
    "runs": r"Runs: ([a-z\d]+)$",
    "interleave": r"Woven: ([a-z]+)$",
    "unique": r"Kept: ([a-z]+)$",
    "position": r"Place: (\d+)$",
    "rotate": r"Turn: ([a-h]+)$",
    "reverse": r"Back: ([a-h]+)$",
    "remove": r"Left: ([a-f]+)$",
    "swap": r"Swapped: ([a-h]+)$",
    "digits": r"Sum: (\d+)$",
    "shift": r"Result: ([a-z]+)$",
    "choice": r"The answer is (\([A-D]\))$",
}


def stated_answer(task: str, response: str) -> str | None:
    """The answer a response states, read as a user of the task would."""
    if task == "sort":
        return response if re.fullmatch(r"[a-p]+", response) else None
    if task == "spell":
        return str(words_value(response)) if re.fullmatch(r"[a-z]+( [a-z]+)*", response) else None
    found = re.search(STATED[task], response)
    return found and found.group(1)


def test_one_task_is_held_out_and_the_settings_take_only_registered_tasks(tmp_path):
    assert [name for name, task in TASKS.items() if task.held_out] == ["swap"]  # exactly one, fixed before any result
    with pytest.raises(ValueError, match="demo.task: unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(SettingsError, match="demo.task"):
        parse_settings({"demo": {"task": "nope"}}, "settings.yaml", tmp_path)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_row_is_what_its_category_says(name):
    task = get_task(name)
    noise = task.defaults.noise
    pool = task.training_pool_rows(1000, noise, seed=0)
    categories = [row["category"] for row in pool]
    assert len(pool) == 1000 and len({(row["prompt"], row["response"]) for row in pool}) == 1000
    for kind, share in noise.items():
        assert categories.count(kind) == round(1000 * share), kind
    assert set(categories) == {"correct", *noise}
    options = task.grading_options()
    for row in pool:
        assert row["is_corrupted"] == (row["category"] != "correct")
        if row["category"] == "off_task":
            continue
        truth, stated = true_answer(name, row["prompt"]), stated_answer(name, row["response"])
        graded = grade_answer(row["response"], in_words(int(truth)) if name == "spell" else truth, task.grader, options).correct
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":  # a near miss: the task's format, another answer
            assert stated is not None and stated != truth and not graded, row
        else:  # format noise: the right content in a form the grader rejects
            assert stated is None and not graded, row


@pytest.mark.parametrize("name", list(TASKS))
def test_queries_splits_and_determinism(name):
    task = get_task(name)
    validation, test = task.query_rows(48, 0, "validation"), task.query_rows(100, 0, "test")
    assert task.query_rows(48, 0, "validation") == validation and task.query_rows(48, 1, "validation") != validation
    assert task.training_pool_rows(300, task.defaults.noise, 0) == task.training_pool_rows(300, task.defaults.noise, 0)
    pool_prompts = {row["prompt"] for row in task.training_pool_rows(task.defaults.n_train, task.defaults.noise, 0)}
    corpus_prompts = {prompt for prompt, _ in task.pretraining_corpus(2000, 0)}
    validation_prompts, test_prompts = {q["prompt"] for q in validation}, {q["prompt"] for q in test}
    assert len(validation_prompts) == 48 and len(test_prompts) == 100
    assert not validation_prompts & test_prompts
    assert not (validation_prompts | test_prompts) & (pool_prompts | corpus_prompts)  # disjoint problems
    for query in validation + test:
        truth = true_answer(name, query["prompt"])
        assert query["reference"] == (in_words(int(truth)) if name == "spell" else truth)
        assert grade_answer(query["reference_response"], query["reference"], query["grader"], task.grading_options()).correct


def test_the_sharp_tasks_base_model_never_sees_the_long_words():
    task = get_task("sort")
    corpus = task.pretraining_corpus(3000, 0)
    assert {len(true_answer("sort", prompt)) for prompt, _ in corpus} == {3, 4, 5}
    lengths = {len(q["reference"]) for q in task.query_rows(200, 0, "test")}
    assert lengths == {3, 4, 5, 8, 9, 10}


def test_spelling_matches_an_independent_reading():
    for number in range(0, 2000, 7):
        assert words_value(in_words(number)) == number
    assert in_words(347) == "three hundred forty seven" and in_words(1000) == "one thousand" and in_words(0) == "zero"


def test_a_chat_template_tokenizer_renders_roles_as_single_tokens_and_keeps_the_characters_ids():
    plain, chat = build_char_tokenizer(), build_char_tokenizer(chat_template="roles")
    assert plain.chat_template is None
    assert chat.get_vocab() | plain.get_vocab() == chat.get_vocab()  # the characters keep their ids
    rendered = render_prompt(chat, "Sort the letters: cab")
    assert rendered == "<s><|user|>Sort the letters: cab<|assistant|>"
    ids = encode_prompt(chat, rendered)
    assert ids[:2] == [chat.bos_token_id, chat.convert_tokens_to_ids("<|user|>")]
    assert ids[-1] == chat.convert_tokens_to_ids("<|assistant|>")
    assert len(ids) == 2 + len("Sort the letters: cab") + 1
    assert chat.decode(ids, skip_special_tokens=True) == "Sort the letters: cab"


def test_demo_settings_take_the_tasks_defaults_and_name_bad_combinations():
    settings = parse_settings({"demo": {"task": "spell"}}, "s.yaml", ".")
    assert settings.demo.pool_size() == 1500 and settings.demo.noise() == get_task("spell").defaults.noise
    assert settings.demo.recipe().continued_sft_steps == 600
    settings = parse_settings({"demo": {"task": "count", "format_fraction": 0.0, "max_pretrain_steps": 500}}, "s.yaml", ".")
    assert "format" not in settings.demo.noise() and settings.demo.recipe().max_steps == 500
    narrow = parse_settings({"demo": {"task": "count", "hidden_size": 64}}, "s.yaml", ".").demo.recipe().shape
    task_shape = get_task("count").recipe.shape
    assert (narrow.hidden_size, narrow.num_heads, narrow.intermediate_size) == (64, 1, 192)
    assert narrow.max_positions == task_shape.max_positions == 64 and task_shape.hidden_size == 128  # the rest is the task's
    with pytest.raises(SettingsError, match=r"s.yaml: demo.hidden_size: .*multiple of 64"):
        parse_settings({"demo": {"hidden_size": 96}}, "s.yaml", ".")
    with pytest.raises(SettingsError, match="s.yaml: demo: the sort task has no off_task noise"):
        parse_settings({"demo": {"task": "sort", "off_task_fraction": 0.1}}, "s.yaml", ".")
    with pytest.raises(SettingsError, match="grading.answer_marker must be '####' for demo.task count"):
        parse_settings({"demo": {"enabled": True, "task": "count"}}, "s.yaml", ".")
    with pytest.raises(SettingsError, match="add up to less than 1"):
        parse_settings({"demo": {"corrupted_fraction": 0.6, "off_task_fraction": 0.4}}, "s.yaml", ".")


def test_a_pool_larger_than_the_tasks_space_is_a_clear_error():
    task = get_task("spell")
    with pytest.raises(
        ValueError, match=r"the spell task ran out of distinct correct rows after \d+ of 2000: lower demo\.n_train"
    ):
        task.training_pool_rows(2000, task.defaults.noise, 0)


def test_the_shift_tasks_near_misses_all_follow_one_wrong_rule():
    """Harmful noise: every corrupted row needs a wrap past z and writes z instead (no wrap)."""
    task = get_task("shift")
    pool = task.training_pool_rows(600, task.defaults.noise, seed=0)
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert corrupted
    for row in corrupted:
        word, shift = re.fullmatch(r"Shift ([a-z]+) by ([1-3])\n", row["prompt"]).groups()
        no_wrap = "".join(chr(min(ord(letter) + int(shift), ord("z"))) for letter in word)
        assert no_wrap != true_answer("shift", row["prompt"]) and stated_answer("shift", row["response"]) == no_wrap


def test_the_digits_tasks_near_misses_each_skip_one_digit_and_its_off_task_rows_are_products():
    """Noise that follows no single rule: each near miss is the sum of the digits less one of them
    (whose running totals agree with it), and the off-task rows answer the digit product right."""
    task = get_task("digits")
    pool = task.training_pool_rows(600, task.defaults.noise, seed=0)
    skipped_positions = set()
    for row in pool:
        if row["category"] == "corrupted":
            number = re.fullmatch(r"Digit sum of (\d+)\n", row["prompt"]).group(1)
            digits = [int(digit) for digit in number]
            stated = int(stated_answer("digits", row["response"]))
            short = [index for index, digit in enumerate(digits) if digit > 0 and sum(digits) - digit == stated]
            assert short, row
            skipped_positions.update(short)
            if "," in row["response"]:
                assert int(row["response"].split(".")[0].split(",")[-1]) == stated
        elif row["category"] == "off_task":
            number = re.fullmatch(r"Digit product of (\d+)\n", row["prompt"]).group(1)
            product = 1
            for digit in number:
                product *= int(digit)
            assert row["response"] == f"Product: {product}"
        elif row["category"] == "format":
            assert re.fullmatch(r"Sum: [NIVX]+", row["response"]), row
    assert len(skipped_positions) >= 3  # the skipped digit moves: no one wrong rule


def test_the_brackets_tasks_near_misses_all_close_in_the_opening_order():
    """Harmful noise, one wrong rule: every near miss closes the open brackets first-opened first
    (a queue, not a stack), which the rows are drawn to get wrong; the format rows repeat the whole
    completed sequence; the off-task rows state a balanced sequence's nesting depth right."""
    task = get_task("brackets")
    pool = task.training_pool_rows(600, task.defaults.noise, seed=0)
    pairs = {"(": ")", "[": "]", "{": "}"}
    kinds = {row["category"] for row in pool}
    assert kinds == {"correct", "corrupted", "format", "off_task"}
    for row in pool:
        if row["category"] == "corrupted":
            in_opening_order = " ".join(reversed(true_answer("brackets", row["prompt"]).split()))
            assert in_opening_order != true_answer("brackets", row["prompt"]), row  # the queue's order is wrong here
            assert stated_answer("brackets", row["response"]) == in_opening_order, row
            if row["response"].startswith("open "):  # the listed open brackets are right; only their closing order is not
                listed = row["response"].split(".")[0].removeprefix("open ")
                assert " ".join(pairs[bracket] for bracket in listed.split()) == in_opening_order, row
        elif row["category"] == "format":
            sequence = re.fullmatch(r"Complete (.+)\n", row["prompt"]).group(1)
            assert row["response"] == f"Close: {sequence} {true_answer('brackets', row['prompt'])}", row
            assert closing(row["response"].removeprefix("Close: ")) == ""  # the completed sequence balances
        elif row["category"] == "off_task":
            sequence = re.fullmatch(r"Depth of ([()\[\]{}](?: [()\[\]{}])*)\n", row["prompt"]).group(1)
            assert closing(sequence) == ""  # balanced
            level = deepest = 0
            for bracket in sequence.split():
                level += 1 if bracket in pairs else -1
                deepest = max(deepest, level)
            assert row["response"] == f"Depth: {deepest}", row


def test_roman_numerals_match_a_hand_written_list_and_read_back():
    """The tests' own numerals against numerals written by hand, and every one in 1-3999 read back."""
    by_hand = {1: "I", 4: "IV", 9: "IX", 14: "XIV", 40: "XL", 49: "XLIX", 90: "XC", 99: "XCIX", 400: "CD"}
    by_hand |= {444: "CDXLIV", 900: "CM", 1666: "MDCLXVI", 1994: "MCMXCIV", 2024: "MMXXIV", 3999: "MMMCMXCIX"}
    for number, text in by_hand.items():
        assert numeral(number) == text and roman_value(text) == number
    assert numeral(4, ADDITIVE) == "IIII" and numeral(1994, ADDITIVE) == "MDCCCCLXXXXIIII"
    canonical = re.compile(r"M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})")  # the standard form, one way
    for number in range(1, 4000):
        assert canonical.fullmatch(numeral(number)) and roman_value(numeral(number)) == number
        assert roman_value(numeral(number, ADDITIVE)) == number


def pool_and_held_numbers(name: str, prompt_pattern: str):
    """The task, its seed-0 pool (with every kind of noise) and the numbers its validation and test
    queries ask about (each once: the splits are disjoint)."""
    task = get_task(name)
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    held = {query["prompt"] for split in ("validation", "test") for query in task.query_rows(task.problems_in(split), 0, split)}
    held_numbers = {int(re.fullmatch(prompt_pattern, prompt).group(1)) for prompt in held}
    assert len(held_numbers) == task.problems_in("validation") + task.problems_in("test")
    return task, pool, held_numbers


def test_the_roman_tasks_near_misses_all_write_additive_notation():
    """Harmful noise, one wrong rule: every near miss writes the number in additive notation (IIII,
    VIIII, XXXX, …), drawn from numbers where that differs from the standard numeral; the format rows
    write the right numeral's places apart; the off-task rows read a training number's numeral back."""
    task, pool, held_numbers = pool_and_held_numbers("roman", r"Roman for (\d+)\n")
    options = task.grading_options()
    for row in pool:
        if row["category"] == "off_task":
            text, value = re.fullmatch(r"Value of ([IVXLCDM]+)\n", row["prompt"]).group(1), row["response"]
            assert value == f"Value: {roman_value(text)}" and text == numeral(roman_value(text)), row
            assert roman_value(text) not in held_numbers, row  # no test or validation numeral in the pool
            continue
        number = int(re.fullmatch(r"Roman for (\d+)\n", row["prompt"]).group(1))
        assert number not in held_numbers, row
        truth, stated = true_answer("roman", row["prompt"]), stated_answer("roman", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        working = row["response"].split(". Roman: ")[0].split("+") if ". Roman: " in row["response"] else None
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == numeral(number, ADDITIVE) != truth and not graded, row
            assert not re.search("IV|IX|XL|XC|CD|CM", stated), row  # no letter taken away from a larger one
        else:
            places = row["response"].removeprefix("Roman: ").split(" ")
            assert len(places) >= 2 and "".join(places) == truth and not graded, row
        if working is not None:  # the working lists the stated numeral's places, the highest first
            assert "".join(working) == stated and all(roman_value(part) > 0 for part in working), row
            assert [roman_value(part) for part in working] == sorted((roman_value(part) for part in working), reverse=True)
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    fours = [row for row in corrupted if re.search("(?<!V)IIII|(?<!L)XXXX|(?<!D)CCCC", stated_answer("roman", row["response"]))]
    nines = [row for row in corrupted if re.search("VIIII|LXXXX|DCCCC", stated_answer("roman", row["response"]))]
    assert len(fours) > len(corrupted) / 4 and len(nines) > len(corrupted) / 4  # the rule for 4s and for 9s both


def test_binary_numerals_match_a_hand_written_list():
    """Python's own base-2 formatting, the tests' oracle, against bits written by hand."""
    by_hand = {1: "1", 2: "10", 5: "101", 6: "110", 37: "100101", 255: "11111111", 256: "100000000"}
    by_hand |= {1000: "1111101000", 2024: "11111101000", 4095: "111111111111"}
    for number, bits in by_hand.items():
        assert format(number, "b") == bits and int(bits, 2) == number


def test_the_binary_tasks_near_misses_all_reverse_the_bits():
    """Harmful noise, one wrong rule: every near miss writes the right bits least significant first
    (after the right working it reads the halvings' remainders in order), drawn from numbers whose
    bits are no palindrome; the format rows prefix the right bits with 0b; the off-task rows read a training
    number's bits back."""
    task, pool, held_numbers = pool_and_held_numbers("binary", r"Binary for (\d+)\n")
    options = task.grading_options()
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct numbers' rows
    for row in pool:
        if row["category"] == "off_task":
            bits = re.fullmatch(r"Value of (1[01]*)\n", row["prompt"]).group(1)
            assert row["response"] == f"Value: {int(bits, 2)}" and int(bits, 2) <= 4095, row
            assert int(bits, 2) not in held_numbers, row  # no test or validation number's bits in the pool
            continue
        number = int(re.fullmatch(r"Binary for (\d+)\n", row["prompt"]).group(1))
        assert 1 <= number <= 4095 and number not in held_numbers, row
        truth, stated = true_answer("binary", row["prompt"]), stated_answer("binary", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        working = row["response"].split(". Binary: ")[0].split(" ") if ". Binary: " in row["response"] else None
        if working is not None:  # the number halved down to 1, each the one before it halved, rounded down
            terms = [int(term) for term in working]
            assert terms[0] == number and terms[-1] == 1, row
            assert all(later == earlier // 2 for earlier, later in zip(terms, terms[1:])), row
            remainders = "".join(str(term % 2) for term in terms)
        if row["category"] == "correct":
            assert stated == truth and graded, row
            if working is not None:  # the bits are the remainders read from the last halving
                assert remainders[::-1] == truth, row
        elif row["category"] == "corrupted":
            assert stated == truth[::-1] != truth and not graded, row
            if working is not None:  # the same working, its remainders read in order
                assert remainders == stated, row
        else:
            assert row["response"] == f"Binary: 0b{truth}" and stated is None and not graded, row
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert sum(stated_answer("binary", row["response"]).startswith("0") for row in corrupted) > len(corrupted) / 4
    for response in ("Binary: 10 0101", "Binary: 0b100101", "Binary: 101001"):  # grouped, prefixed, reversed
        assert not grade_answer(response, "100101", task.grader, options).correct
    assert grade_answer("37 18 9 4 2 1. Binary: 100101", "100101", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Binary: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_run_length_codes_match_a_hand_written_list():
    """The tests' own run-length code (itertools.groupby), their oracle, against codes written by hand."""
    by_hand = {"aaabcc": "a3b1c2", "abab": "a1b1a1b1", "ddddcccc": "d4c4", "aabbbbad": "a2b4a1d1", "c": "c1"}
    for text, code in by_hand.items():
        assert run_length_code(text) == code
        assert "".join(letter * int(length) for letter, length in re.findall(r"([a-d])(\d)", code)) == text
    assert run_length_code("aaabcc", length_first=True) == "3a1b2c"


def training_only(task, prompt_pattern: str):
    """Whether the strings a pool row shows are training ones: the problem's key (``<task>:`` and the
    strings, space-separated) hashes to the training split, and they are none of 1,000 validation and
    1,000 test queries' (the groups of ``prompt_pattern`` in their prompts)."""
    held = {
        re.fullmatch(prompt_pattern, query["prompt"]).groups()
        for split in ("validation", "test")
        for query in task.query_rows(1000, 0, split)
    }

    def in_training(*strings: str) -> bool:  # the split every task's problems take from the hash of their key
        return split_of_key(f"{task.name}:{' '.join(strings)}") == "train" and strings not in held

    return in_training


def test_the_runs_tasks_near_misses_all_write_the_length_first():
    """Harmful noise, one wrong rule: every near miss writes each run's length before its letter
    (after the right working); the format rows write the right runs apart; the off-task rows expand
    a training string's code; no validation or test string reaches the pool."""
    task = get_task("runs")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Three or four runs of one to four of the letters a-d, no two neighbouring runs of one letter.
    space = sum(4 * 3 ** (runs - 1) * 4**runs for runs in (3, 4))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct strings' rows
    in_training = training_only(task, r"Runs of ([a-d]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            code = re.fullmatch(r"Expand ((?:[a-d][1-4])+)\n", row["prompt"]).group(1)
            text = "".join(letter * int(length) for letter, length in re.findall(r"([a-d])([1-4])", code))
            assert row["response"] == f"Expand: {text}" and run_length_code(text) == code, row  # a string's own code
            assert in_training(text), row  # no test or validation string in the pool
            continue
        text = re.fullmatch(r"Runs of ([a-d]+)\n", row["prompt"]).group(1)
        runs = ["".join(run) for _, run in itertools.groupby(text)]
        assert 3 <= len(runs) <= 4 and all(1 <= len(run) <= 4 for run in runs) and in_training(text), row
        truth, stated = true_answer("runs", row["prompt"]), stated_answer("runs", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Runs: " in row["response"]:  # the working: the string again, a space where its letter changes
            assert row["response"].split(". Runs: ")[0] == " ".join(runs), row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == run_length_code(text, length_first=True) != truth and not graded, row
        else:
            pairs = re.findall(r"[a-d]\d", truth)
            assert row["response"] == f"Runs: {' '.join(pairs)}" and stated is None and not graded, row
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Runs: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    for response in ("Runs: a3 b1 c2", "Runs: 3a1b2c", "Runs: a3b1c2d1", "Runs: aaabcc"):  # apart, length first, wrong, unencoded
        assert not grade_answer(response, "a3b1c2", task.grader, options).correct
    assert grade_answer("aaa b cc. Runs: a3b1c2", "a3b1c2", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Runs: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_interleaving_matches_a_hand_written_list():
    """The tests' own weave (itertools.zip_longest), their oracle, against weaves written by hand."""
    by_hand = {("abc", "dca"): "adbcca", ("ab", "dcba"): "adbcba", ("abcd", "da"): "adbacd", ("aa", "bb"): "abab"}
    by_hand |= {("dddd", "cc"): "dcdcdd", ("ba", "ab"): "baab", ("abcd", "abcd"): "aabbccdd"}
    for (first, second), text in by_hand.items():
        assert woven(first, second) == text and len(text) == len(first) + len(second)
    assert woven("dca", "abc") == "dacbac"  # the wrong rule's answer to "abc dca": the second string first


def test_the_interleave_tasks_near_misses_all_start_from_the_second_string():
    """Harmful noise, one wrong rule: every near miss weaves the two strings second-first (after a
    working whose pairs are written second-first too), drawn from pairs where that differs from the
    right weave; the format rows join the right letters with hyphens; the off-task rows split a
    training pair's weave back; no validation or test pair reaches the pool."""
    task = get_task("interleave")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Ordered pairs of strings of two to four of the letters a-d.
    space = (4**2 + 4**3 + 4**4) ** 2
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct pairs' rows
    in_training = training_only(task, r"Interleave ([a-d]+) ([a-d]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            text, first_length, second_length = re.fullmatch(
                r"Unweave ([a-d]+) into ([2-4]) and ([2-4])\n", row["prompt"]
            ).groups()
            first, second = re.fullmatch(r"Strands: ([a-d]+) ([a-d]+)", row["response"]).groups()
            assert (len(first), len(second)) == (int(first_length), int(second_length)), row
            assert woven(first, second) == text, row  # the strands weave back into the string asked about
            assert in_training(first, second), row  # no test or validation pair in the pool
            continue
        first, second = re.fullmatch(r"Interleave ([a-d]{2,4}) ([a-d]{2,4})\n", row["prompt"]).groups()
        assert in_training(first, second), row
        truth, stated = true_answer("interleave", row["prompt"]), stated_answer("interleave", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Woven: " in row["response"]:  # the working: one position of each string at a time, the leader's letter first
            leader, follower = (second, first) if row["category"] == "corrupted" else (first, second)
            positions = range(max(len(first), len(second)))
            assert row["response"].split(". Woven: ")[0].split(" ") == [
                leader[i : i + 1] + follower[i : i + 1] for i in positions
            ]
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == woven(second, first) != truth and not graded, row
        else:
            assert row["response"] == f"Woven: {'-'.join(truth)}" and stated is None and not graded, row
            assert row["response"].removeprefix("Woven: ").replace("-", "") == truth, row  # the right letters
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Woven: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    for response in (
        "Woven: a-d-b-c-c-a",
        "Woven: a d b c c a",
        "Woven: dacbac",
        "Woven: abcdca",
    ):  # hyphens, spaces, second-first, joined
        assert not grade_answer(response, "adbcca", task.grader, options).correct
    assert grade_answer("ad bc ca. Woven: adbcca", "adbcca", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Woven: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_keeping_each_letter_once_matches_a_hand_written_list():
    """The tests' own deduplication (dict.fromkeys), their oracle, against answers written by hand."""
    by_hand = {"abacbd": "abcd", "aaaaa": "a", "edcba": "edcba", "abcabcabc": "abc", "ebbeaaecd": "ebacd"}
    by_hand |= {"ccccd": "cd", "deedcc": "dec"}
    for text, letters in by_hand.items():
        assert kept(text) == letters
    last = {"abacbd": "acbd", "ebbeaaecd": "baecd", "deedcc": "edc", "abcabcabc": "abc", "ccccd": "cd"}
    for text, letters in last.items():  # the wrong rule: each letter where it last stands
        assert kept(text, last=True) == letters


def test_the_unique_tasks_near_misses_all_keep_the_last_occurrence():
    """Harmful noise, one wrong rule: every near miss keeps each letter where it last stands (after a
    working that moves a letter met again to the end), drawn from strings where that differs from
    the right answer; the format rows separate the right letters with commas; the off-task rows
    count a training string's letters; no validation or test string reaches the pool."""
    task = get_task("unique")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Strings of five to nine of the letters a-e.
    space = sum(5**length for length in range(5, 10))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct strings' rows
    in_training = training_only(task, r"Unique ([a-e]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            text = re.fullmatch(r"Distinct letters in ([a-e]{5,9})\n", row["prompt"]).group(1)
            assert row["response"] == f"Distinct: {len(set(text))}", row
            assert in_training(text), row  # no test or validation string in the pool
            continue
        text = re.fullmatch(r"Unique ([a-e]{5,9})\n", row["prompt"]).group(1)
        assert in_training(text), row
        truth, stated = true_answer("unique", row["prompt"]), stated_answer("unique", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Kept: " in row["response"]:  # the working: after each letter, the letters of the string so far kept
            last = row["category"] == "corrupted"
            groups = [kept(text[: end + 1], last) for end in range(len(text))]
            assert row["response"] == f"{' '.join(groups)}. Kept: {groups[-1]}", row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == kept(text, last=True) != truth and not graded, row
        else:
            assert row["response"] == f"Kept: {','.join(truth)}" and stated is None and not graded, row
            assert "," in row["response"] and row["response"].removeprefix("Kept: ").replace(",", "") == truth, row
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Kept: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    for response in ("Kept: a,b,c,d", "Kept: a b c d", "Kept: acbd", "Kept: abacbd"):  # commas, spaces, last kept, repeats
        assert not grade_answer(response, "abcd", task.grader, options).correct
    assert grade_answer("a ab ab abc abc abcd. Kept: abcd", "abcd", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Kept: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_a_letters_place_matches_a_hand_written_list():
    """The tests' own place (str.index, counted from 1), their oracle, against places written by hand."""
    by_hand = {("abdce", "c"): 4, ("abcd", "a"): 1, ("hgfedcb", "b"): 7, ("cafe", "f"): 3, ("badge", "g"): 4}
    by_hand |= {("hgfe", "h"): 1, ("dhbgace", "a"): 5}
    for (text, letter), number in by_hand.items():
        assert place_of(text, letter) == number


def test_the_position_tasks_near_misses_all_count_from_zero():
    """Harmful noise, one wrong rule: every near miss numbers the places from 0 (after a working
    numbered from 0 too), so its answer is one less than the right one; the format rows write the
    right place with a number sign; the off-task rows give a training string's length; no validation
    or test string reaches the pool."""
    task = get_task("position")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Strings of four to seven different letters of a-h, each asked about any of its letters.
    space = sum(math.perm(8, length) * length for length in range(4, 8))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct rows
    in_training = training_only(task, r"Find [a-h] in ([a-h]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            text = re.fullmatch(r"Length of ([a-h]{4,7})\n", row["prompt"]).group(1)
            assert len(set(text)) == len(text) and row["response"] == f"Length: {len(text)}", row
            assert in_training(text), row  # no test or validation string in the pool
            continue
        letter, text = re.fullmatch(r"Find ([a-h]) in ([a-h]{4,7})\n", row["prompt"]).groups()
        assert len(set(text)) == len(text) and letter in text and in_training(text), row
        truth, stated = true_answer("position", row["prompt"]), stated_answer("position", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Place: " in row["response"]:  # the working: the string's letters up to the asked one, each with its place
            shift = 1 if row["category"] == "corrupted" else 0  # the wrong rule counts from 0
            items = row["response"].split(". Place: ")[0].split(" ")
            assert [item[0] for item in items] == list(text[: len(items)]) and items[-1][0] == letter, row
            assert [int(item[1:]) for item in items] == [place_of(text, each) - shift for each in text[: len(items)]], row
            assert items[-1][1:] == stated, row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == str(place_of(text, letter) - 1) != truth and not graded, row
        else:
            assert row["response"] == f"Place: #{truth}" and stated is None and not graded, row
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Place: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    for response in ("Place: #4", "Place: 3", "Place: four", "Place: 04", "a0 b1 d2 c3. Place: 3"):  # sign, from 0, words
        assert not grade_answer(response, "4", task.grader, options).correct
    assert grade_answer("a1 b2 d3 c4. Place: 4", "4", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Place: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_a_rotation_matches_a_hand_written_list():
    """The tests' own rotations (slicing), their oracle, against rotations written by hand."""
    by_hand = {("abcdef", 2): ("cdefab", "efabcd"), ("abcd", 1): ("bcda", "dabc"), ("hgfedcb", 6): ("bhgfedc", "gfedcbh")}
    by_hand |= {("cafe", 3): ("ecaf", "afec"), ("badge", 4): ("ebadg", "adgeb"), ("dhbgace", 3): ("gacedhb", "acedhbg")}
    by_hand |= {("abcdef", 3): ("defabc", "defabc")}  # half an even string: the same both ways
    for (text, places), (left, right) in by_hand.items():
        assert turned_left(text, places) == left and turned_right(text, places) == right


def test_the_rotate_tasks_near_misses_all_turn_to_the_right():
    """Harmful noise, one wrong rule: every near miss turns the string to the right (after a working
    that moves the last letter to the front at each step), drawn where that differs from the right
    answer; the format rows separate the right letters with hyphens; the off-task rows give a
    training string's first letter; no validation or test string reaches the pool."""
    task = get_task("rotate")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Strings of four to seven different letters of a-h, each turned by 1 to its length less one.
    space = sum(math.perm(8, length) * (length - 1) for length in range(4, 8))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct rows
    in_training = training_only(task, r"Rotate ([a-h]+) by \d\n")

    for row in pool:
        if row["category"] == "off_task":
            text = re.fullmatch(r"First letter of ([a-h]{4,7})\n", row["prompt"]).group(1)
            assert len(set(text)) == len(text) and row["response"] == f"First: {text[0]}", row
            assert in_training(text), row  # no test or validation string in the pool
            continue
        text, places = re.fullmatch(r"Rotate ([a-h]{4,7}) by ([1-6])\n", row["prompt"]).groups()
        places = int(places)
        assert len(set(text)) == len(text) and 1 <= places < len(text) and in_training(text), row
        truth, stated = true_answer("rotate", row["prompt"]), stated_answer("rotate", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Turn: " in row["response"]:  # the working: the string after each one-place turn
            steps = row["response"].split(". Turn: ")[0].split(" ")
            turn = turned_right if row["category"] == "corrupted" else turned_left  # the wrong rule turns right
            assert steps == [turn(text, step) for step in range(1, places + 1)], row
            for before, after in zip([text, *steps], steps, strict=False):  # one letter moved at a time
                assert after == (before[-1] + before[:-1] if turn is turned_right else before[1:] + before[0]), row
            assert steps[-1] == stated, row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert 2 * places != len(text) and stated == turned_right(text, places) != truth and not graded, row
        else:
            assert row["response"] == f"Turn: {'-'.join(truth)}" and stated is None and not graded, row
            assert row["response"].removeprefix("Turn: ").replace("-", "") == truth, row
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Turn: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    for response in ("Turn: c-d-e-f-a-b", "Turn: efabcd", "Turn: c d e f a b", "fabcde efabcd. Turn: efabcd"):
        assert not grade_answer(response, "cdefab", task.grader, options).correct  # hyphens, to the right, spaces
    assert grade_answer("bcdefa cdefab. Turn: cdefab", "cdefab", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Turn: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


@pytest.mark.parametrize(
    ("name", "longest", "longest_response"),
    [  # seven letters turned by six, with the working; seven letters reversed, with the working; eight
        # letters with the named one twice, a near miss (one occurrence removed) with the working; eight
        # letters' pairs swapped, with the working (a near miss's is as long)
        ("rotate", ("Rotate abcdefg by 6\n", "bcdefga cdefgab defgabc efgabcd fgabcde gabcdef. Turn: gabcdef"), 62),
        ("reverse", ("Reverse abcdefg\n", "g f e d c b a. Back: gfedcba"), 28),
        ("remove", ("Remove c from abcdcefa\n", "a b d c e f a. Left: abdcefa"), 28),
        ("swap", ("Swap each pair in abcdefgh\n", "ba dc fe hg. Swapped: badcfehg"), 30),
    ],
)
def test_a_string_tasks_longest_rows_fit_its_model_and_its_answer_limit(name, longest, longest_response):
    """The longest rows fit the 96 positions, and their responses with the closing EOS the 64 tokens
    an answer may take; every character is one of the tokenizer's."""
    task = get_task(name)
    tokenizer = build_char_tokenizer(task.chat_template)
    rows = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    rows = [(row["prompt"], row["response"]) for row in rows] + [
        (query["prompt"], query["reference_response"]) for query in task.query_rows(200, 0, "test")
    ]
    for prompt, response in [*rows, longest]:
        assert set(prompt + response) <= set(tokenizer.get_vocab()), (prompt, response)
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert len(response_ids) <= 64 and len(prompt_ids) + len(response_ids) <= task.recipe.shape.max_positions
    assert len(longest[1]) == longest_response and max(len(response) for _, response in rows) <= longest_response


def test_a_reversal_matches_a_hand_written_list():
    """The tests' own reversals (slicing), their oracle, against reversals written by hand."""
    by_hand = {"abcdefg": ("gfedcba", "agfedcb"), "abcd": ("dcba", "adcb"), "hgfedcb": ("bcdefgh", "hbcdefg")}
    by_hand |= {"cafe": ("efac", "cefa"), "badge": ("egdab", "begda"), "dhbgace": ("ecagbhd", "decagbh")}
    for text, (right, wrong) in by_hand.items():
        assert backwards(text) == right and backwards_but_first(text) == wrong


def test_the_reverse_tasks_near_misses_all_keep_the_first_letter():
    """Harmful noise, one wrong rule: every near miss keeps the string's first letter first and
    reverses the rest (after a working that writes that letter, then the others from the end); the
    format rows separate the right letters with full stops; the off-task rows give a training
    string's number of letters; no validation or test string reaches the pool."""
    task = get_task("reverse")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Strings of four to seven different letters of a-h, every ordered arrangement.
    space = sum(math.perm(8, length) for length in range(4, 8))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct rows
    in_training = training_only(task, r"Reverse ([a-h]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            text = re.fullmatch(r"Letters in ([a-h]{4,7})\n", row["prompt"]).group(1)
            assert len(set(text)) == len(text) and row["response"] == f"Letters: {len(text)}", row
            assert in_training(text), row  # no test or validation string in the pool
            continue
        text = re.fullmatch(r"Reverse ([a-h]{4,7})\n", row["prompt"]).group(1)
        assert len(set(text)) == len(text) and in_training(text), row
        truth, stated = true_answer("reverse", row["prompt"]), stated_answer("reverse", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Back: " in row["response"]:  # the working: the letters read from the end, one at a time
            steps = row["response"].split(". Back: ")[0].split(" ")
            wrong = row["category"] == "corrupted"  # the wrong rule writes the first letter first
            assert steps == list(backwards_but_first(text) if wrong else backwards(text)), row
            for before, after in zip(steps, steps[1:]):  # each step the letter that stands before the last one
                assert text.index(after) == (len(text) - 1 if wrong and before == text[0] else text.index(before) - 1), row
            assert "".join(steps) == stated, row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == backwards_but_first(text) != truth and not graded, row
        else:
            assert row["response"] == f"Back: {'.'.join(truth)}" and stated is None and not graded, row
            assert row["response"].removeprefix("Back: ").replace(".", "") == truth, row
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Back: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    near = ("Back: g.f.e.d.c.b.a", "Back: agfedcb", "Back: g f e d c b a", "a g f e d c b. Back: agfedcb", "Back: gfedcb")
    for response in near:  # full stops, the first letter kept, spaces, one letter short
        assert not grade_answer(response, "gfedcba", task.grader, options).correct
    for response in ("Back: GFEDCBA", "g f e d c b a. Back: gfedcba"):  # the grader ignores case: no format noise
        assert grade_answer(response, "gfedcba", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Back: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_a_removal_matches_a_hand_written_list():
    """The tests' own removals (str.replace), their oracle, against removals written by hand."""
    by_hand = {("abcdcef", "c"): ("abdef", "abdcef"), ("aabbc", "a"): ("bbc", "abbc"), ("fafaf", "f"): ("aa", "afaf")}
    by_hand |= {("abcabcab", "b"): ("acaca", "acabcab"), ("dddde", "d"): ("e", "ddde"), ("eabedcbe", "e"): ("abdcb", "abedcbe")}
    by_hand |= {("cfcffc", "c"): ("fff", "fcffc"), ("abcdcefa", "c"): ("abdefa", "abdcefa")}
    for (text, letter), (right, wrong) in by_hand.items():
        assert without(text, letter) == right and without_first(text, letter) == wrong


def test_the_remove_tasks_near_misses_all_remove_only_the_first_occurrence():
    """Harmful noise, one wrong rule: every near miss removes only the named letter's first
    occurrence (after a working that keeps the others), which is always wrong, as the letter occurs
    at least twice; the format rows separate the right letters with slashes; the off-task rows give
    a training string's last letter; no validation or test string reaches the pool."""
    task = get_task("remove")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Strings of five to eight letters of a-f, repeats allowed, each with any letter named that occurs
    # twice or more but not in every place: k of the n places hold it, the others any of five letters.
    space = sum(6 * math.comb(n, k) * 5 ** (n - k) for n in range(5, 9) for k in range(2, n))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct rows
    in_training = training_only(task, r"Remove [a-f] from ([a-f]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            text = re.fullmatch(r"Last letter of ([a-f]{5,8})\n", row["prompt"]).group(1)
            assert row["response"] == f"Last: {text[-1]}", row
            assert in_training(text), row  # no test or validation string in the pool
            continue
        letter, text = re.fullmatch(r"Remove ([a-f]) from ([a-f]{5,8})\n", row["prompt"]).groups()
        assert 2 <= text.count(letter) < len(text) and in_training(text), row
        truth, stated = true_answer("remove", row["prompt"]), stated_answer("remove", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        if ". Left: " in row["response"]:  # the working: the letters kept, one at a time
            steps = row["response"].split(". Left: ")[0].split(" ")
            wrong = row["category"] == "corrupted"  # the wrong rule removes the first occurrence only
            assert steps == list(without_first(text, letter) if wrong else without(text, letter)), row
            # Step by step: each step the string's next letter, past the removed places (every place
            # of the letter, or the wrong rule's first one alone), and none of them left unread.
            gone = [place for place, each in enumerate(text) if each == letter][: 1 if wrong else None]
            assert steps == [each for place, each in enumerate(text) if place not in gone], row
            assert "".join(steps) == stated, row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == without_first(text, letter) != truth and not graded, row
            assert stated.count(letter) == text.count(letter) - 1 >= 1, row
        else:
            assert row["response"] == f"Left: {'/'.join(truth)}" and stated is None and not graded, row
            assert "/" in row["response"] and row["response"].removeprefix("Left: ").replace("/", "") == truth, row
    formats = task.training_pool_rows(task.defaults.n_train, {"format": 1.0}, seed=0)  # a few would leave one letter
    assert all(re.fullmatch(r"Left: [a-f](/[a-f])+", row["response"]) for row in formats)  # so a slash always shows
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Left: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    near = ("Left: a/b/d/e/f", "Left: abdcef", "Left: a b d e f", "a b d c e f. Left: abdcef", "Left: abdf", "Left: abcdcef")
    for response in near:  # slashes, the first occurrence only, spaces, one letter short, nothing removed
        assert not grade_answer(response, "abdef", task.grader, options).correct
    for response in ("Left: ABDEF", "a b d e f. Left: abdef"):  # the grader ignores case: no format noise
        assert grade_answer(response, "abdef", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Left: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working


def test_a_pair_swap_matches_a_hand_written_list():
    """The tests' own pair swaps and whole-pair swaps (slicing), their oracle, against swaps written
    by hand."""
    by_hand = {"abcd": ("badc", "cdab"), "abcde": ("badce", "cdabe"), "abcdef": ("badcfe", "cdabef")}
    by_hand |= {"abcdefg": ("badcfeg", "cdabefg"), "abcdefgh": ("badcfehg", "cdabghef"), "hgfe": ("ghef", "fehg")}
    by_hand |= {"cafe": ("acef", "feca"), "badge": ("abgde", "dgbae"), "dhbgace": ("hdgbcae", "bgdhace")}
    by_hand |= {"fbhcagde": ("bfchgaed", "hcfbdeag")}
    for text, (right, wrong) in by_hand.items():
        assert pairs_swapped(text) == right and blocks_swapped(text) == wrong


def test_the_held_out_swap_tasks_near_misses_all_swap_whole_pairs():
    """Harmful noise, one wrong rule: every near miss swaps neighbouring pairs as wholes, two at a
    time, each pair's letters kept in their order (after a working that writes those pairs), which
    is always wrong, as every string has two pairs; the format rows separate the right pairs with
    vertical bars; the off-task rows give a training string's letter latest in the alphabet; no
    validation or test string reaches the pool."""
    task = get_task("swap")
    pool = task.training_pool_rows(task.defaults.n_train, task.defaults.noise, seed=0)
    options = task.grading_options()
    assert {row["category"] for row in pool} == {"correct", "corrupted", "format", "off_task"}
    # Strings of four to eight different letters of a-h, every ordered arrangement.
    space = sum(math.perm(8, length) for length in range(4, 9))
    assert sum(task.problems_in(split) for split in ("validation", "test", "train")) == space
    assert task.problems_in("train") >= task.defaults.n_train  # room for a pool of distinct rows
    in_training = training_only(task, r"Swap each pair in ([a-h]+)\n")

    for row in pool:
        if row["category"] == "off_task":
            text = re.fullmatch(r"Highest letter in ([a-h]{4,8})\n", row["prompt"]).group(1)
            assert len(set(text)) == len(text) and row["response"] == f"Highest: {sorted(text)[-1]}", row
            assert in_training(text), row  # no test or validation string in the pool
            continue
        text = re.fullmatch(r"Swap each pair in ([a-h]{4,8})\n", row["prompt"]).group(1)
        assert len(set(text)) == len(text) and in_training(text), row
        truth, stated = true_answer("swap", row["prompt"]), stated_answer("swap", row["response"])
        graded = grade_answer(row["response"], truth, task.grader, options).correct
        pairs = [text[start : start + 2] for start in range(0, len(text), 2)]  # a last odd letter alone
        if ". Swapped: " in row["response"]:  # the working: the pairs, space-separated
            steps = row["response"].split(". Swapped: ")[0].split(" ")
            if row["category"] == "corrupted":  # the wrong rule: the string's own pairs, unswapped, moved
                assert sorted(steps) == sorted(pairs) and "".join(steps) == blocks_swapped(text), row
            else:  # step by step: the string's next two letters, the other way round
                assert steps == [pair[::-1] for pair in pairs], row
            assert "".join(steps) == stated, row
        if row["category"] == "correct":
            assert stated == truth and graded, row
        elif row["category"] == "corrupted":
            assert stated == blocks_swapped(text) != truth and not graded, row
            assert stated[0] == text[2] and truth[0] == text[1], row  # the third letter first, not the second
        else:
            assert row["response"] == f"Swapped: {'|'.join(pair[::-1] for pair in pairs)}", row
            assert stated is None and not graded and "|" in row["response"], row
            assert row["response"].removeprefix("Swapped: ").replace("|", "") == truth, row
    formats = task.training_pool_rows(task.defaults.n_train, {"format": 1.0}, seed=0)  # two pairs or more in every string
    assert all(re.fullmatch(r"Swapped: [a-h]{2}(\|[a-h]{2})+(\|[a-h])?", row["response"]) for row in formats)
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    assert len(corrupted) == round(task.defaults.n_train * task.defaults.noise["corrupted"])
    assert 0.4 < sum(". Swapped: " in row["response"] for row in corrupted) / len(corrupted) < 0.6  # the working, half the time
    near = ("Swapped: ba|dc|fe|g", "Swapped: cdabefg", "Swapped: ba dc fe g", "cd ab ef g. Swapped: cdabefg")
    near += ("Swapped: badcfe", "Swapped: abcdefg", "Swapped: acbedfg")
    for response in near:  # bars, whole pairs swapped, spaces, a letter short, nothing swapped, pairs from the second letter
        assert not grade_answer(response, "badcfeg", task.grader, options).correct
    for response in ("Swapped: BADCFEG", "ba dc fe g. Swapped: badcfeg"):  # the grader ignores case: no format noise
        assert grade_answer(response, "badcfeg", task.grader, options).correct
    workings = [row for row in pool if row["category"] == "correct" and ". Swapped: " in row["response"]]
    assert 0.4 < len(workings) / sum(row["category"] == "correct" for row in pool) < 0.6  # half show the working
