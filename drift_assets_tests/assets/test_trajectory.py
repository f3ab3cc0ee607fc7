"""DRIFT along a warm-up run, materialized for real on the small demo: saved checkpoints, their own
vLLM rollouts and gradients (one Dagster partition each), and influence scores that average them."""

import shutil

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey

from drift_assets.cli import _summary
from drift_assets.core.fingerprint import model_fingerprint
from drift_assets.core.gradients import vectors
from drift_assets.definitions import build_definitions
from drift_assets.runner import materialize_assets, materialize_pipeline
from drift_assets_tests.assets.test_pipeline import latest_metadata, read
from drift_assets_tests.conftest import instance_in, settings_in

STEPS = [10, 30]
KEYS = ["000010", "000030"]


@pytest.fixture(scope="module")
def trajectory(materialized, tmp_path_factory):
    """The session's materialized workspace, copied, with a warm-up run added: what the warm-up adds
    (and what lies downstream) is what gets materialized."""
    directory = tmp_path_factory.mktemp("trajectory") / "workspace"
    shutil.copytree(materialized, directory)
    # Without test queries the graph has no evaluation assets: this module is about the scores.
    settings = settings_in(directory, warmup={"steps": STEPS}, data={"test_queries": None})
    defs = build_definitions(settings)
    with instance_in(directory) as instance:
        done = materialize_pipeline(defs, instance, include_demo=False, only_stale=True)
        yield settings, defs, instance, done


def unit_scores(training: pl.DataFrame, validation: pl.DataFrame) -> dict[str, float]:
    """gᵀĥ/‖ĥ‖ per example_id, in plain numpy. ``validation``: rollout_id, query_id, target, correct, grad.

    g is the default target (``influence.weighting: positive``, ``unsolved: skip``): for each query
    with a correct rollout, +1/n⁺ for each correct one, averaged over those queries; wrong rollouts
    and reference answers weigh nothing.
    """
    correct = validation.filter(pl.col("target") == "rollout", pl.col("correct")).with_columns(
        n_correct=pl.len().over("query_id")
    )
    weights = 1 / correct["n_correct"].to_numpy() / correct["query_id"].n_unique()
    target = (vectors(correct).astype(np.float64) * weights[:, None]).sum(axis=0)
    matrix = vectors(training).astype(np.float64)
    return dict(zip(training["example_id"], matrix @ target / np.linalg.norm(matrix, axis=1), strict=True))


def standardized(scores: dict[str, float], ids: list[str]) -> np.ndarray:
    values = np.array([scores[i] for i in ids])
    return (values - values.mean()) / values.std()


@pytest.mark.vllm
def test_the_warm_up_saves_a_trained_model_at_each_step(trajectory):
    settings, _, _, done = trajectory
    saved = read(settings, "warmup_checkpoints").sort("step")
    assert saved["step"].to_list() == STEPS and saved["checkpoint"].to_list() == KEYS
    base = model_fingerprint(settings.model_path)
    fingerprints = [model_fingerprint(path) for path in saved["path"]]
    assert fingerprints == saved["model_fingerprint"].to_list()
    assert len({base, *fingerprints}) == 3
    assert [f"checkpoint_gradients[{key}]" for key in KEYS] == [d for d in done if d.startswith("checkpoint_gradients")]
    assert "rollouts" not in done and "training_gradient_projections[000]" not in done  # the base chain stays valid


@pytest.mark.vllm
def test_each_checkpoint_has_its_own_rollouts_and_gradients(trajectory):
    settings, _, instance, _ = trajectory
    table, pool, queries = (
        read(settings, "checkpoint_gradients"),
        read(settings, "training_pool"),
        read(settings, "validation_queries"),
    )
    saved = read(settings, "warmup_checkpoints")
    dimension = read(settings, "training_gradient_projections")["grad"].list.len().unique().to_list()
    for key in KEYS:
        rows = table.filter(pl.col("checkpoint") == key)
        assert (
            rows["model_fingerprint"].unique().to_list()
            == saved.filter(pl.col("checkpoint") == key)["model_fingerprint"].to_list()
        )
        assert rows["projection_fingerprint"].n_unique() == 1
        assert sorted(rows.filter(pl.col("role") == "training")["id"]) == sorted(pool["example_id"])
        rollouts = rows.filter(pl.col("role") == "rollout")
        assert rollouts.height == queries.height * settings.rollout.samples_per_query
        assert rollouts["correct"].null_count() == 0 and rollouts["completion"].null_count() == 0
        assert rows.filter(pl.col("role") == "reference").height == queries.height
        assert rows["grad"].list.len().unique().to_list() == dimension
    # Each checkpoint answers for itself: the rollouts differ from the base model's.
    base_completions = sorted(read(settings, "rollouts")["completion"])
    assert sorted(table.filter(pl.col("role") == "rollout", pl.col("checkpoint") == KEYS[-1])["completion"]) != base_completions
    assert latest_metadata(instance, "checkpoint_gradients")["queries"] == queries.height
    line = next(line for line in _summary(settings).splitlines() if line.startswith("warm-up checkpoints"))
    for step, key in zip(STEPS, KEYS, strict=True):
        pass_at_1 = table.filter(pl.col("checkpoint") == key, pl.col("role") == "rollout")["correct"].mean()
        assert f"{step} steps {pass_at_1:.3f}" in line


@pytest.mark.vllm
def test_influence_scores_average_the_standardized_scores_of_every_checkpoint(trajectory):
    settings, _, instance, _ = trajectory
    scores = read(settings, "influence_scores").sort("example_id")
    ids = scores["example_id"].to_list()
    graded = read(settings, "validation_gradients").join(
        read(settings, "grades").select("rollout_id", "correct"), on="rollout_id", how="left"
    )
    along = [unit_scores(read(settings, "training_gradient_projections"), graded)]
    table = read(settings, "checkpoint_gradients")
    for key in KEYS:
        rows = table.filter(pl.col("checkpoint") == key)
        along.append(
            unit_scores(
                rows.filter(pl.col("role") == "training").rename({"id": "example_id"}),
                rows.filter(pl.col("role") != "training").rename({"id": "rollout_id", "role": "target"}),
            )
        )
    expected = np.mean([standardized(s, ids) for s in along], axis=0)
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    # The checkpoints disagree (or the average would add nothing): no two rank the pool alike.
    assert all(not np.allclose(standardized(a, ids), standardized(b, ids)) for a, b in zip(along, along[1:]))
    checkpoints = latest_metadata(instance, "influence_scores")["checkpoints"]
    assert all(key in checkpoints for key in ["base", *KEYS])


@pytest.mark.vllm
def test_one_checkpoint_reruns_alone_to_the_same_rows(trajectory):
    settings, defs, instance, _ = trajectory
    before = read(settings, "checkpoint_gradients").sort("checkpoint", "role", "id")
    materialize_assets(defs, instance, [AssetKey("checkpoint_gradients")], partition_key=KEYS[-1])
    after = read(settings, "checkpoint_gradients").sort("checkpoint", "role", "id")
    assert after.equals(before)
