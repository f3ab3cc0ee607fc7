"""Graders: exact, numeric, math (math-verify), regex, and user callables."""

from __future__ import annotations

import itertools

import pytest

from drift_assets.core.grading.graders import (
    Grade,
    GraderError,
    GradingOptions,
    extract_number,
    grade_answer,
    normalize_text,
    validate_grader,
)

_module_names = itertools.count()


def unique_module_name() -> str:
    # load_callable caches by spec and Python caches modules: every test gets its own module.
    return f"drift_test_grader_{next(_module_names)}_{id(object())}"


# ---------- exact ----------


@pytest.mark.parametrize(
    ("completion", "reference", "correct"),
    [
        ("Paris", "Paris", True),
        ("  paris.  ", "Paris", True),
        ("Answer: Paris!", "paris", True),
        ("The capital is Paris. Answer:   New   York ", "new york", True),
        ("Paris", "London", False),
        ("Parisian", "Paris", False),
        ("Answer: Paris is nice", "Paris", False),
    ],
)
def test_exact(completion, reference, correct):
    grade = grade_answer(completion, reference, "exact")
    assert grade.correct is correct
    assert grade.reward == float(correct)


def test_exact_reports_the_normalized_answer_after_the_last_marker():
    grade = grade_answer("Answer: no. Answer:  Yes!", "yes", "exact")
    assert grade == Grade(True, 1.0, "yes")


def test_normalize_text_unifies_minus_signs_case_and_spaces():
    assert normalize_text("  A\u2212B\t\n C. ") == "a-b c"


# ---------- numeric ----------


@pytest.mark.parametrize(
    ("completion", "reference", "correct", "extracted"),
    [
        ("Answer: 42", "42", True, "42"),
        ("answer:42", "42", True, "42"),  # marker is case-insensitive
        ("We compute 3 + 4 = 7. Answer: 7", "7", True, "7"),
        ("Answer: 7 (I checked 8 and 9 too)", "7", True, "7"),  # number after the marker beats the last number
        ("First 3, then 4, so 12", "12", True, "12"),  # no marker: the last number
        ("First 3, then 4, so 12", "3", False, "12"),
        ("Answer: 8. Wait. Answer: 9", "9", True, "9"),  # the last marker counts
        ("The result is \u22125", "-5", True, "-5"),  # unicode minus
        ("Answer: \u22125", "\u22125", True, "-5"),
        ("Answer: -5", "5", False, "-5"),
        ("Answer: 1,234 apples", "1234", True, "1,234"),
        ("Answer: 1234", "1,234", True, "1234"),
        ("about 1,234,567 of them", "1234567", True, "1,234,567"),
        ("so \\boxed{42} and 7 more words 9", "42", True, "42"),
        ("\\boxed{1} then \\boxed{2}", "2", True, "2"),
        ("Answer: 3.", "3", True, "3"),
        ("Answer: 2.50", "2.5", True, "2.50"),
        ("Answer: .5", "0.5", True, ".5"),
        ("Answer: 1e3", "1000", True, "1e3"),
        ("no numbers at all", "5", False, None),
        ("Answer: none, but 6 earlier", "6", True, "6"),  # marker without a number: fall back to the last number
    ],
)
def test_numeric(completion, reference, correct, extracted):
    grade = grade_answer(completion, reference, "numeric")
    assert grade.correct is correct
    assert grade.reward == float(correct)
    assert grade.extracted_answer == extracted


def test_numeric_reference_without_a_number_is_wrong():
    assert grade_answer("Answer: 5", "five", "numeric").correct is False


def test_numeric_tolerance():
    loose = GradingOptions(numeric_tolerance=0.01)
    assert grade_answer("Answer: 1.005", "1", "numeric", loose).correct
    assert not grade_answer("Answer: 1.02", "1", "numeric", loose).correct
    assert grade_answer("Answer: 0.004", "0", "numeric", loose).correct  # absolute tolerance near zero
    default = GradingOptions()
    assert not grade_answer("Answer: 1.001", "1", "numeric", default).correct
    assert grade_answer("Answer: 1.0000000001", "1", "numeric", default).correct
    exact = GradingOptions(numeric_tolerance=0.0)
    assert not grade_answer("Answer: 1.0000000001", "1", "numeric", exact).correct


def test_numeric_custom_answer_marker():
    options = GradingOptions(answer_marker="####")
    assert grade_answer("3 apples and 4 pears #### 7 total 9", "7", "numeric", options).correct
    # With the default marker the same text falls back to the last number.
    assert not grade_answer("3 apples and 4 pears #### 7 total 9", "7", "numeric").correct


def test_extract_number_directly():
    assert extract_number("x = \u22123.5 or 2") == "2"
    assert extract_number("ANSWER: \u22123.5 or 2") == "-3.5"
    assert extract_number("nothing") is None


# ---------- math ----------


@pytest.mark.parametrize(
    ("completion", "reference", "correct"),
    [
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("The answer is $\\frac{1}{2}$.", "0.5", True),
        ("So \\boxed{\\frac{3}{4}}", "\\dfrac{3}{4}", True),
        ("$\\sqrt{2}$", "\\sqrt{2}", True),  # bare LaTeX reference
        ("$2\\pi$", "2\\pi", True),
        ("2", "2\\pi", False),  # a bare 2\pi reference must not read as 2
        ("$\\frac{\\sqrt{3}}{2}$", "\\frac{\\sqrt{3}}{2}", True),
        ("$x^2+2x+1$", "(x+1)^2", True),  # symbolic equivalence
        ("\\boxed{3}", "2", False),
        ("$\\frac{1}{3}$", "0.5", False),
        ("I do not know", "0.5", False),
        ("$x+1$", "\\(x+1\\)", True),  # reference with its own delimiters
        ("$\\frac{1}{2}$", "$0.5$", True),
    ],
)
def test_math(completion, reference, correct):
    grade = grade_answer(completion, reference, "math")
    assert grade.correct is correct, grade
    assert grade.reward == float(correct)


def test_math_reports_nothing_extracted_for_text_without_math():
    assert grade_answer("I do not know", "0.5", "math").extracted_answer is None


# ---------- regex ----------


def test_regex_first_group_compared_as_exact():
    options = GradingOptions(regex=r"FINAL=\[(.*?)\]")
    grade = grade_answer("blah FINAL=[ Blue. ] more", "blue", "regex", options)
    assert grade == Grade(True, 1.0, " Blue. ")
    assert not grade_answer("FINAL=[red]", "blue", "regex", options).correct
    assert grade_answer("no match here", "blue", "regex", options) == Grade(False, 0.0, None)


def test_regex_without_groups_uses_the_whole_match():
    options = GradingOptions(regex=r"[A-D]\b")
    assert grade_answer("I pick C because", "c", "regex", options) == Grade(True, 1.0, "C")


def test_regex_without_a_pattern_is_a_grader_error():
    with pytest.raises(GraderError, match="grading.regex"):
        grade_answer("anything", "x", "regex", GradingOptions())


# ---------- user callables ----------


def write_grader_module(tmp_path, monkeypatch, source: str) -> str:
    name = unique_module_name()
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


USER_GRADERS = """
from drift_assets.core.grading.graders import Grade

def as_bool(completion, reference):
    return completion.strip() == reference

def as_float(completion, reference):
    return 1.0 - abs(float(completion) - float(reference))

def as_grade(completion, reference):
    return Grade(completion == reference, 0.25, completion.upper())

def as_text(completion, reference):
    return "yes"

def as_numpy_bool(completion, reference):
    import numpy
    return (numpy.array([completion.strip()]) == numpy.array([reference]))[0]  # numpy.bool_

def as_numpy_float(completion, reference):
    import numpy
    return numpy.float32(0.5) if completion == reference else numpy.int64(0)

not_callable = 3
"""


def test_user_callable_bool_float_and_grade_returns(tmp_path, monkeypatch):
    module = write_grader_module(tmp_path, monkeypatch, USER_GRADERS)
    assert grade_answer(" ok ", "ok", f"{module}:as_bool") == Grade(True, 1.0, None)
    assert grade_answer("no", "ok", f"{module}:as_bool") == Grade(False, 0.0, None)

    grade = grade_answer("2.75", "3", f"{module}:as_float")
    assert grade.correct is True and grade.reward == pytest.approx(0.75)
    grade = grade_answer("5", "3", f"{module}:as_float")
    assert grade.correct is False and grade.reward == pytest.approx(-1.0)
    grade = grade_answer("4", "3", f"{module}:as_float")  # reward exactly 0 is not correct
    assert grade.correct is False and grade.reward == 0.0

    assert grade_answer("abc", "abc", f"{module}:as_grade") == Grade(True, 0.25, "ABC")
    validate_grader(f"{module}:as_bool")


def test_user_callables_may_answer_with_numpy_scalars(tmp_path, monkeypatch):
    module = write_grader_module(tmp_path, monkeypatch, USER_GRADERS)
    assert grade_answer(" ok ", "ok", f"{module}:as_numpy_bool") == Grade(True, 1.0, None)
    assert grade_answer("no", "ok", f"{module}:as_numpy_bool") == Grade(False, 0.0, None)
    assert grade_answer("a", "a", f"{module}:as_numpy_float") == Grade(True, 0.5, None)
    assert grade_answer("a", "b", f"{module}:as_numpy_float") == Grade(False, 0.0, None)


def test_user_callable_with_a_bad_return_type(tmp_path, monkeypatch):
    module = write_grader_module(tmp_path, monkeypatch, USER_GRADERS)
    with pytest.raises(GraderError, match=f"{module}:as_text.*str"):
        grade_answer("a", "b", f"{module}:as_text")


def test_missing_function_names_the_spec(tmp_path, monkeypatch):
    module = write_grader_module(tmp_path, monkeypatch, USER_GRADERS)
    for function in ("no_such_function", "not_callable"):
        spec = f"{module}:{function}"
        with pytest.raises(GraderError) as caught:
            validate_grader(spec)
        assert repr(spec) in str(caught.value)
        assert repr(function) in str(caught.value)


def test_unimportable_module_names_the_spec():
    spec = "drift_no_such_module_xyz:grade"
    with pytest.raises(GraderError) as caught:
        grade_answer("a", "b", spec)
    assert repr(spec) in str(caught.value)
    assert "cannot import" in str(caught.value)


def test_module_that_fails_on_import_names_the_spec(tmp_path, monkeypatch):
    module = write_grader_module(tmp_path, monkeypatch, "import drift_definitely_missing_dependency\n")
    with pytest.raises(GraderError, match=f"{module}:f.*drift_definitely_missing_dependency"):
        validate_grader(f"{module}:f")


@pytest.mark.parametrize("spec", ["numerical", "Exact", "module_only", ":function", "module:"])
def test_unknown_grader_names_the_spec_and_the_choices(spec):
    with pytest.raises(GraderError) as caught:
        validate_grader(spec)
    message = str(caught.value)
    assert repr(spec) in message
    if ":" not in spec:
        assert "numeric" in message and "module:function" in message
    with pytest.raises(GraderError):
        grade_answer("1", "1", spec)


@pytest.mark.parametrize("name", ["exact", "numeric", "math", "regex"])
def test_builtin_graders_validate(name):
    assert validate_grader(name) is None


def test_the_grader_process_ends_on_sigterm_even_when_its_parent_ignores_it():
    """A spawned child inherits an ignored SIGTERM across exec (Dagster's run workers ignore it), and
    multiprocessing ends daemon children at exit with SIGTERM and waits for them: a grader process that
    kept ignoring it would hang its parent's exit."""
    import signal

    from drift_assets.core.grading.graders import GraderProcess

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        grader = GraderProcess()
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        assert grader.call("builtins:max", "b", "a", timeout_s=60) == "b"  # serving: its start-up is done
        grader._process.terminate()
        grader._process.join(10)
        assert not grader._process.is_alive(), "the grader process ignored SIGTERM"
    finally:
        grader.close()
