"""The demo task generators: determinism, noise mix, and answers checked by an independent parser."""

from __future__ import annotations

import re

import pytest

from drift_assets.tasks.demo_task import pretraining_corpus, query_rows, training_pool_rows

PROBLEM = re.compile(r"^What is (\d+) ([+-]) (\d+)\?\n$")
FINAL_ANSWER = re.compile(r"Answer: (-?\d+)$")

N_POOL, CORRUPTED, OFF_TASK = 2400, 0.25, 0.08


def true_answer(prompt: str) -> int:
    left, operator, right = PROBLEM.match(prompt).groups()
    return int(left) + int(right) if operator == "+" else int(left) - int(right)


def final_answer(response: str) -> int:
    found = FINAL_ANSWER.search(response)
    assert found, f"response without a final answer: {response!r}"
    return int(found.group(1))


@pytest.fixture(scope="module")
def pool() -> list[dict]:
    return training_pool_rows(N_POOL, CORRUPTED, OFF_TASK, seed=0)


def test_generators_are_deterministic_for_a_seed_and_differ_across_seeds(pool):
    assert training_pool_rows(N_POOL, CORRUPTED, OFF_TASK, seed=0) == pool
    other = training_pool_rows(N_POOL, CORRUPTED, OFF_TASK, seed=1)
    assert other != pool
    assert sum(a["prompt"] != b["prompt"] for a, b in zip(pool, other)) > N_POOL // 2

    assert query_rows(40, seed=3, split="validation") == query_rows(40, seed=3, split="validation")
    assert [r["prompt"] for r in query_rows(40, 3, "validation")] != [r["prompt"] for r in query_rows(40, 4, "validation")]
    # Each split draws from its own stream.
    assert [r["prompt"] for r in query_rows(40, 3, "validation")] != [r["prompt"] for r in query_rows(40, 3, "test")]

    assert pretraining_corpus(200, seed=5) == pretraining_corpus(200, seed=5)
    assert pretraining_corpus(200, seed=5) != pretraining_corpus(200, seed=6)


def test_pool_mix_has_exact_rounded_counts(pool):
    categories = [row["category"] for row in pool]
    assert len(pool) == N_POOL
    assert categories.count("corrupted") == round(N_POOL * CORRUPTED) == 600
    assert categories.count("off_task") == round(N_POOL * OFF_TASK) == 192
    assert categories.count("correct") == N_POOL - 600 - 192
    assert set(categories) == {"correct", "corrupted", "off_task"}
    # Noise is shuffled through the pool, not stacked at one end.
    first_half = categories[: N_POOL // 2]
    assert 200 < first_half.count("corrupted") < 400


@pytest.mark.parametrize(("n", "corrupted", "off_task"), [(101, 0.25, 0.08), (333, 0.1, 0.3), (150, 0.0, 0.0)])
def test_pool_counts_round_for_other_sizes(n, corrupted, off_task):
    rows = training_pool_rows(n, corrupted, off_task, seed=2)
    categories = [row["category"] for row in rows]
    assert len(rows) == n
    assert categories.count("corrupted") == round(n * corrupted)
    assert categories.count("off_task") == round(n * off_task)


def test_answers_are_right_exactly_when_the_row_is_correct(pool):
    for row in pool:
        if row["category"] == "off_task":
            assert PROBLEM.match(row["prompt"]) is None, row
            assert FINAL_ANSWER.search(row["response"]) is None, row
            continue
        expected = true_answer(row["prompt"])
        got = final_answer(row["response"])
        if row["category"] == "correct":
            assert got == expected, row
        else:
            assert got != expected, row
            assert got >= 0, row


def test_corrupted_answers_are_plausible_mistakes(pool):
    corrupted = [row for row in pool if row["category"] == "corrupted"]
    offsets = {final_answer(r["response"]) - true_answer(r["prompt"]) for r in corrupted}
    # Off by one or ten (or a digit swap): never an arbitrary number.
    for row in corrupted:
        wrong, right = final_answer(row["response"]), true_answer(row["prompt"])
        assert abs(wrong - right) in (1, 10) or wrong == int(str(right)[::-1]), row
    assert {1, -1, 10}.issubset(offsets)


def test_is_corrupted_flag_is_true_exactly_for_noise(pool):
    for row in pool:
        assert row["is_corrupted"] is (row["category"] in ("corrupted", "off_task")), row
    assert sum(row["is_corrupted"] for row in pool) == 600 + 192


def test_pool_rows_are_distinct(pool):
    pairs = {(row["prompt"], row["response"]) for row in pool}
    assert len(pool) >= 2000
    assert len(pairs) == len(pool)


def test_pretraining_corpus_is_all_correct():
    corpus = pretraining_corpus(500, seed=0)
    assert len(corpus) == 500
    for prompt, response in corpus:
        assert final_answer(response) == true_answer(prompt)


@pytest.mark.parametrize(("split", "n"), [("validation", 48), ("validation", 32), ("test", 300), ("test", 200)])
def test_queries_are_distinct_with_correct_references(split, n):
    rows = query_rows(n, seed=0, split=split)
    assert len(rows) == n
    assert len({row["query_id"] for row in rows}) == n
    assert len({row["prompt"] for row in rows}) == n
    for row in rows:
        assert row["query_id"].startswith(f"{split}-")
        expected = true_answer(row["prompt"])
        assert row["reference"] == str(expected)
        assert final_answer(row["reference_response"]) == expected
        assert row["grader"] == "numeric"
        # Subtraction problems never go negative.
        assert expected >= 0


def test_asking_for_more_queries_extends_the_same_list():
    short, long = query_rows(32, 0, "validation"), query_rows(48, 0, "validation")
    assert long[:32] == short


def test_training_validation_and_test_problems_are_disjoint(pool):
    """Held-out means held out: no test or validation problem is trained on, before or during SFT."""
    arithmetic = {row["prompt"] for row in pool if PROBLEM.match(row["prompt"])}
    pretraining = {prompt for prompt, _ in pretraining_corpus(6000, seed=0)}
    validation = {row["prompt"] for row in query_rows(48, 0, "validation")}
    calibration = {row["prompt"] for row in query_rows(64, 0, "calibration")}
    test = {row["prompt"] for row in query_rows(300, 0, "test")}
    assert len(arithmetic) > 700  # the pool still spans most training problems
    assert not (arithmetic | pretraining) & (validation | calibration | test)
    assert not validation & test and not calibration & test


def test_asking_for_more_queries_than_a_split_holds_is_a_clear_error():
    with pytest.raises(ValueError, match="test split has 456 distinct problems; cannot draw 500"):
        query_rows(500, 0, "test")
    with pytest.raises(ValueError, match="unknown demo split 'dev'"):
        query_rows(5, 0, "dev")
