"""The cost accounting: token passes of each kind of stage, counted by hand; the pipeline's sum of
what its steps recorded; each benchmark method's cost; the roofline's figures."""

import pytest

from drift_assets.core.runtime.cost import (
    PipelineCost,
    Recorded,
    StageCost,
    bound_share,
    examples_per_hour,
    generation_cost,
    gradient_pass_cost,
    method_cost,
    method_costs,
    peak_bf16_flops,
    pipeline_cost,
    scaled_to,
    total,
    trained_cost,
    training_cost,
)
from drift_assets_tests.helpers.cost_records import REFERENCE, demo_records, record


def test_a_training_run_counts_its_steps_batches_and_mean_length_forward_and_backward():
    cost = training_cost("sft", [10, 20, 30, 40], steps=6, batch_size=2)  # mean 25 tokens, 2 per step
    assert (cost.forward_tokens, cost.backward_tokens) == (300, 300)
    assert cost.token_passes == 300 + 2 * 300  # 3 per token: 6N FLOPs
    # A batch larger than the pool takes the pool.
    assert training_cost("sft", [10, 30], steps=1, batch_size=16).forward_tokens == 40


def test_generation_is_forward_only_and_a_gradient_pass_both_ways():
    generation = generation_cost("rollouts", prompt_tokens=[5, 7], generated_tokens=[3, 4, 5, 6])
    assert (generation.forward_tokens, generation.backward_tokens, generation.token_passes) == (30, 0, 30)
    gradients = gradient_pass_cost("gradients", [10, 20])
    assert gradients.token_passes == 90


def test_the_total_and_its_ratio_to_one_full_pool_sft_run():
    reference = training_cost("full-pool SFT", [10] * 8, steps=4, batch_size=4)  # 160 tokens: 480 passes
    stages = [
        StageCost("rollouts", 120, 0, 1.5),
        gradient_pass_cost("gradients", [10] * 8, wall_seconds=2.0),  # 80 tokens: 240 passes
        StageCost("scoring", 0, 0, 0.5),
    ]
    whole = total(stages)
    assert whole.token_passes == 360 and whole.wall_seconds == pytest.approx(4.0)
    assert stages[1].metadata(reference)["cost_vs_full_sft"] == 0.5
    assert whole.ratio(reference) == pytest.approx(0.75)


def test_a_stage_cost_reads_back_from_its_metadata():
    cost = StageCost("gradients", 1200, 1000, 3.25, "base")
    figures = cost.metadata(training_cost("sft", [10] * 4, steps=10, batch_size=4))  # 400 tokens: 1,200 passes
    assert figures == {
        "cost_forward_tokens": 1200,
        "cost_backward_tokens": 1000,
        "cost_token_passes": 3200,
        "cost_vs_full_sft": round(3200 / 1200, 4),
        "cost_wall_seconds": 3.25,
    }
    assert StageCost.from_metadata("gradients", figures, "base") == cost
    assert StageCost.from_metadata("gradients", {"rows": 3}) is None  # a materialization from before costs


def test_a_materialization_that_reused_rows_records_what_it_computed_and_what_the_table_costs_from_scratch():
    computed, whole = StageCost("gradients", 10, 10, 1.0, "base"), StageCost("gradients", 400, 400)
    figures = computed.metadata(whole=whole)
    assert figures["cost_token_passes"] == 30 and (
        figures["cost_whole_forward_tokens"],
        figures["cost_whole_backward_tokens"],
    ) == (
        400,
        400,
    )
    assert StageCost.from_metadata("gradients", figures, "base") == computed  # what this run cost
    assert StageCost.from_metadata("gradients", figures, "base", whole=True) == StageCost("gradients", 400, 400, 1.0, "base")
    # Nothing reused: the table's cost is the run's.
    assert StageCost.from_metadata("gradients", computed.metadata(), "base", whole=True) == computed
    records = [
        Recorded("training_gradient_projections", "base|000", "base", "again", figures),
        Recorded("warmup_checkpoints", "000010", "000010", "warm", StageCost("x", 100, 100).metadata()),
    ]
    assert pipeline_cost(records, REFERENCE).total.token_passes == 30 + 300
    assert pipeline_cost(records, REFERENCE, whole=True).total.token_passes == 1200 + 300


def test_the_pipeline_counts_a_run_once_and_keeps_the_evaluation_apart():
    cost = pipeline_cost(demo_records(), REFERENCE)
    assert cost.missing == ("training_gradient_projections[000010|001]",)
    # By hand: warm-up 900 + 2·900 = 2,700 (once, not per checkpoint); rollouts 100; gradients at
    # base 3·(30 + 50 + 100 + 110) = 870, at 000010 3·(30 + 50 + 100) = 540; scoring 0.
    split = {(part.stage, part.checkpoint): part.token_passes for part in cost.by_stage()}
    assert split == {
        ("rollouts", None): 100,
        ("warm-up", None): 2700,
        ("gradients", "base"): 870,
        ("gradients", "000010"): 540,
        ("scoring", None): 0,
    }
    assert cost.total.token_passes == 100 + 2700 + 870 + 540
    assert cost.ratio() == pytest.approx(4210 / 3000)
    assert cost.evaluation.token_passes == 2000 + 2 * 1500
    assert cost.stage("scoring").wall_seconds == 4.0
    head, parts = cost.lines()
    assert head.startswith("4,210 token passes, 1.40× one full-pool SFT run (3,000)")
    assert "the evaluation apart: 1.67×, 30 s" in head and "no cost recorded by training_gradient_projections[000010|001]" in head
    assert parts.split(" | ") == [
        "rollouts 0.03× 4 s",
        "warm-up 0.90× 20 s",
        "gradients at base 0.29× 4 s",
        "gradients at 10 steps 0.18× 3 s",
        "scoring 4 s",
    ]
    rows = {row["stage"]: row for row in cost.rows()}
    assert rows["pipeline"]["token_passes"] == 4210 and rows["evaluation"]["vs_full_sft"] == round(5000 / 3000, 4)
    assert "| gradients at base | 290 | 290 | 870 | 0.29 | 4 |" in cost.markdown()


def test_an_asset_outside_the_pipeline_has_no_cost_to_add():
    with pytest.raises(ValueError, match="grades records no cost"):
        pipeline_cost([record("grades", "base", "r", 1)], REFERENCE)


def test_each_benchmark_method_costs_what_it_needs():
    from drift_assets.core.study.benchmark import METHODS

    cost = pipeline_cost(demo_records(), REFERENCE)
    pool, validation = 600, 90
    costs = {method: method_cost(method, cost, pool, validation) for method in METHODS}
    assert [method for method, figure in costs.items() if figure is None] == []  # every method has one
    passes = {method: figure.token_passes for method, figure in costs.items()}
    assert passes["full"] == passes["random"] == passes["oracle"] == passes["bm25"] == passes["dsir"] == 0
    assert passes["loss"] == passes["grape"] == passes["self_distill"] == 600 and passes["rds"] == 690  # forward passes only
    assert passes["less"] == passes["less_round_robin"] == passes["dynamics"] == passes["offpolicy"]
    assert passes["influence"] == 870  # the base model's gradients alone
    assert passes["drift"] == passes["drift_signed"] == cost.total.token_passes == 4210
    assert passes["offpolicy"] == 2700 + 870 + 540  # no rollouts
    assert passes["drift_base"] == 60 + 870  # the base checkpoint's rollouts and gradients, no warm-up
    # The warm-up and the rollouts and gradients at the base model and the last checkpoint (here the
    # only other one): everything but scoring, which costs nothing.
    assert passes["drift_last"] == 2700 + 100 + 870 + 540
    ratios = method_costs(["loss", "drift", "unknown"], cost, pool, validation)
    assert ratios == {"loss": 0.2, "drift": round(4210 / 3000, 4), "unknown": None}


def test_a_pipeline_without_a_reference_run_has_no_ratio():
    empty = PipelineCost((StageCost("rollouts", 10, 0, 1.0, "base"),), StageCost("full-pool SFT", 0))
    assert empty.ratio() is None and "no full-pool SFT run to compare" in empty.lines()[0]


def test_the_roofline_reproduces_the_fields_marks():
    """The issue's figures: a 7B model on an H100 is bounded by about 166k examples of 512 tokens per
    GPU-hour (6N FLOPs per token at 989 TFLOP/s), and bergson's 91k is 54% of it."""
    h100 = peak_bf16_flops("NVIDIA H100 80GB HBM3")
    assert h100 == 989e12
    bound = examples_per_hour(h100 / (6 * 7e9))
    assert bound == pytest.approx(166_000, rel=0.01)
    bergson_tokens_per_s = 91_000 * 512 / 3600
    assert bound_share(bergson_tokens_per_s, 7_000_000_000, h100) == pytest.approx(0.55, abs=0.01)
    # A rate measured at 1.1B parameters, projected to 7B: the examples fall as N, the share does not.
    measured = 20_000.0
    assert scaled_to(examples_per_hour(measured), 1_100_000_000) == pytest.approx(examples_per_hour(measured) * 1.1 / 7)
    assert bound_share(measured * 1.1 / 7, 7_000_000_000, h100) == pytest.approx(bound_share(measured, 1_100_000_000, h100))


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
        ("NVIDIA A10", 125),
        ("NVIDIA A10G", None),  # not listed: the check times a matmul instead
        ("Tesla T4", None),
    ],
)
def test_the_peak_is_looked_up_by_the_devices_name(name, tflops):
    assert peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_a_fine_tune_counts_the_tokens_of_the_batches_it_trained_on(tiny):
    """SftRun.tokens against the batches batch_plan gives (the oracle: the plan, not the loop)."""
    import copy
    import json

    from drift_assets.core.gradients.tables import pool_token_pairs
    from drift_assets.core.training.sft import SftOptions, batch_plan, fine_tune

    model, tokenizer, _ = tiny
    messages = [
        json.dumps([{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"Answer: {2 * i}"}])
        for i in range(1, 8)
    ]
    options = SftOptions(steps=5, batch_size=3, learning_rate=1e-3)
    run = fine_tune(copy.deepcopy(model), tokenizer, messages, options, log=lambda _: None)
    prompts, responses = pool_token_pairs(tokenizer, messages)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    plan = batch_plan(messages, options.batch_size, options.seed)
    expected = sum(sum(lengths[i] for i in next(plan)) for _ in range(options.steps))
    assert run.tokens == expected > 0
    assert trained_cost("warm-up", run.tokens).token_passes == 3 * expected


def test_a_pca_fit_counts_every_pass_over_the_references(tiny):
    from drift_assets.core.gradients.projection import ProjectionOptions, covariance_groups, fit_basis, target_layers
    from drift_assets.core.gradients.tables import sequence_tokens

    model, tokenizer, batch = tiny
    prompts = [[int(t) for t in row[:4]] for row in batch.input_ids]
    responses = [[int(t) for t in row[4:9]] for row in batch.input_ids]
    options = ProjectionOptions(rank=4, basis="pca")
    one_pass = fit_basis(model, options, tokenizer, prompts, responses, batch_size=4, budget_bytes=2**40)
    assert one_pass.fit_tokens == sequence_tokens(prompts, responses) == 6 * 9
    budget = 4 * (64**2 + 64**2) + 1  # one 64×64 layer's covariances per group
    groups = len(covariance_groups(target_layers(model, options.target_modules), budget))
    assert groups > 1
    several = fit_basis(model, options, tokenizer, prompts, responses, batch_size=4, budget_bytes=budget)
    assert several.fit_tokens == groups * 6 * 9
    assert fit_basis(model, ProjectionOptions(rank=4, basis="random"), tokenizer, prompts, responses, 4).fit_tokens == 0


def test_generation_reports_each_prompt_once(tiny):
    from drift_assets.core.generation.engines import SamplingSettings, TransformersEngine

    model, tokenizer, _ = tiny
    prompts = [[1, 40, 41, 42], [1, 43, 44]]
    report = TransformersEngine(model, tokenizer, device="cpu").generate(
        prompts, SamplingSettings(n=3, temperature=1.0, max_tokens=4, seed=0)
    )
    assert report.prompt_tokens == 7  # each prompt once, whatever the samples per prompt
    assert report.generated_tokens == sum(len(c.token_ids) for group in report.completions for c in group)


def test_the_benchmark_summary_shows_each_methods_cost_where_the_table_has_it():
    import polars as pl

    from drift_assets.core.study.benchmark import summary_markdown

    rows = [
        {"method": m, "seed": s, "n_selected": 10, "accuracy": 0.5, "accuracy_low": 0.4, "accuracy_high": 0.6}
        | {"noise_auc": None, "order_auc": None, "noisy_share": None, "wall_seconds": 1.0}
        for m in ("full", "drift")
        for s in (0, 1)
    ]
    table = pl.DataFrame(rows, schema_overrides={"noise_auc": pl.Float64, "order_auc": pl.Float64, "noisy_share": pl.Float64})
    costed = table.with_columns(cost_vs_full_sft=pl.col("method").replace_strict({"full": 0.0, "drift": 1.85}))
    drift = next(line for line in summary_markdown(costed).splitlines() if line.startswith("| drift |"))
    assert drift.split(" | ")[8] == "1.85"  # beside the wall seconds, before the paired difference
    assert next(line for line in summary_markdown(table).splitlines() if line.startswith("| drift |")).split(" | ")[8] == "–"


def test_a_materialization_that_reused_rows_before_the_whole_cost_was_recorded_leaves_the_methods_using_it_unknown():
    """Written before the cost from scratch was recorded, a re-materialization that reused stored rows
    holds only what it computed: a method that reads that table has no known cost (not an understated one)."""
    records = demo_records()
    reused = StageCost("x", 5, 5, 1.0).metadata() | {"rows_reused": 90, "rows_computed": 5}
    records[10] = Recorded("training_gradient_projections", "000010|000", "000010", "again", reused)
    cost = pipeline_cost(records, REFERENCE, whole=True)
    assert cost.unknown == (("gradients", "000010"),)
    assert "training_gradient_projections[000010|000]" in cost.missing
    costs = {
        method: method_cost(method, cost, 600, 90)
        for method in ("drift", "drift_last", "offpolicy", "drift_base", "influence", "loss")
    }
    assert costs["drift"] is costs["drift_last"] is costs["offpolicy"] is None  # they read the gradients at 000010
    assert costs["drift_base"].token_passes == 60 + 870 and costs["influence"].token_passes == 870  # the base model's alone
    assert costs["loss"].token_passes == 600
    # What this run computed is still the run's cost (the pipeline's summary line).
    assert pipeline_cost(records, REFERENCE).unknown == ()
