"""Choosing the refined dataset (test_publish exports it)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from drift_assets.core.attribution.selection import refined_table, select

SCORES = [0.9, -0.3, 0.0, 2.5, 0.1, -1.0, 0.4]


def scores_frame(scores=SCORES) -> pl.DataFrame:
    """example_id, score, rank (1 = highest score), in an order unrelated to the rank."""
    ids = [f"ex{i}" for i in range(len(scores))]
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))
    rank = {index: position + 1 for position, index in enumerate(order)}
    return pl.DataFrame({"example_id": ids, "score": scores, "rank": [rank[i] for i in range(len(scores))]})


def selected_ids(frame: pl.DataFrame, selected: pl.Series) -> set[str]:
    return set(frame.filter(selected)["example_id"])


@pytest.mark.parametrize(("fraction", "count"), [(0.5, 4), (0.3, 3), (1 / 7, 1), (0.01, 1), (1.0, 7), (0.43, 4)])
def test_top_fraction_rounds_up(fraction, count):
    frame = scores_frame()
    selected = select(frame, "top_fraction", fraction=fraction)
    assert selected.name == "selected"
    assert selected.sum() == count == math.ceil(fraction * len(SCORES))
    best = sorted(range(len(SCORES)), key=lambda i: -SCORES[i])[:count]
    assert selected_ids(frame, selected) == {f"ex{i}" for i in best}


def test_top_k():
    frame = scores_frame()
    assert selected_ids(frame, select(frame, "top_k", k=2)) == {"ex3", "ex0"}
    assert select(frame, "top_k", k=100).sum() == len(SCORES)


def test_positive_keeps_strictly_positive_scores():
    frame = scores_frame()
    selected = select(frame, "positive")
    assert selected_ids(frame, selected) == {"ex0", "ex3", "ex4", "ex6"}
    assert selected.to_list() == [s > 0 for s in SCORES]


def test_ties_are_broken_by_rank():
    frame = pl.DataFrame({"example_id": ["b", "a", "c"], "score": [1.0, 1.0, 1.0], "rank": [2, 1, 3]})
    assert selected_ids(frame, select(frame, "top_k", k=1)) == {"a"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "best"}, "selection.method must be one of .*'best'"),
        ({"method": "top_k"}, "selection.k must be >= 1 for top_k \\(got None\\)"),
        ({"method": "top_k", "k": 0}, "selection.k must be >= 1 for top_k \\(got 0\\)"),
        ({"method": "top_fraction", "fraction": 0.0}, "selection.fraction must be in \\(0, 1\\] \\(got 0.0\\)"),
        ({"method": "top_fraction", "fraction": 1.5}, "selection.fraction must be in \\(0, 1\\] \\(got 1.5\\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    method = kwargs.pop("method")
    with pytest.raises(ValueError, match=message):
        select(scores_frame(), method, **kwargs)


def conversation(i: int) -> list[dict]:
    return [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"Answer: {i + 1}"}]


@pytest.fixture
def refined() -> pl.DataFrame:
    frame = scores_frame()
    pool = pl.DataFrame(
        {
            "example_id": [f"ex{i}" for i in range(len(SCORES))],
            "messages": [json.dumps(conversation(i)) for i in range(len(SCORES))],
            # What the pool table derives (not exported) beside a column of the user's (exported).
            "prompt": [f"What is {i} + 1?" for i in range(len(SCORES))],
            "n_response_tokens": [3] * len(SCORES),
            "source": ["pool.jsonl"] * len(SCORES),
            "category": ["correct"] * len(SCORES),
        }
    )
    return refined_table(pool, frame, select(frame, "top_k", k=3))


def test_refined_table_keeps_every_example_with_weight_and_flag(refined):
    assert refined.height == len(SCORES)
    assert refined["rank"].to_list() == list(range(1, len(SCORES) + 1))
    assert refined["example_id"].to_list()[:3] == ["ex3", "ex0", "ex6"]
    assert refined["selected"].to_list() == [True] * 3 + [False] * 4
    assert refined["weight"].to_list() == [1.0] * 3 + [0.0] * 4
    assert dict(zip(refined["example_id"], refined["score"])) == {f"ex{i}": s for i, s in enumerate(SCORES)}
    assert "category" in refined.columns


def test_round_robin_lets_each_query_take_its_best_row_not_yet_taken():
    import numpy as np

    from drift_assets.core.attribution.selection import round_robin_ranks

    def first(matrix, k):
        return np.flatnonzero(round_robin_ranks(matrix) <= k).tolist()

    # Rows 0-4; query 0 ranks them 3, 1, 0, 2, 4; query 1 ranks them 3, 4, 2, 0, 1.
    matrix = np.array([[0.5, 0.1], [0.8, 0.0], [0.2, 0.3], [0.9, 0.9], [0.0, 0.6]])
    # 3 (query 0's best), 4 (query 1's best, 3, is taken), 1 (query 0), 2 (query 1), 0 (query 0).
    assert round_robin_ranks(matrix).tolist() == [5, 3, 4, 1, 2]
    assert first(matrix, 2) == [3, 4]
    assert first(matrix[:, :1], 2) == [1, 3]  # one query: its top k
    unscored = matrix.copy()
    unscored[:, 1] = np.nan  # a query with no scores takes what is left in row order
    assert round_robin_ranks(unscored).tolist() == [2, 3, 4, 1, 5]
    with pytest.raises(ValueError, match="at least one validation query"):
        round_robin_ranks(np.zeros((3, 0)))


def test_the_candidate_selections_are_drifts_the_likeliest_rows_of_its_size_and_the_whole_pool():
    from drift_assets.core.attribution.selection import candidate_selections, likeliest_ranks

    # DRIFT ranks e0..e5 in order; the base model finds e5, e4 and e1 likeliest, e2 and e3 tie.
    scores = pl.DataFrame(
        {
            "example_id": [f"e{i}" for i in range(6)],
            "rank": [1, 2, 3, 4, 5, 6],
            "loss_per_token": [0.9, 0.2, 0.5, 0.5, 0.1, 0.0],
        }
    )
    drift = pl.Series([True, True, True, True, False, False])
    candidates = candidate_selections(scores, drift, ["loss", "full"])
    assert list(candidates) == ["drift", "loss", "full"]
    chosen = {name: set(scores.filter(mask)["example_id"]) for name, mask in candidates.items()}
    # Four rows: e5, e4, e1, then of the tied e2 and e3 the one DRIFT ranks first.
    assert chosen == {"drift": {"e0", "e1", "e2", "e3"}, "loss": {"e5", "e4", "e1", "e2"}, "full": set(scores["example_id"])}
    assert likeliest_ranks(scores).to_list() == [6, 3, 4, 5, 2, 1]  # the loss filter's order
    assert list(candidate_selections(scores, drift, [])) == ["drift"]
    with pytest.raises(ValueError, match="choose_among"):
        candidate_selections(scores, drift, ["random"])


def test_the_best_selection_is_left_for_another_only_where_its_model_answers_more():
    from drift_assets.core.attribution.selection import best_selection

    assert best_selection({"drift": 0.5, "loss": 0.5, "full": 0.5}) == "drift"
    assert best_selection({"drift": 0.5, "loss": 0.6, "full": 0.6}) == "loss"
    assert best_selection({"drift": 0.5, "loss": 0.4, "full": 0.55}) == "full"
