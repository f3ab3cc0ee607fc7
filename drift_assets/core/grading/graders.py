"""Answer checkers. Each grader maps (completion text, reference) to a :class:`Grade`.

- ``exact``: normalized strings are equal (case, surrounding whitespace and punctuation, inner
  whitespace runs ignored).
- ``numeric``: the number after the answer marker (``Answer:`` by default) when there is one, else
  the last number in the text, equals the reference within a tolerance. Unicode minus signs,
  thousands separators and ``\\boxed{…}`` are understood.
- ``math``: the math-verify package (LaTeX and symbolic equivalence).
- ``regex``: the first group of a pattern (or the whole match) compared as ``exact``.
- ``module:function``: a user-supplied callable ``f(completion, reference) -> bool | float | Grade``;
  a float is taken as the reward and counts as correct when > 0. It runs in a process of its own
  (:class:`GraderProcess`), where each call has ``GradingOptions.timeout_s`` to return.

:func:`grade_rollouts` applies them to the ``rollouts`` table (the ``grades`` table), and
:func:`grade_summary` gives pass@1 and the per-query split of the grades.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import multiprocessing
import numbers
import os
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

BUILTIN_GRADERS = ("exact", "numeric", "math", "regex")


def allowed_graders(default_grader: str, custom_graders: Sequence[str]) -> tuple[str, ...]:
    """What a query's 'grader' field may name: the built-ins, the default and the listed custom graders."""
    return tuple(dict.fromkeys((*BUILTIN_GRADERS, default_grader, *custom_graders)))


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_MINUS_SIGNS = dict.fromkeys(map(ord, "\u2212\u2012\u2013\u2014\ufe63\uff0d"), "-")


class GraderError(ValueError):
    """A grader name or callable that cannot be used."""


@dataclass(frozen=True)
class Grade:
    correct: bool
    reward: float
    extracted_answer: str | None


@dataclass(frozen=True)
class GradingOptions:
    numeric_tolerance: float = 1e-6
    answer_marker: str = "Answer:"
    regex: str | None = None
    timeout_s: float = 60.0  # the longest one call of a custom grader may take


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS)
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.strip(" .,;:!?\"'`")


def _unbox(text: str) -> str:
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return boxed[-1] if boxed else text


def extract_number(text: str, answer_marker: str = "Answer:") -> str | None:
    """The number after the last answer marker if present, else the last number in the text."""
    text = _unbox(unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS))
    if answer_marker and answer_marker.lower() in text.lower():
        tail = text[text.lower().rfind(answer_marker.lower()) + len(answer_marker) :]
        found = _NUMBER.search(tail)
        if found:
            return found.group(0)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _to_float(number: str) -> float:
    return float(number.replace(",", ""))


def _grade_numeric(completion: str, reference: str, options: GradingOptions) -> Grade:
    answer = extract_number(completion, options.answer_marker)
    expected = extract_number(reference, options.answer_marker)
    if answer is None or expected is None:
        return Grade(False, 0.0, answer)
    got, want = _to_float(answer), _to_float(expected)
    correct = math.isclose(got, want, rel_tol=options.numeric_tolerance, abs_tol=options.numeric_tolerance)
    return Grade(correct, float(correct), answer)


def _grade_exact(completion: str, reference: str, options: GradingOptions) -> Grade:
    answer = completion
    if options.answer_marker and options.answer_marker.lower() in completion.lower():
        answer = completion[completion.lower().rfind(options.answer_marker.lower()) + len(options.answer_marker) :]
    correct = normalize_text(answer) == normalize_text(reference)
    return Grade(correct, float(correct), normalize_text(answer))


def _grade_regex(completion: str, reference: str, options: GradingOptions) -> Grade:
    if not options.regex:
        raise GraderError("grader 'regex' needs grading.regex (a pattern whose first group is the answer)")
    found = re.search(options.regex, completion)
    if not found:
        return Grade(False, 0.0, None)
    answer = found.group(1) if found.groups() else found.group(0)
    correct = normalize_text(answer) == normalize_text(reference)
    return Grade(correct, float(correct), answer)


def _grade_math(completion: str, reference: str, options: GradingOptions) -> Grade:
    from math_verify import parse, verify

    # math-verify reads LaTeX only between delimiters: a bare reference such as \sqrt{2} parses to
    # nothing, and 2\pi to 2. References are math, so wrap them unless they bring delimiters.
    has_delimiters = any(mark in reference for mark in ("$", "\\(", "\\["))
    gold = parse(reference if has_delimiters else f"${reference}$")
    answer = parse(completion)
    correct = bool(answer) and bool(verify(gold, answer))
    return Grade(correct, float(correct), str(answer[-1]) if answer else None)


_BUILTIN: dict[str, Callable[[str, str, GradingOptions], Grade]] = {
    "exact": _grade_exact,
    "numeric": _grade_numeric,
    "math": _grade_math,
    "regex": _grade_regex,
}


def check_grader_name(spec: str) -> None:
    """Raise :class:`GraderError` unless ``spec`` is a built-in grader's name or of the form
    ``module:function`` (nothing is imported)."""
    if spec in _BUILTIN:
        return
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise GraderError(f"grader {spec!r}: expected one of {BUILTIN_GRADERS} or 'module:function'")


def grader_source_hash(specs: list[str]) -> str:
    """A hash of the source files of the ``module:function`` graders named, found without running
    them: a grades table is stale when a grader's code changes."""
    digest = hashlib.sha256()
    for spec in sorted(spec for spec in specs if spec not in _BUILTIN):
        module_name = spec.partition(":")[0]
        try:
            found = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            found = None
        origin = Path(found.origin) if found is not None and found.origin and Path(found.origin).is_file() else None
        digest.update(spec.encode() + b"\0" + (origin.read_bytes() if origin else b"<not found>") + b"\0")
    return digest.hexdigest()[:12]


@lru_cache(maxsize=32)
def load_callable(spec: str) -> Callable:
    """Import ``module:function``; errors name the spec and what went wrong."""
    check_grader_name(spec)
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise GraderError(f"grader {spec!r}: cannot import module {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise GraderError(f"grader {spec!r}: module {module_name!r} has no callable {function_name!r}")
    return function


def validate_grader(name: str, options: GradingOptions | None = None) -> None:
    """Raise :class:`GraderError` unless ``name`` is a built-in grader (with what it needs in
    ``options``) or an importable callable."""
    if name == "regex" and options is not None and not options.regex:
        raise GraderError("grader 'regex' needs grading.regex (a pattern whose first group is the answer)")
    if name not in _BUILTIN:
        load_callable(name)


class GraderTimeout(GraderError):
    """A custom grader's call that did not return within ``grading.timeout_s``."""


class GraderProcess:
    """Runs custom grader calls in a process of their own, so that one that never returns can be ended.

    A thread could not be killed, and a grader's own signal-based timeout (math-verify's) works only
    on a main thread. One process serves the calls one at a time (:func:`grader_process`: started
    once, its imports paid once); it is killed when a call exceeds its time, at exit, and, on
    Linux, when this process dies, even by SIGKILL. Built-in graders run in the caller's process.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's or vLLM's threads
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve_grader_calls, args=(child, os.getpid()), name="drift-custom-grader", daemon=True
        )
        self._process.start()
        child.close()
        self._path: list[str] = []
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def call(
        self, grader: str, completion: str, reference: str, timeout_s: float, waiting: Callable[[float], None] | None = None
    ):
        """What ``grader`` returned; :class:`TimeoutError` after ``timeout_s`` (the process is then
        killed), calling ``waiting(seconds waited so far)`` about every second meanwhile. What the
        grader raised comes back as :class:`GraderError`."""
        with self._lock:
            path = None if sys.path == self._path else list(sys.path)  # where the grader's module is found
            self._path = list(sys.path)
            self._connection.send((path, grader, completion, reference))
            started = time.monotonic()
            while not self._connection.poll(min(1.0, max(0.0, timeout_s - (time.monotonic() - started)))):
                waited = time.monotonic() - started
                if waiting is not None:
                    waiting(waited)
                if waited >= timeout_s:
                    self.close()
                    raise TimeoutError
            try:
                answer = self._connection.recv()
            except EOFError:
                self._process.join(5)
                raise GraderError(f"grader {grader!r} ended its process (exit code {self._process.exitcode})") from None
        if answer[0] == "returned":
            return answer[1]
        if answer[0] == "unsendable":
            raise GraderError(f"grader {grader!r} returned {answer[1]}; expected bool, float or Grade")
        _, kind, text, where = answer
        if kind == "GraderError":  # not importable, no such function: already says so
            raise GraderError(text)
        raise GraderError(
            f"grader {grader!r} raised {kind}: {text} (reference {reference!r}, completion {completion[:80]!r}; at {where})"
        )

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._connection.close()


_shared: GraderProcess | None = None
_shared_lock = threading.Lock()


def grader_process() -> GraderProcess:
    """The process custom graders run in, started on first use and again after one was killed."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive:
            _shared = GraderProcess()
        return _shared


def _serve_grader_calls(connection, parent: int) -> None:
    """The grader process: ``(sys.path or None, grader, completion, reference)`` in, ``("returned",
    result)`` or ``("raised", type, text, "file:line")`` out, until the connection closes."""
    import signal
    import traceback

    # An ignored SIGTERM survives exec (Dagster's run workers ignore it); multiprocessing ends daemon
    # children at exit with SIGTERM and waits for them, so a grader process ignoring it hangs that exit.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with(parent)
    while True:
        try:
            path, grader, completion, reference = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if path is not None:
            sys.path[:] = path
            importlib.invalidate_caches()
        try:
            result = load_callable(grader)(completion, reference)
        except BaseException as error:  # whatever it is, the caller names it
            frame = traceback.extract_tb(error.__traceback__)[-1]
            connection.send(("raised", type(error).__name__, str(error), f"{frame.filename}:{frame.lineno}"))
            continue
        try:
            connection.send(("returned", result))
        except Exception:  # pickling failed: the caller says what was returned
            connection.send(("unsendable", type(result).__name__))


def _die_with(parent: int) -> None:
    """Be killed when ``parent`` dies, even by SIGKILL (Linux's parent-death signal; elsewhere the
    closed connection ends an idle process)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


def grade_answer(
    completion: str,
    reference: str,
    grader: str,
    options: GradingOptions = GradingOptions(),
    waiting: Callable[[float], None] | None = None,
) -> Grade:
    """A custom grader runs in :func:`grader_process` under ``options.timeout_s``; ``waiting`` is
    called while it has not returned."""
    if grader in _BUILTIN:
        return _BUILTIN[grader](completion, reference, options)
    check_grader_name(grader)
    try:
        result = grader_process().call(grader, completion, reference, options.timeout_s, waiting)
    except TimeoutError:
        raise GraderTimeout(
            f"grader {grader!r} did not return within grading.timeout_s = {options.timeout_s:g} s (reference "
            f"{reference!r}, completion {completion[:80]!r}): fix the grader, or raise grading.timeout_s"
        ) from None
    if isinstance(result, Grade):
        grade = result
    # numpy's bool_ and number types too: user graders often compute their verdict with numpy.
    elif isinstance(result, bool | np.bool_):
        grade = Grade(bool(result), float(result), None)
    elif isinstance(result, numbers.Real):
        grade = Grade(float(result) > 0, float(result), None)
    else:
        raise GraderError(f"grader {grader!r} returned {type(result).__name__}; expected bool, float or Grade")
    if not math.isfinite(grade.reward):
        raise GraderError(
            f"grader {grader!r} returned a reward of {grade.reward} (reference {reference!r}, "
            f"completion {completion[:80]!r}); a reward must be finite"
        )
    return grade


GRADE_SCHEMA = {
    "rollout_id": pl.String,
    "query_id": pl.String,
    "correct": pl.Boolean,
    "reward": pl.Float64,
    "extracted_answer": pl.String,
    "grader": pl.String,
    "model_fingerprint": pl.String,
}


def grade_rollouts(
    rollouts: pl.DataFrame,
    validation_queries: pl.DataFrame,
    options: GradingOptions,
    progress: Callable[[int, int, str], None] | None = None,
) -> pl.DataFrame:
    """The ``grades`` table: every rollout checked against its query's reference with its query's grader.

    ``progress(done, total, note)`` is called after each rollout, and about every second while a
    custom grader has not returned (the note says which grader, on which query).
    """
    joined = rollouts.join(validation_queries.select("query_id", "reference", "grader"), on="query_id", how="left")
    missing = joined.filter(pl.col("reference").is_null())["query_id"].unique().to_list()
    if missing:
        raise ValueError(f"rollouts reference queries not in validation_queries: {missing[:5]} (re-materialize rollouts)")
    rows = []
    for done, row in enumerate(joined.iter_rows(named=True)):

        def waiting(seconds: float, row: dict = row, done: int = done) -> None:
            if progress is not None:
                note = f"waiting on grader {row['grader']!r} for query {row['query_id']} for {seconds:.0f}s"
                progress(done, joined.height, f"{note} (grading.timeout_s = {options.timeout_s:g})")

        try:
            grade = grade_answer(row["completion"], row["reference"], row["grader"], options, waiting)
        except GraderError as error:
            raise type(error)(f"query {row['query_id']}, rollout {row['rollout_id']}: {error}") from None
        rows.append({column: row[column] for column in ("rollout_id", "query_id", "grader", "model_fingerprint")} | asdict(grade))
        if progress is not None:
            progress(done + 1, joined.height, "")
    return pl.DataFrame(rows, schema=GRADE_SCHEMA)


def grade_summary(grades: pl.DataFrame) -> dict[str, float | int]:
    """pass@1 and how grades split per query (the figures signed weighting depends on)."""
    per_query = grades.group_by("query_id").agg(n_correct=pl.col("correct").sum(), n=pl.len())
    all_correct = per_query.filter(pl.col("n_correct") == pl.col("n")).height
    all_wrong = per_query.filter(pl.col("n_correct") == 0).height
    mixed = per_query.height - all_correct - all_wrong
    return {
        "pass_at_1": float(grades["correct"].mean()) if grades.height else 0.0,
        "queries": per_query.height,
        "queries_mixed": mixed,
        "mixed_share": mixed / per_query.height if per_query.height else 0.0,
        "queries_all_correct": all_correct,
        "queries_all_wrong": all_wrong,
    }
