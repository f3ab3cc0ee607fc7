"""DRIFT along a warm-up run: checkpoints saved where asked, one checkpoint's scores, the combination."""

import numpy as np
import polars as pl
import pytest
import torch

from drift_assets.core.attribution.influence import PoolScores
from drift_assets.core.attribution.scores import ScoringSettings
from drift_assets.core.attribution.trajectory import (
    CheckpointGradients,
    checkpoint_key,
    combine_checkpoints,
    score_along,
    warm_up,
)
from drift_assets.core.gradients.tables import vectors
from drift_assets.core.training.sft import SftOptions, fine_tune
from drift_assets.settings import SettingsError, parse_settings, warmup_options
from drift_assets.tasks.tiny_model import build_char_tokenizer, build_tiny_llama
from drift_assets_tests.helpers.sft import SHAPE


def score_checkpoint(checkpoint: CheckpointGradients, scoring: ScoringSettings) -> PoolScores:
    """The pool's influence scores at one checkpoint (its Hessian fitted on its own training gradients)."""
    return score_along([checkpoint], scoring).checkpoints[0].scores


def test_a_warm_up_checkpoint_is_the_model_a_shorter_run_gives(examples):  # noqa: F811
    tokenizer = build_char_tokenizer()
    options = SftOptions(steps=9, batch_size=8, learning_rate=3e-3, schedule="constant", seed=2)
    model = build_tiny_llama(tokenizer, SHAPE, seed=1)
    saved: dict[int, dict[str, torch.Tensor]] = {}
    losses, _ = warm_up(
        model,
        tokenizer,
        examples,
        options,
        [3, 9],
        lambda step: saved.__setitem__(step, {name: value.detach().clone() for name, value in model.state_dict().items()}),
        log=lambda _: None,
    )
    assert sorted(saved) == sorted(losses) == [3, 9]
    for step in (3, 9):
        shorter = build_tiny_llama(tokenizer, SHAPE, seed=1)
        fine_tune(
            shorter,
            tokenizer,
            examples,
            SftOptions(steps=step, batch_size=8, learning_rate=3e-3, schedule="constant", seed=2),
            log=lambda _: None,
        )
        for name, value in shorter.state_dict().items():
            torch.testing.assert_close(saved[step][name], value, rtol=0, atol=0, msg=f"step {step}: {name}")
    assert not torch.equal(saved[3]["lm_head.weight"], saved[9]["lm_head.weight"])


def pool_scores(ids, raw, score) -> PoolScores:
    n = len(ids)
    return PoolScores(list(ids), np.asarray(raw, float), np.asarray(score, float), np.arange(1.0, n + 1), np.ones(n))


def test_checkpoints_combine_as_the_mean_of_standardized_scores_by_example():
    base = pool_scores(["a", "b", "c", "d"], [1, 2, 3, 4], [10, 0, 20, 30])
    # The other checkpoint lists the examples in another order, on another scale.
    later = pool_scores(["d", "c", "b", "a"], [400, 300, 200, 100], [-1, -2, -3, -4])
    combined = combine_checkpoints([base, later])
    z = lambda values: (np.asarray(values, float) - np.mean(values)) / np.std(values)  # noqa: E731
    assert combined.example_ids == ["a", "b", "c", "d"]
    np.testing.assert_allclose(combined.score, (z([10, 0, 20, 30]) + z([-4, -3, -2, -1])) / 2)
    np.testing.assert_allclose(combined.score_raw, z([1, 2, 3, 4]))  # both checkpoints rank the raw scores alike
    np.testing.assert_array_equal(combined.grad_norm, base.grad_norm)
    # A checkpoint with one score for everyone says nothing: it adds zeros, not NaNs.
    flat = combine_checkpoints([base, pool_scores(["a", "b", "c", "d"], [5, 5, 5, 5], [5, 5, 5, 5])])
    np.testing.assert_allclose(flat.score, z([10, 0, 20, 30]) / 2)
    with pytest.raises(ValueError, match="different examples"):
        combine_checkpoints([base, pool_scores(["a", "b", "c", "e"], [1, 2, 3, 4], [1, 2, 3, 4])])


def test_a_checkpoint_scores_as_its_parts_whether_streamed_or_in_memory():
    rng = np.random.default_rng(0)
    k = 6
    fingerprints = {"model_fingerprint": "m1", "projection_fingerprint": "p1"}

    def gradient_rows(ids: dict, n: int) -> pl.DataFrame:
        grads = rng.normal(size=(n, k)).astype(np.float32)
        return pl.DataFrame(
            {**ids, "grad": [list(map(float, g)) for g in grads]}, schema_overrides={"grad": pl.List(pl.Float32)}
        ).with_columns(**{name: pl.lit(value) for name, value in fingerprints.items()})

    training = gradient_rows({"example_id": ["e3", "e1", "e2", "e0"]}, 4)
    rollout_ids = ["q0/0", "q0/1", "q1/0", "q1/1"]
    validation = gradient_rows(
        {
            "rollout_id": rollout_ids + ["reference-q0", "reference-q1"],
            "query_id": ["q0", "q0", "q1", "q1", "q0", "q1"],
            "target": ["rollout"] * 4 + ["reference"] * 2,
        },
        6,
    )
    grades = pl.DataFrame(
        {
            "rollout_id": rollout_ids,
            "query_id": ["q0", "q0", "q1", "q1"],
            "correct": [True, False, False, True],
            "reward": [1.0, 0.0, 0.0, 1.0],
        }
    )
    matrix = vectors(training)
    ids = training["example_id"].to_list()
    # Two shards, streamed: the Hessian pass and the scoring pass each read them again.
    reads = []

    def shards():
        reads.append(1)
        yield ids[:3], matrix[:3]
        yield ids[3:], matrix[3:]

    streamed = CheckpointGradients(checkpoint_key(50), shards, validation, grades, {("m1", "p1")})
    in_memory = CheckpointGradients.in_memory(checkpoint_key(50), ids, matrix, validation, grades, {("m1", "p1")})
    assert streamed.pass_at_1 == 0.5
    vector = lambda frame, i: np.asarray(frame["grad"][i], float)  # noqa: E731
    # Signed weights by hand: per query +1 for the correct rollout, −1 for the wrong one, over 2 queries.
    target = (vector(validation, 0) - vector(validation, 1) - vector(validation, 2) + vector(validation, 3)) / 2
    by_id = dict(zip(ids, range(4), strict=True))
    for checkpoint in (streamed, in_memory, streamed.loaded()):
        scores = score_checkpoint(checkpoint, ScoringSettings(weighting="signed", debias="none"))
        expected = [vector(training, by_id[e]) @ target for e in scores.example_ids]
        np.testing.assert_allclose(scores.score, expected, rtol=1e-5)
        references = score_checkpoint(checkpoint, ScoringSettings(targets="offpolicy", debias="none"))
        np.testing.assert_allclose(
            references.score,
            [vector(training, by_id[e]) @ (vector(validation, 4) + vector(validation, 5)) / 2 for e in references.example_ids],
            rtol=1e-5,
        )
    assert len(reads) == 3  # once per scoring of the stream (the identity Hessian reads nothing), once to load it

    fisher = ScoringSettings(weighting="signed", hessian="fisher", debias="none")
    along = score_along([in_memory, streamed], fisher)
    assert [c.checkpoint for c in along.checkpoints] == ["000050", "000050"]
    assert all(c.curvature.kind == "fisher" for c in along.checkpoints)
    np.testing.assert_allclose(along.checkpoints[0].scores.score, along.checkpoints[1].scores.score, rtol=1e-9)
    # Two checkpoints that agree combine to their standardized scores.
    alone = along.checkpoints[0].scores.score
    np.testing.assert_allclose(along.scores.score, (alone - alone.mean()) / alone.std(), rtol=1e-9)
    assert score_along([in_memory], fisher).scores is not None
    with pytest.raises(ValueError, match="no checkpoint gradients"):
        score_along([], fisher)
    with pytest.raises(ValueError, match="model"):  # the same-checkpoint rule holds at every checkpoint
        score_checkpoint(CheckpointGradients.in_memory("base", ids, matrix, validation, grades, {("other", "p1")}), fisher)


def test_warmup_steps_must_increase():
    settings = parse_settings({"warmup": {"steps": [50, 150]}}, "s.yaml", ".")
    assert warmup_options(settings.warmup_schedule, gradient_checkpointing=False).steps == 150
    for steps in ([150, 50], [0, 10], [10, 10]):
        with pytest.raises(SettingsError, match="warmup.steps"):
            parse_settings({"warmup": {"steps": steps}}, "s.yaml", ".")


def test_each_query_scores_the_pool_against_its_own_part_of_the_target():
    from drift_assets.core.attribution.selection import round_robin_ranks
    from drift_assets.core.attribution.trajectory import ranked_scores, score_along, standardized

    rng = np.random.default_rng(1)
    training, validation = rng.normal(size=(5, 4)), rng.normal(size=(9, 4))
    ids = ["e0", "e1", "e2", "e3", "e4"]
    # Six graded rollouts, then each query's reference answer.
    rollouts = pl.DataFrame(
        {
            "rollout_id": [f"r{i}" for i in range(6)] + ["ref0", "ref1", "ref2"],
            "query_id": ["q0", "q0", "q1", "q1", "q2", "q2", "q0", "q1", "q2"],
            "target": ["rollout"] * 6 + ["reference"] * 3,
            "grad": [list(map(float, g)) for g in validation],
            "model_fingerprint": "m",
            "projection_fingerprint": "p",
        },
        schema_overrides={"grad": pl.List(pl.Float32)},
    )
    # q0 mixed, q1 all correct, q2 all wrong (positive weighting skips it).
    grades = (
        rollouts.head(6)
        .select("rollout_id", "query_id")
        .with_columns(correct=pl.Series([True, False, True, True, False, False]), reward=pl.Series([1.0, 0, 1, 1, 0, 0]))
    )
    checkpoint = CheckpointGradients.in_memory("base", ids, training.astype(np.float32), rollouts, grades, {("m", "p")})
    validation = rollouts["grad"].to_list()
    norms = np.linalg.norm(training, axis=1)
    # Positive weights by hand: 1/n⁺ per correct rollout, over the 2 queries used.
    by_hand = {"q0": np.asarray(validation[0]) / 2, "q1": (np.asarray(validation[2]) + np.asarray(validation[3])) / 4}
    round_robin = ScoringSettings(weighting="positive", debias="unit", ranking="round_robin")
    along = score_along([checkpoint, checkpoint], round_robin)
    scored = along.queries
    assert scored.query_ids == ["q0", "q1"] and scored.example_ids == ids
    for column, query in enumerate(scored.query_ids):
        np.testing.assert_allclose(scored.matrix[:, column], standardized(training @ by_hand[query] / norms), rtol=1e-5)
    # The queries' parts sum to the target: undebiased, their scores sum to the score, whatever the Hessian.
    fisher = score_checkpoint(checkpoint, ScoringSettings(hessian="fisher", debias="none", ranking="round_robin"))
    np.testing.assert_allclose(fisher.per_query.sum(axis=1), fisher.score_raw, rtol=1e-6)
    # The table ranks the pool in the queries' turns; ranked by score, it has no per-query scores.
    pool = pl.DataFrame({"example_id": ids, "n_prompt_tokens": [3] * 5, "n_response_tokens": [2] * 5})
    table = ranked_scores(along, pool)
    assert table["rank"].to_list() == [1, 2, 3, 4, 5]
    assert dict(zip(table["example_id"], table["rank"], strict=True)) == dict(
        zip(ids, round_robin_ranks(scored.matrix).tolist(), strict=True)
    )
    assert score_along([checkpoint], ScoringSettings(ranking="score")).queries is None
    # Off-policy, each query's part is its reference answer.
    offpolicy = score_along([checkpoint], ScoringSettings(targets="offpolicy", debias="unit")).queries
    assert offpolicy.query_ids == ["q0", "q1", "q2"]
    for column, reference in enumerate(validation[6:]):
        np.testing.assert_allclose(offpolicy.matrix[:, column], standardized(training @ np.asarray(reference) / norms), rtol=1e-5)
