"""DRIFT along a warm-up run, materialized for real on the small demo: saved checkpoints, their own
vLLM rollouts and gradients (the chain's partitions beside ``base``), and influence scores that average them."""

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey

from drift_assets.cli import _summary
from drift_assets.core.attribution.less import AdamMoments, less_along
from drift_assets.core.data.fingerprint import model_fingerprint
from drift_assets.core.generation.rollouts import sample_rollouts
from drift_assets.core.gradients.projection import target_layers
from drift_assets.core.gradients.tables import pool_token_pairs, query_token_pairs, vectors
from drift_assets.core.training.adapters import is_adapter
from drift_assets.definitions import build_definitions
from drift_assets.defs.benchmark import ADAPTER_MODULES
from drift_assets.resources import ModelResource, rollout_engine_resource
from drift_assets.runner import materialize_assets, materialize_pipeline, run_method_benchmark
from drift_assets_tests.conftest import instance_in, settings_in
from drift_assets_tests.helpers.materialized import latest_metadata, read

STEPS = [10, 30]
KEYS = ["000010", "000030"]


@pytest.fixture(scope="module")
def trajectory(materialized, tmp_path_factory):
    """The session's materialized workspace, copied, with a warm-up run added: what the warm-up adds
    (and what lies downstream) is what gets materialized."""
    directory = tmp_path_factory.mktemp("trajectory") / "workspace"
    shutil.copytree(materialized, directory)
    # Without test queries the graph has no evaluation assets: this module is about the scores.
    # The optimizer state, which LESS reads in the method benchmark below (auto: off for these settings' methods).
    settings = settings_in(directory, warmup={"steps": STEPS, "optimizer_state": True}, data={"test_queries": None})
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


def at(settings, name: str, checkpoint: str) -> pl.DataFrame:
    return read(settings, name).filter(pl.col("checkpoint") == checkpoint)


@pytest.mark.vllm
def test_the_warm_up_saves_a_trained_model_at_each_step(trajectory):
    settings, _, _, done = trajectory
    saved = read(settings, "warmup_checkpoints").sort("step")
    assert saved["step"].to_list() == STEPS and saved["checkpoint"].to_list() == KEYS
    base = model_fingerprint(settings.model_path)
    fingerprints = [model_fingerprint(path) for path in saved["path"]]
    assert fingerprints == saved["model_fingerprint"].to_list()
    assert len({base, *fingerprints}) == 3
    # One run trained once and saved both; each new checkpoint ran its chain and its shards.
    assert [d for d in done if d.startswith("warmup_checkpoints")] == [f"warmup_checkpoints[{key}]" for key in KEYS]
    assert [d for d in done if d.startswith("rollouts")] == [f"rollouts[{key}]" for key in KEYS]
    shards = [d for d in done if d.startswith("training_gradient_projections")]
    assert shards == [f"training_gradient_projections[{key}|{shard}]" for key in KEYS for shard in ("000", "001", "002")]
    assert not any("[base" in d for d in done)  # the base model's chain stays valid


@pytest.mark.vllm
def test_each_checkpoint_has_its_own_rollouts_and_gradients(trajectory):
    settings, _, instance, _ = trajectory
    pool, queries = read(settings, "training_pool"), read(settings, "validation_queries")
    saved = read(settings, "warmup_checkpoints")
    dimension = at(settings, "training_gradient_projections", "base")["grad"].list.len().unique().to_list()
    for key in KEYS:
        fingerprint = saved.filter(pl.col("checkpoint") == key)["model_fingerprint"].to_list()
        training, validation = at(settings, "training_gradient_projections", key), at(settings, "validation_gradients", key)
        rollouts, grades = at(settings, "rollouts", key), at(settings, "grades", key)
        for table in (training, validation, rollouts, at(settings, "projection_basis", key)):
            assert table["model_fingerprint"].unique().to_list() == fingerprint
        assert training["projection_fingerprint"].unique().to_list() == validation["projection_fingerprint"].unique().to_list()
        assert sorted(training["example_id"]) == sorted(pool["example_id"])
        assert rollouts.height == grades.height == queries.height * settings.rollout.samples_per_query
        assert validation.filter(pl.col("target") == "reference").height == queries.height
        assert training["grad"].list.len().unique().to_list() == validation["grad"].list.len().unique().to_list() == dimension
    # Each checkpoint answers for itself: the rollouts differ from the base model's.
    assert sorted(at(settings, "rollouts", KEYS[-1])["completion"]) != sorted(at(settings, "rollouts", "base")["completion"])
    line = next(line for line in _summary(settings).splitlines() if line.startswith("warm-up checkpoints"))
    for step, key in zip(STEPS, KEYS, strict=True):
        assert f"{step} steps {at(settings, 'grades', key)['correct'].mean():.3f}" in line


@pytest.mark.vllm
def test_influence_scores_average_the_standardized_scores_of_every_checkpoint(trajectory):
    settings, _, instance, _ = trajectory
    scores = read(settings, "influence_scores").sort("example_id")
    ids = scores["example_id"].to_list()
    along = []
    for key in ["base", *KEYS]:
        graded = at(settings, "validation_gradients", key).join(
            at(settings, "grades", key).select("rollout_id", "correct"), on="rollout_id", how="left"
        )
        along.append(unit_scores(at(settings, "training_gradient_projections", key), graded))
    expected = np.mean([standardized(s, ids) for s in along], axis=0)
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    # The checkpoints disagree (or the average would add nothing): no two rank the pool alike.
    assert all(not np.allclose(standardized(a, ids), standardized(b, ids)) for a, b in zip(along, along[1:]))
    checkpoints = latest_metadata(instance, "influence_scores")["checkpoints"]
    assert all(key in checkpoints for key in ["base", *KEYS])


@pytest.mark.vllm
def test_one_checkpoint_reruns_alone_to_the_same_rows(trajectory):
    settings, defs, instance, _ = trajectory
    chain = ["rollouts", "grades", "projection_basis", "validation_gradients", "training_gradient_projections"]

    def ordered(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.sort([name for name, dtype in frame.schema.items() if not isinstance(dtype, pl.List)])

    before = {name: ordered(read(settings, name)) for name in chain}
    keys = [AssetKey(name) for name in chain[:-1]]
    materialize_assets(defs, instance, keys, partition_key=KEYS[-1])
    materialize_assets(defs, instance, [AssetKey(chain[-1])], partition_key=f"{KEYS[-1]}|001")
    for name in chain:
        assert ordered(read(settings, name)).equals(before[name]), name
    assert latest_metadata(instance, "training_gradient_projections")["rows_reused"] > 0


PARITY = ["less", "less_round_robin", "rds", "dsir", "grape", "dynamics", "self_distill", "influence"]


@pytest.mark.vllm
def test_the_parity_baselines_run_in_the_method_benchmark(trajectory):
    settings, _, instance, _ = trajectory
    saved = read(settings, "warmup_checkpoints").sort("step")
    assert saved["optimizer_state"].to_list() == [True, True]
    for path, step in zip(saved["path"], saved["step"], strict=True):
        moments = AdamMoments.load(path)
        assert moments.step == step and moments.learning_rate == pytest.approx(settings.warmup_schedule["learning_rate"])
    # The copied warehouse still holds the test queries; the benchmark reads them there.
    benchmark = settings.benchmark.model_copy(
        update={"methods": PARITY, "seeds": [0], "sft": settings.benchmark.sft.model_copy(update={"steps": 10})}
    )
    with_tests = settings.model_copy(
        update={"benchmark": benchmark, "data": settings.data.model_copy(update={"test_queries": "demo/test_queries.jsonl"})}
    )
    run_method_benchmark(build_definitions(with_tests), instance)
    table = read(settings, "method_benchmark")
    assert table["method"].to_list() == PARITY
    selected = int(read(settings, "refined_dataset")["selected"].sum())
    sizes = dict(table.select("method", "n_selected").rows())
    assert all(sizes[method] == selected for method in PARITY if method != "self_distill")
    assert 0 < sizes["self_distill"] <= selected  # the base model's right answers, at most as many as the others'
    row = {r["method"]: r for r in table.iter_rows(named=True)}
    assert row["self_distill"]["noisy_share"] is None and row["self_distill"]["order_auc"] is None
    pool = read(settings, "training_pool")
    for method in [method for method in PARITY if method != "self_distill"]:
        assert 0.0 <= row[method]["noisy_share"] <= 1.0 and 0.0 < row[method]["order_auc"] < 1.0, method
    # Ranked by score, the order's AUC is the score's; taking turns or resampling, it is not.
    assert row["less"]["order_auc"] == pytest.approx(row["less"]["noise_auc"], abs=1e-9)
    assert row["less_round_robin"]["noise_auc"] == pytest.approx(row["less"]["noise_auc"], abs=1e-9)
    assert row["dsir"]["order_auc"] != pytest.approx(row["dsir"]["noise_auc"], abs=1e-6)
    assert pool["is_corrupted"].mean() > 0 and "reference_answer" in pool.columns
    summary = latest_metadata(instance, "method_benchmark")["summary"]
    assert "noise AUC (selection order)" in summary and all(f"| {method} |" in summary for method in PARITY)


# The warm-up's adapters, and gradients of them at its checkpoints: the projection names the LoRA
# modules beside the base model's layers (which the base checkpoint, having no adapter, projects).
LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|.*\.lora_[AB]\.default"


# One checkpoint: what differs from the full warm-up above is how each is saved, served and projected.
LORA_STEPS, LORA_KEYS = STEPS[-1:], KEYS[-1:]


@pytest.fixture(scope="module")
def lora_trajectory(materialized, tmp_path_factory):
    """The session's materialized workspace, copied, with a LoRA warm-up run added."""
    directory = tmp_path_factory.mktemp("lora") / "workspace"
    shutil.copytree(materialized, directory)
    settings = settings_in(
        directory,
        warmup={"steps": LORA_STEPS, "lora": {"rank": 8, "alpha": 16.0}, "optimizer_state": True},
        projection={"target_modules": LORA_TARGETS},
        data={"test_queries": None},
    )
    defs = build_definitions(settings)
    with instance_in(directory) as instance:
        materialize_pipeline(defs, instance, include_demo=False, only_stale=True)
        yield settings, instance


@pytest.mark.vllm
def test_a_lora_warm_up_is_served_by_vllm_as_adapters_and_scored_by_their_gradients(lora_trajectory):
    settings, instance = lora_trajectory
    saved = read(settings, "warmup_checkpoints").sort("step")
    assert saved["adapter"].to_list() == [True]
    for path, fingerprint in zip(saved["path"], saved["model_fingerprint"], strict=True):
        assert is_adapter(path) and not (Path(path) / "model.safetensors").exists()  # adapters, no model copies
        at_step = ModelResource(path=settings.model_path, adapter=path, dtype="float32", device="cpu")
        assert at_step.fingerprint() == fingerprint
    n_layers = len(target_layers(ModelResource(path=settings.model_path).load_model(), settings.projection.target_modules))
    pool = read(settings, "training_pool")
    for key in LORA_KEYS:
        rollouts = at(settings, "rollouts", key)
        assert (
            rollouts["model_fingerprint"].unique().to_list()
            == saved.filter(pl.col("checkpoint") == key)["model_fingerprint"].to_list()
        )
        basis = at(settings, "projection_basis", key)
        # Gradients of the adapters only: an A and a B for every adapted layer.
        assert basis["layer"].n_unique() == 2 * n_layers and basis["layer"].str.contains(r"\.lora_[AB]\.").all()
        training = at(settings, "training_gradient_projections", key)
        assert sorted(training["example_id"]) == sorted(pool["example_id"])
        assert training["grad_norm"].is_finite().all() and (training["grad_norm"] > 0).all()
    assert sorted(at(settings, "rollouts", LORA_KEYS[-1])["completion"]) != sorted(at(settings, "rollouts", "base")["completion"])
    scores = read(settings, "influence_scores")
    assert sorted(scores["example_id"]) == sorted(pool["example_id"]) and scores["score"].is_finite().all()
    assert all(key in latest_metadata(instance, "influence_scores")["checkpoints"] for key in ["base", *LORA_KEYS])


@pytest.mark.vllm
def test_less_preconditions_a_lora_warm_up_s_adapters_with_their_saved_moments(lora_trajectory):
    settings, _ = lora_trajectory
    path = read(settings, "warmup_checkpoints")["path"][0]
    moments = AdamMoments.load(path)
    assert moments.names and all(".lora_A." in name or ".lora_B." in name for name in moments.names)
    # Loaded as the method benchmark loads it: the adapter's modules kept, so their names are the warm-up's.
    network = ModelResource(path=settings.model_path, adapter=path, dtype="float32", device="cpu").load_model(ADAPTER_MODULES)
    tokenizer = ModelResource(path=settings.model_path).load_tokenizer()
    pool, queries = read(settings, "training_pool").head(6), read(settings, "validation_queries").head(2)
    training = pool_token_pairs(tokenizer, pool["messages"])
    validation = query_token_pairs(tokenizer, queries["prompt"].to_list(), queries["reference_response"].to_list())
    scores = less_along(iter([(LORA_KEYS[0], network, moments)]), tokenizer, training, validation, projected=None)
    assert scores.shape == (6, 2) and np.isfinite(scores).all() and (np.abs(scores) <= 1 + 1e-9).all()


@pytest.mark.vllm
def test_vllm_samples_a_lora_adapter_as_it_samples_it_merged_into_the_model(lora_trajectory, tmp_path):
    """The adapter-served rollouts of a checkpoint against the same sampling from a merged copy."""
    settings, _ = lora_trajectory
    path = read(settings, "warmup_checkpoints").filter(pl.col("checkpoint") == LORA_KEYS[-1])["path"][0]
    adapter = ModelResource(path=settings.model_path, adapter=path, dtype="float32", device="cpu")
    adapter.load_model().save_pretrained(tmp_path / "merged")
    adapter.load_tokenizer().save_pretrained(tmp_path / "merged")
    merged = ModelResource(path=str(tmp_path / "merged"), dtype="float32", device="cpu")
    engine_settings = rollout_engine_resource(settings)
    with engine_settings.open_engine(merged) as engine:
        table, _ = sample_rollouts(
            engine, merged.load_tokenizer(), read(settings, "validation_queries"), engine_settings.sampling(), "merged"
        )
    columns = ["query_id", "sample_idx", "completion", "logprob_sum"]
    served = at(settings, "rollouts", LORA_KEYS[-1]).select(columns)
    pairs = served.join(table.select(columns), on=["query_id", "sample_idx"], suffix="_merged")
    assert pairs.height == served.height
    # The same seeds sample the same tokens unless a rounding difference between vLLM's LoRA
    # kernels and the merged weights tips one draw: nearly every completion is identical.
    same = pairs.filter(pl.col("completion") == pl.col("completion_merged"))
    assert same.height >= 0.9 * pairs.height
    np.testing.assert_allclose(same["logprob_sum"], same["logprob_sum_merged"], atol=1e-3)
