"""The cost accounting: token passes of each kind of stage, counted by hand."""

import pytest

from drift_assets.core.cost import StageCost, cost_line, generation_cost, gradient_pass_cost, total, training_cost


def test_a_training_run_counts_its_steps_batches_and_mean_length_forward_and_backward():
    cost = training_cost("sft", [10, 20, 30, 40], steps=6, batch_size=2)  # mean 25 tokens, 2 per step
    assert (cost.forward_tokens, cost.backward_tokens) == (300, 300)
    assert cost.token_passes == 300 + 2 * 300  # 3 per token: 6N FLOPs
    assert cost.flops(1_000) == 2 * 1_000 * 900
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
    line = cost_line(stages, reference)
    assert line.startswith("360 token passes, 0.75× one full-pool SFT run")
    assert "rollouts 0.25×" in line and "gradients 0.50×" in line and "scoring" not in line
