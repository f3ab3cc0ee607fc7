"""BM25 against rank_bm25 (RDS+ and the other baselines: test_parity_baselines.py); the guards on a degenerate target; progress lines."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from drift_assets.core.attribution.guards import MAX_REFERENCE_SHARE, contrast_guard, hacking_guard, target_guard
from drift_assets.core.attribution.scores import share_of, target_gradient
from drift_assets.core.grading.weighting import usable_queries
from drift_assets.core.runtime.progress import Progress, duration
from drift_assets.core.study.baselines import bm25_scores, words
from drift_assets.core.study.benchmark import similarity_scores

CORPUS = [
    "What is 13 + 7 ? Answer: 20",
    "Spell backwards: table",
    "What is 3 + 4 ? 3 + 4 = 7. Answer: 7",
    "What is 13 - 7 ? Answer: 6",
    "table river table",
]
QUERIES = ["What is 13 + 2 ?", "table please", "nothing matches"]


def test_bm25_equals_rank_bm25():
    from rank_bm25 import BM25Okapi

    documents = [words(text) for text in CORPUS]
    reference = BM25Okapi(documents)
    ours = bm25_scores(documents, [words(query) for query in QUERIES])
    for row, query in enumerate(QUERIES):
        np.testing.assert_allclose(ours[row], reference.get_scores(words(query)), rtol=1e-12)
    assert ours[2].max() == 0.0


def test_similarity_methods_rank_the_closest_example_first():
    pool = pl.DataFrame(
        {
            "example_id": ["a", "b", "c"],
            "prompt": ["What is 13 + 7?", "Spell: table", "What is 2 + 2?"],
            "response": ["Answer: 20", "elbat", "Answer: 4"],
        }
    )
    queries = pl.DataFrame({"prompt": ["What is 13 + 9?"], "reference_response": ["Answer: 22"]})
    scores = similarity_scores("bm25", pool, queries)
    assert scores["example_id"].to_list()[0] == "a" and scores["rank"].to_list() == [1, 2, 3]
    with pytest.raises(ValueError, match="not a similarity method"):
        similarity_scores("drift", pool, queries)


def test_contrast_guard():
    assert contrast_guard(48, 36)[0]
    passed, message = contrast_guard(48, 6)
    assert not passed and "only 6 of 48" in message and "rollout.samples_per_query" in message
    assert not contrast_guard(20, 7)[0]  # 35%, but fewer than 8 queries
    assert not contrast_guard(100, 19)[0]  # 19 queries, but under 20%


def test_target_guard_from_a_target_made_of_reference_answers():
    """Two queries: one mixed (rollouts r1 right, r2 wrong), one unsolved whose reference is the correct side."""
    gradients = pl.DataFrame(
        {
            "rollout_id": ["r1", "r2", "r3", "r4", "reference-q1", "reference-q2"],
            "query_id": ["q1", "q1", "q2", "q2", "q1", "q2"],
            "target": ["rollout"] * 4 + ["reference"] * 2,
            "grad": [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [0.0, 8.0]],
            "model_fingerprint": ["m"] * 6,
            "projection_fingerprint": ["p"] * 6,
        },
        schema_overrides={"grad": pl.List(pl.Float32)},
    )
    grades = pl.DataFrame(
        {
            "rollout_id": ["r1", "r2", "r3", "r4"],
            "query_id": ["q1", "q1", "q2", "q2"],
            "correct": [True, False, False, False],
            "reward": [1.0, 0.0, 0.0, 0.0],
        }
    )
    with_references = target_gradient(gradients, grades, "onpolicy", "signed", "reference")
    # g = (r1 - r2)/2 + (ref_q2 - mean(r3, r4))/2 = (0.5, 0) + (0, 4); the reference part is (0, 4).
    np.testing.assert_allclose(with_references.vector, [0.5, 4.0])
    assert with_references.reference_share == pytest.approx(16.0 / 16.25)
    assert not target_guard(with_references.reference_share)[0]
    skipped = target_gradient(gradients, grades, "onpolicy", "signed", "skip")
    assert skipped.reference_share == 0.0 and target_guard(skipped.reference_share)[0]
    assert target_gradient(gradients, grades, "offpolicy", "signed").reference_share == 1.0
    assert share_of(np.array([3.0, 4.0]), np.array([3.0, 0.0])) == pytest.approx(9 / 25)
    assert target_guard(MAX_REFERENCE_SHARE)[0]


def test_hacking_guard():
    assert hacking_guard(-0.18, 0.05)[0]
    passed, message = hacking_guard(0.377, 0.1)
    assert not passed and "gradient norm" in message and "+0.38" in message
    assert not hacking_guard(0.0, 0.61)[0]
    assert hacking_guard(None, None)[0] and hacking_guard(float("nan"), 0.1)[0]


def test_usable_queries_follow_the_weighting_and_unsolved_rule():
    summary = {"queries": 10, "queries_mixed": 0, "queries_all_correct": 4, "queries_all_wrong": 6}
    assert usable_queries(summary, "signed", "skip") == 0
    assert usable_queries(summary, "signed", "reference") == 6
    assert usable_queries(summary, "positive", "skip") == 4
    assert usable_queries(summary, "advantage", "reference") == 6


def test_progress_lines_give_rate_and_time_left():
    now = [100.0]
    lines = []
    progress = Progress("fine-tunes", 4, lines.append, clock=lambda: now[0])
    now[0] = 110.0
    progress.advance("full seed 0")
    now[0] = 140.0
    progress.advance(by=3)
    assert lines == [
        "fine-tunes: 1/4 (10.0 s per fine-tune, ETA 30s, 10s so far) full seed 0",
        "fine-tunes: 4/4 (10.0 s per fine-tune, done, 40s so far)",
    ]
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_progress_updates_log_at_most_every_interval_and_when_done():
    now = [0.0]
    lines = []
    progress = Progress("gradients", 0, lines.append, unit="examples", clock=lambda: now[0], every_s=10.0)
    for done, at in ((100, 4.0), (200, 10.0), (300, 15.0), (400, 20.0), (450, 21.0)):
        now[0] = at
        progress.update(done, 450)
    assert lines == [
        "gradients: 200/450 (20.0 examples/s, ETA 12s, 10s so far)",
        "gradients: 400/450 (20.0 examples/s, ETA 2s, 20s so far)",
        "gradients: 450/450 (21.4 examples/s, done, 21s so far)",
    ]
