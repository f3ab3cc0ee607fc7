"""The whole graph materialized for real on the small demo: vLLM rollouts, Delta tables, Dagster."""

import base64
import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from dagster import AssetKey, Definitions

from drift_assets.cli import _summary
from drift_assets.core.attribution.guards import contrast_guard, hacking_guard, target_guard
from drift_assets.core.attribution.scores import target_gradient
from drift_assets.core.gradients.tables import vectors
from drift_assets.definitions import build_definitions
from drift_assets.resources import Warehouse
from drift_assets.runner import materialize_assets, observe_sources, run_method_benchmark
from drift_assets_tests.conftest import instance_in, settings_in, shared_settings
from drift_assets_tests.helpers.materialized import latest_metadata, read

TABLES = (
    "demo_task_files",
    "demo_base_model",
    "training_pool",
    "training_pool_rejects",
    "validation_queries",
    "test_queries",
    "rollouts",
    "grades",
    "validation_gradients",
    "training_gradient_projections",
    "influence_scores",
    "refined_dataset",
    "refined_model_evaluation",
)


@pytest.fixture(scope="module")
def pipeline(materialized):
    """The session's materialized workspace, read-only."""
    settings = shared_settings(materialized)
    with instance_in(materialized) as instance:
        yield settings, build_definitions(settings), instance


@pytest.fixture
def private_pipeline(private_materialized):
    """A copy of it that the test may change."""
    settings = settings_in(private_materialized)
    with instance_in(private_materialized) as instance:
        yield settings, build_definitions(settings), instance


def test_definitions_load_and_validate():
    from drift_assets.definitions import defs

    Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert set(TABLES) <= keys


@pytest.mark.vllm
def test_rollouts_come_from_vllm_with_mixed_grades(pipeline):
    settings, _, instance = pipeline
    rollouts, grades, queries = read(settings, "rollouts"), read(settings, "grades"), read(settings, "validation_queries")
    assert rollouts.height == queries.height * settings.rollout.samples_per_query
    assert set(rollouts["engine"]) == {"vllm"}
    assert rollouts["model_fingerprint"].n_unique() == 1
    assert rollouts["logprob_sum"].is_finite().all() and (rollouts["logprob_sum"] < 0).all()
    assert grades.height == rollouts.height
    metadata = latest_metadata(instance, "grades")
    assert 0 < metadata["pass_at_1"] < 1
    assert metadata["queries_mixed"] > 0
    per_query = grades.group_by("query_id").agg(pl.col("correct").mean())
    assert per_query["correct"].min() < per_query["correct"].max()


@pytest.mark.vllm
def test_every_table_round_trips_through_delta(pipeline):
    settings, _, instance = pipeline
    for name in TABLES[2:]:
        table = read(settings, name)
        assert table.height > 0 or name == "training_pool_rejects", name
        event = instance.get_latest_materialization_event(AssetKey(name))
        if name != "training_gradient_projections":  # partitioned: its row count is per shard
            assert event.asset_materialization.metadata["dagster/row_count"].value == table.height, name


@pytest.mark.vllm
def test_gradients_scores_and_selection_are_consistent(pipeline):
    settings, _, instance = pipeline
    pool, scores, refined = read(settings, "training_pool"), read(settings, "influence_scores"), read(settings, "refined_dataset")
    gradients = read(settings, "training_gradient_projections")
    k = 14 * settings.projection.rank**2  # 2 layers x 7 projections, r x r each
    assert gradients["grad"].list.len().unique().to_list() == [k]
    assert sorted(gradients["example_id"]) == sorted(pool["example_id"])
    assert set(gradients["shard"]) == {"000", "001", "002"}
    validation = read(settings, "validation_gradients")
    assert validation.filter(pl.col("target") == "reference").height == read(settings, "validation_queries").height
    assert sorted(scores["example_id"]) == sorted(pool["example_id"])
    assert np.isfinite(scores["score"].to_numpy()).all()
    assert scores["rank"].to_list() == list(range(1, pool.height + 1))
    count = math.ceil(settings.selection.fraction * pool.height)
    assert refined["selected"].sum() == count
    assert refined.filter("selected")["rank"].sort().to_list() == list(range(1, count + 1))
    metadata = latest_metadata(instance, "influence_scores")
    if settings.influence.ranking == "score":
        assert refined.filter("selected")["score"].min() >= refined.filter(~pl.col("selected"))["score"].max()
    else:  # the queries take turns: each takes its best rows, not the pool's best by the mean score
        assert metadata["queries_taking_turns"] >= 2
        assert refined.filter("selected")["score"].min() < refined.filter(~pl.col("selected"))["score"].max()
    for figure in ("spearman_score_vs_grad_norm", "spearman_score_vs_length", "noise_auc", "queries_used"):
        assert figure in metadata
    # Positive weighting (the default) uses every query some rollout solves; the unsolved ones are
    # skipped (influence.unsolved: skip), so no reference answer joins the target.
    grades_metadata = latest_metadata(instance, "grades")
    assert settings.influence.weighting == "positive" and settings.influence.unsolved == "skip"
    assert metadata["references_for_unsolved"] == 0 and metadata["reference_share_of_target"] == 0.0
    assert metadata["queries_used"] == grades_metadata["queries"] - grades_metadata["queries_all_wrong"]


@pytest.mark.vllm
def test_the_refined_dataset_is_the_selection_whose_model_answers_the_most_validation_queries(private_materialized):
    """selection.choose_among: DRIFT's selection, the loss filter's and the whole pool each fine-tuned
    and decoded on the validation queries; the refined dataset is the best one's, its check passes."""
    settings = settings_in(private_materialized, selection={"choose_among": ["loss", "full"]})
    defs = build_definitions(settings)
    with instance_in(private_materialized) as instance:
        materialize_assets(defs, instance, [AssetKey("refined_dataset")])
        metadata = latest_metadata(instance, "refined_dataset")
        assert check_records(instance, defs)["refined_dataset_selection"].status.value == "SUCCEEDED"
        summary = _summary(settings, instance).splitlines()
    line = next(line for line in summary if line.startswith("refined_dataset "))
    split = summary[summary.index(next(line for line in summary if line.startswith("cost "))) + 1]
    # The choice is a stage of the refinement's cost: three fine-tunes of benchmark.sft's fixed steps,
    # each about one full-pool SFT run whatever its selection's size, and their decoding.
    assert split.split(" | ")[-2].startswith("scoring") and split.split(" | ")[-1].startswith("choice ")
    assert metadata["cost_backward_tokens"] > 0 and 2.5 < metadata["cost_vs_full_sft"] < 3.6
    refined, scores = read(settings, "refined_dataset"), read(settings, "influence_scores")
    count = math.ceil(settings.selection.fraction * scores.height)
    candidates = {  # an oracle of their own: DRIFT's first rows, the likeliest rows, every row
        "drift": set(scores.sort("rank").head(count)["example_id"]),
        "loss": set(scores.sort("loss_per_token", "rank").head(count)["example_id"]),
        "full": set(scores["example_id"]),
    }
    assert candidates["loss"] != candidates["drift"]
    accuracies = {name: metadata[f"validation_accuracy_{name}"] for name in candidates}
    best = next(name for name in candidates if accuracies[name] == max(accuracies.values()))  # ties: the first
    assert metadata["selection_chosen"] == best
    assert set(refined.filter("selected")["example_id"]) == candidates[best]
    # rank is the order the kept selection takes: its rows first.
    assert sorted(refined.filter("selected")["rank"]) == list(range(1, len(candidates[best]) + 1))
    assert all(0 <= value <= 1 for value in accuracies.values()) and len(set(accuracies.values())) > 1
    assert line.endswith(
        f"; {best}'s kept (validation accuracy drift {accuracies['drift']:.3f}, loss {accuracies['loss']:.3f}, full {accuracies['full']:.3f})"
    )


def check_records(instance, defs) -> dict[str, object]:
    checks = list(defs.resolve_asset_graph().asset_check_keys)
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
    return {check.name: records.get(check) for check in checks}


@pytest.mark.vllm
def test_all_blocking_checks_passed(pipeline):
    _, defs, instance = pipeline
    graph = defs.resolve_asset_graph()
    blocking = {key.name for key in graph.asset_check_keys if graph.get_check_spec(key).blocking}
    assert len(blocking) >= 8
    records = check_records(instance, defs)
    for name in blocking:
        if records[name] is None:  # checks of assets outside the demo run (e.g. the benchmark)
            continue
        assert records[name].status.value == "SUCCEEDED", name
    # The guards ran too, as warnings, each with the verdict its rule gives for the figures the asset
    # recorded. On the demo's diffuse model the contrast is broad and, with unsolved queries skipped,
    # the target on-policy; whether the score follows gradient norm or loss depends on the model
    # this CPU trained, so that verdict is checked against the measured Spearman figures.
    grades, scores = latest_metadata(instance, "grades"), latest_metadata(instance, "influence_scores")
    hacking_passes, _ = hacking_guard(scores["spearman_score_vs_grad_norm"], scores["spearman_score_vs_loss"])
    expected = {
        "grades_enough_contrast": contrast_guard(grades["queries"], grades["queries_mixed"])[0],
        "influence_target_on_policy": target_guard(scores["reference_share_of_target"])[0],
        "influence_not_gradient_hacking": hacking_passes,
    }
    assert expected["grades_enough_contrast"] and expected["influence_target_on_policy"]
    for name, passed in expected.items():
        assert name not in blocking
        evaluation = records[name].event.dagster_event.event_specific_data
        assert evaluation.passed == passed and evaluation.severity.value == "WARN", name


@pytest.mark.vllm
def test_the_guards_warn_when_the_target_is_off_policy(private_pipeline):
    """With the reference answers as the whole target the target guard fails (a warning: nothing downstream is
    blocked), and the gradient-hacking guard says what the asset measured."""
    settings, defs, instance = private_pipeline
    offpolicy = settings.model_copy(update={"influence": settings.influence.model_copy(update={"targets": "offpolicy"})})
    materialize_assets(build_definitions(offpolicy), instance, [AssetKey("influence_scores")])
    records = check_records(instance, defs)
    target = records["influence_target_on_policy"].event.dagster_event.event_specific_data
    assert not target.passed and target.severity.value == "WARN"
    assert "make 100% of the target" in target.metadata["message"].value
    metadata = latest_metadata(instance, "influence_scores")
    assert metadata["reference_share_of_target"] == 1.0
    hacking = records["influence_not_gradient_hacking"].event.dagster_event.event_specific_data
    expected = metadata["spearman_score_vs_grad_norm"] <= 0.2 and metadata["spearman_score_vs_loss"] <= 0.2
    assert hacking.passed == expected


@pytest.mark.vllm
def test_evaluation_closes_the_loop(pipeline):
    settings, _, _ = pipeline
    evaluation = read(settings, "refined_model_evaluation")
    assert evaluation["model"].to_list() == ["base", "full", "refined"]
    assert evaluation["n_queries"].unique().to_list() == [read(settings, "test_queries").height]
    assert (
        (evaluation["accuracy_low"] <= evaluation["accuracy"]) & (evaluation["accuracy"] <= evaluation["accuracy_high"])
    ).all()


def test_materialize_all_leaves_the_method_benchmark_to_its_job(pipeline, workspace, instance):
    """The UI's "Materialize all" takes executable assets only: the benchmark is an external asset
    (in the lineage, downstream of what it reads) that the method_benchmark job writes."""
    _, defs, _ = pipeline
    graph = defs.resolve_asset_graph()
    node = graph.get(AssetKey("method_benchmark"))
    assert not node.is_executable and AssetKey("training_gradient_projections") in node.parent_keys
    assert AssetKey("method_benchmark") not in graph.executable_asset_keys
    # Launched before the pipeline: it names what to materialize first and writes nothing.
    empty = settings_in(workspace)
    with pytest.raises(Exception, match=r"method_benchmark reads training_pool, .*materialize the pipeline first"):
        run_method_benchmark(build_definitions(empty), instance)
    assert not Warehouse.from_settings(empty).exists("method_benchmark")


@pytest.mark.vllm
def test_method_benchmark_gives_every_method_the_same_budget(private_pipeline):
    settings, _, instance = private_pipeline
    restated = f"drift_{settings.influence.unsolved}"  # an ablation that restates a configured setting
    methods, seeds = ["full", "random", "drift", "loss", "oracle", restated], [0, 1]
    settings = settings.model_copy(
        update={"benchmark": settings.benchmark.model_copy(update={"methods": methods, "seeds": seeds})}
    )
    run_method_benchmark(build_definitions(settings), instance)
    table = read(settings, "method_benchmark")
    assert table.select("method", "seed").rows() == [(method, seed) for method in methods for seed in seeds]
    selected = int(read(settings, "refined_dataset")["selected"].sum())
    sizes = dict(table.select("method", "n_selected").unique().rows())
    assert sizes == {
        "full": read(settings, "training_pool").height,
        "random": selected,
        "drift": selected,
        "loss": selected,
        "oracle": selected,
        restated: selected,
    }
    assert ((table["accuracy_low"] <= table["accuracy"]) & (table["accuracy"] <= table["accuracy_high"])).all()
    auc = dict(table.select("method", "noise_auc").unique().rows())
    assert auc["full"] is None and auc["random"] is None and auc["oracle"] is None
    assert auc["drift"] == pytest.approx(latest_metadata(instance, "influence_scores")["noise_auc"], abs=5e-4)  # rounded there
    assert auc["loss"] > 0.6  # the demo's corrupted answers are unlikely under the base model
    metadata = latest_metadata(instance, "method_benchmark")
    assert all(f"| {method} |" in metadata["summary"] for method in methods)
    accuracy = {(method, seed): value for method, seed, value in table.select("method", "seed", "accuracy").rows()}
    # the restating ablation shares drift's fine-tunes instead of repeating them
    assert all(accuracy[restated, seed] == accuracy["drift", seed] for seed in seeds)
    assert table.filter(pl.col("method") == restated)["wall_seconds"].to_list() == [0.0] * len(seeds)
    assert (table.filter(pl.col("method") == "drift")["wall_seconds"] > 0).all()
    drift_gain = sum(accuracy["drift", seed] - accuracy["full", seed] for seed in seeds) / len(seeds)
    drift_line = next(line for line in metadata["summary"].splitlines() if line.startswith("| drift |"))
    assert drift_line.rstrip(" |").rsplit("|", 1)[1].strip().startswith(f"{100 * drift_gain:+.1f} ± ")
    png = base64.b64decode(metadata["plot"].split("base64,", 1)[1].rstrip(")"))
    assert png.startswith(b"\x89PNG")


def test_demo_model_lands_in_the_target_band_and_reloads(demo_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drift_assets.tasks.demo_task import query_rows
    from drift_assets.tasks.tiny_model import greedy_accuracy

    settings = shared_settings(demo_dir)
    model = AutoModelForCausalLM.from_pretrained(settings.model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    assert model.config.head_dim == 64
    validation = query_rows(settings.demo.n_validation, settings.demo.seed, "validation")
    accuracy = greedy_accuracy(model, tokenizer, validation)
    low, high = settings.demo.recipe().target_accuracy
    assert low - 0.1 <= accuracy <= high + 0.1, accuracy  # validation is another sample than calibration
    ids = tokenizer("What is 3 + 4?\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "What is 3 + 4?\n"


@pytest.mark.vllm
def test_appending_to_the_pool_computes_gradients_only_for_new_examples(private_pipeline):
    settings, defs, instance = private_pipeline
    pool_path = settings.resolve(settings.data.training_pool)
    before = read(settings, "training_pool").height
    extra = [
        json.dumps({"prompt": f"What is {a} + {100 + a}?\n", "response": f"Answer: {100 + 2 * a}", "note": "appended"})
        for a in range(7)
    ]
    with open(pool_path, "a") as handle:
        handle.write("\n".join(extra) + "\n")
    observe_sources(defs, instance)
    materialize_assets(defs, instance, [AssetKey("training_pool"), AssetKey("training_pool_rejects")])
    computed = reused = computed_tokens = whole_tokens = 0
    for shard in ("000", "001", "002"):
        materialize_assets(defs, instance, [AssetKey("training_gradient_projections")], partition_key=f"base|{shard}")
        metadata = latest_metadata(instance, "training_gradient_projections")
        computed += metadata["rows_computed"]
        reused += metadata["rows_reused"]
        computed_tokens += metadata["cost_backward_tokens"]
        whole_tokens += metadata.get("cost_whole_backward_tokens", metadata["cost_backward_tokens"])
    assert computed == 7
    assert reused == before
    pool = read(settings, "training_pool")
    # The run's cost counts the new rows; the table's cost from scratch (a method's, in the benchmark) every row.
    appended = pool.filter(pl.col("note") == "appended")
    assert computed_tokens == (appended["n_prompt_tokens"] + appended["n_response_tokens"]).sum()
    assert whole_tokens == (pool["n_prompt_tokens"] + pool["n_response_tokens"]).sum()
    assert pool.height == before + 7
    assert pool.filter(pl.col("note") == "appended").height == 7


def test_default_projection_ranks_like_exact_gradients_on_the_demo_model(demo_dir):
    """Spearman >= 0.9 between scores from the default projection and from exact gradients.

    The target is signed like DRIFT's: + reference answers, − plausible wrong answers; the basis is
    fitted on the references, as the projection_basis asset does.
    """
    import json
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions, fit_basis, project_in_batches
    from drift_assets.core.gradients.tables import pool_token_pairs, query_token_pairs
    from drift_assets.core.study.stats import spearman
    from drift_assets.settings import load_settings
    from drift_assets.tasks.demo_task import Problem, format_response, plausible_wrong_answer, query_rows, training_pool_rows

    options = load_settings().projection.options()  # the shipped data/settings.yaml
    settings = shared_settings(demo_dir)
    model = AutoModelForCausalLM.from_pretrained(settings.model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
    pool = training_pool_rows(300, 0.25, 0.08, seed=5)
    messages = [
        json.dumps([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]) for r in pool
    ]
    pool_pairs = pool_token_pairs(tokenizer, messages)
    queries = query_rows(24, 5, "validation")
    rng = random.Random(0)
    wrong = []
    for query in queries:
        left, operator, right = query["prompt"].removeprefix("What is ").removesuffix("?\n").split()
        problem = Problem(int(left), int(right), operator)
        wrong.append(format_response(problem, plausible_wrong_answer(problem, rng), 0))
    prompts = [q["prompt"] for q in queries]
    target_pairs = query_token_pairs(tokenizer, prompts * 2, [q["reference_response"] for q in queries] + wrong)
    signs = torch.tensor([1.0] * len(queries) + [-1.0] * len(queries), dtype=torch.float64)
    basis = fit_basis(
        model, options, tokenizer, *query_token_pairs(tokenizer, prompts, [q["reference_response"] for q in queries]), 32
    )
    raw, unit = {}, {}
    for name, projector in (
        ("exact", LinearGradientProjector(model, ProjectionOptions(rank=None))),
        ("projected", LinearGradientProjector(model, options, basis)),
    ):
        train = project_in_batches(projector, tokenizer, *pool_pairs, batch_size=32).gradients.double()
        target = signs @ project_in_batches(projector, tokenizer, *target_pairs, batch_size=32).gradients.double()
        raw[name] = (train @ target).numpy()
        unit[name] = raw[name] / train.norm(dim=1).numpy()  # the default debias
    assert options.basis == "pca" and options.rank == 16
    assert spearman(raw["exact"], raw["projected"]) >= 0.9
    assert spearman(unit["exact"], unit["projected"]) >= 0.9


@pytest.mark.vllm
def test_the_fisher_hessian_streamed_over_shards_matches_one_dense_solve(private_pipeline):
    """influence.hessian: fisher through the asset (ΦᵀΦ accumulated shard by shard, a Cholesky
    solve) against (ΦᵀΦ/N + λI)⁻¹g solved at once from the stored tables."""
    settings, _, instance = private_pipeline
    fisher = settings.model_copy(update={"influence": settings.influence.model_copy(update={"hessian": "fisher"})})
    materialize_assets(build_definitions(fisher), instance, [AssetKey("influence_scores")])
    gradients = read(settings, "training_gradient_projections").sort("example_id")
    training = vectors(gradients).astype(np.float64)
    target = target_gradient(
        read(settings, "validation_gradients"),
        read(settings, "grades"),
        "onpolicy",
        settings.influence.weighting,
        settings.influence.unsolved,
    ).vector
    second_moment = training.T @ training / len(training)
    damping = settings.influence.damping * np.trace(second_moment) / len(second_moment)
    raw = training @ np.linalg.solve(second_moment + damping * np.eye(len(second_moment)), target)
    scores = read(settings, "influence_scores").sort("example_id")
    assert scores["example_id"].to_list() == gradients["example_id"].to_list()
    np.testing.assert_allclose(scores["score_raw"].to_numpy(), raw, rtol=1e-6, atol=1e-9 * np.abs(raw).max())
    unit = raw / np.linalg.norm(training, axis=1)
    np.testing.assert_allclose(scores["score"].to_numpy(), unit, rtol=1e-6, atol=1e-9 * np.abs(unit).max())
    # recorded to 3 significant digits
    assert latest_metadata(instance, "influence_scores")["hessian_damping"] == pytest.approx(damping, rel=5e-3)
    run_id = instance.get_latest_materialization_event(AssetKey("influence_scores")).run_id
    messages = [event.user_message for event in instance.all_logs(run_id)]
    k = training.shape[1]
    assert any(message.startswith(f"fitting the fisher Hessian: a {k}×{k} float64 matrix") for message in messages)
