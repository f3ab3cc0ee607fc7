"""``less_onpolicy``: LESS's Adam-preconditioned training features against DRIFT's on-policy target.

Checked against per-example autograd gradients, Adam's update and the projection written out here
(the helpers of the LESS tests), and DRIFT's ``positive`` weights counted by hand.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from drift_assets.core.attribution.less import (
    AdamMoments,
    CorrectRollouts,
    LessCheckpoint,
    RademacherProjector,
    correct_rollouts,
    less_along,
    less_onpolicy_matrix,
    less_scores_along,
)
from drift_assets.core.gradients.tables import response_token_pairs
from drift_assets.core.runtime.cost import method_cost, pipeline_cost
from drift_assets.core.study.benchmark import LESS_METHODS, METHODS, less_scores
from drift_assets.settings import OPTIMIZER_STATE_METHODS, parse_settings
from drift_assets.tasks.tiny_model import build_char_tokenizer
from drift_assets_tests.helpers.cost_records import REFERENCE, demo_records
from drift_assets_tests.helpers.two_layers import TwoLayers, hand_adam_steps, hand_gradient, random_adam_moments, unit


def encoder():
    tokenizer = build_char_tokenizer()
    return tokenizer, (lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])


def test_less_onpolicy_weighs_each_query_s_correct_rollouts_and_the_checkpoints_by_learning_rate():
    tokenizer, encode = encoder()
    training = ([encode("ab"), encode("c"), encode("de")], [encode("xy"), encode("z"), encode("w")])
    references = ([encode("a"), encode("dd")], [encode("xz"), encode("q")])
    rates = {"a": 3e-3, "b": 1e-3}
    # At a: q1 has two right answers, q2 one (q3 none); at b: q1 one, q3 one (q2 none).
    rollouts = {
        "a": CorrectRollouts(
            ["q1", "q1", "q2"],
            np.array([0.5, 0.5, 1.0]),
            [encode("a"), encode("a"), encode("dd")],
            [encode("xz"), encode("yy"), encode("q")],
        ),
        "b": CorrectRollouts(["q1", "q3"], np.array([1.0, 1.0]), [encode("a"), encode("e")], [encode("zz"), encode("c")]),
    }
    vocabulary = len(tokenizer)
    checkpoints, projector = [], None
    cosines: dict[str, dict[str, np.ndarray]] = {}  # checkpoint -> query -> (examples,)
    expected_reference = np.zeros((3, 2))
    for seed, (name, rate) in enumerate(rates.items()):
        model = TwoLayers(vocabulary, seed=seed)
        moments = random_adam_moments(model, seed)
        projector = projector or RademacherProjector(sum(p.numel() for p in model.parameters()), 16)
        matrix = projector.matrix().double() / 4.0  # ±1/√16
        steps = hand_adam_steps(model, moments, matrix, training)
        correct = rollouts[name]
        by_query: dict[str, np.ndarray] = {}
        for query, weight, prompt, response in zip(
            correct.query_ids, correct.weights, correct.prompt_ids, correct.response_ids, strict=True
        ):
            cosine = (steps @ unit(hand_gradient(model, prompt, response) @ matrix)).numpy()
            by_query[query] = by_query.get(query, 0.0) + weight * cosine
        cosines[name] = by_query
        reference = torch.stack([unit(hand_gradient(model, p, r) @ matrix) for p, r in zip(*references, strict=True)])
        expected_reference += rate / sum(rates.values()) * (steps @ reference.T).numpy()
        checkpoints.append((name, model, AdamMoments(seed + 1, rate, moments), correct))

    # q1: 3/4 of its cosines at a, 1/4 at b; q2 and q3 have a target at one checkpoint each.
    expected = np.column_stack([0.75 * cosines["a"]["q1"] + 0.25 * cosines["b"]["q1"], cosines["a"]["q2"], cosines["b"]["q3"]])
    scores = less_scores_along(iter(checkpoints), tokenizer, training, references, projected=16)
    assert scores.onpolicy_query_ids == ["q1", "q2", "q3"]
    np.testing.assert_allclose(scores.onpolicy, expected, rtol=1e-4, atol=1e-5)
    # The same training features against the references are LESS's own scores.
    np.testing.assert_allclose(scores.reference, expected_reference, rtol=1e-4, atol=1e-5)
    alone = less_along(((c, model, moments) for c, model, moments, _ in checkpoints), tokenizer, training, references, 16)
    np.testing.assert_allclose(alone, scores.reference, rtol=1e-6, atol=1e-8)
    # Without references only the on-policy side is computed.
    onpolicy_only = less_scores_along(iter(checkpoints), tokenizer, training, None, projected=16)
    assert onpolicy_only.reference is None
    np.testing.assert_allclose(onpolicy_only.onpolicy, scores.onpolicy, rtol=1e-6, atol=1e-8)


def frames(correct: dict[str, list[bool]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rollouts and grades: ``correct`` maps a query to its rollouts' grades."""
    rows, grades = [], []
    for query, flags in correct.items():
        for index, flag in enumerate(flags):
            rollout_id = f"{query}-{index}"
            completion = f"so {index} Answer: {index + 1}"
            rows.append(
                {
                    "rollout_id": rollout_id,
                    "query_id": query,
                    "prompt": f"What is {query}?",
                    "completion": completion,
                    "token_ids": [ord(c) % 90 + 3 for c in completion],
                    "model_fingerprint": "m1",
                }
            )
            grades.append({"rollout_id": rollout_id, "query_id": query, "correct": flag, "reward": float(flag)})
    return pl.DataFrame(rows), pl.DataFrame(grades)


def test_each_query_s_correct_rollouts_weigh_one_over_their_number_and_the_wrong_ones_nothing():
    tokenizer, _ = encoder()
    rollouts, grades = frames({"q1": [True, False, True, True], "q2": [False, False], "q3": [False, True]})
    correct = correct_rollouts(tokenizer, rollouts, grades, answer_marker="Answer:")
    assert correct.query_ids == ["q1", "q1", "q1", "q3"]  # q2, never right here, has no target
    np.testing.assert_allclose(correct.weights, [1 / 3, 1 / 3, 1 / 3, 1.0])
    chosen = rollouts.filter(pl.col("rollout_id").is_in(["q1-0", "q1-2", "q1-3", "q3-1"]))
    prompts, responses = response_token_pairs(tokenizer, chosen["prompt"], chosen["completion"], chosen["token_ids"], "Answer:")
    assert correct.prompt_ids == prompts and correct.response_ids == responses
    # The answer span: the tokens from the marker on, the sampled ids kept as they are.
    assert all(len(response) < len(ids) for response, ids in zip(responses, chosen["token_ids"], strict=True))
    assert correct.rollout_ids == ["q1-0", "q1-2", "q1-3", "q3-1"]

    nobody = correct_rollouts(tokenizer, *frames({"q1": [False], "q2": [False, False]}))
    assert nobody.query_ids == [] and nobody.weights.shape == (0,)


def test_a_rollout_without_a_grade_is_an_error_naming_it():
    tokenizer, _ = encoder()
    rollouts, grades = frames({"q1": [True, False]})
    with pytest.raises(ValueError, match=r"checkpoint 000050: 1 rollouts have no grade \(e\.g\. q1-1\).*grades"):
        correct_rollouts(tokenizer, rollouts, grades.filter(pl.col("rollout_id") == "q1-0"), checkpoint="000050")


def test_rollouts_another_model_sampled_are_an_error_naming_both():
    tokenizer, _ = encoder()
    rollouts, grades = frames({"q1": [True, False]})
    assert correct_rollouts(tokenizer, rollouts, grades, model_fingerprint="m1").query_ids == ["q1"]
    with pytest.raises(
        ValueError, match=r"checkpoint 000050: rollouts were sampled from model \['m1'\], not the checkpoint's m2"
    ):
        correct_rollouts(tokenizer, rollouts, grades, checkpoint="000050", model_fingerprint="m2")


def test_no_correct_rollout_at_any_checkpoint_is_an_error_naming_the_checkpoints():
    nothing = np.zeros((3, 0))
    checkpoints = [LessCheckpoint("000050", 1e-3, nothing, []), LessCheckpoint("000100", 1e-3, nothing, [])]
    with pytest.raises(ValueError, match=r"no correct rollout at any warm-up checkpoint \(000050, 000100\).*temperature"):
        less_onpolicy_matrix(checkpoints)
    with pytest.raises(ValueError, match="warmup.steps is empty"):
        less_onpolicy_matrix([])


def test_a_checkpoint_without_optimizer_state_names_its_file_and_the_methods_that_need_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/optimizer_state.pt: .*no optimizer state.*less_onpolicy"):
        AdamMoments.load(tmp_path)


def test_less_onpolicy_lets_the_queries_take_turns():
    matrix = np.array([[0.9, 0.0], [0.8, 0.1], [0.0, 0.2], [0.1, 0.05]])
    turns = less_scores("less_onpolicy", ["a", "b", "c", "d"], matrix)
    # Query 1 takes a, query 2 takes c, query 1 then b, query 2 then d; the score is the mean over the queries.
    assert turns["example_id"].to_list() == ["a", "c", "b", "d"] and turns["rank"].to_list() == [1, 2, 3, 4]
    assert turns["score"].to_list() == pytest.approx([0.45, 0.1, 0.45, 0.075])


def test_less_onpolicy_is_a_benchmark_method_that_saves_the_optimizer_state(tmp_path):
    assert "less_onpolicy" in METHODS and "less_onpolicy" in LESS_METHODS and "less_onpolicy" in OPTIMIZER_STATE_METHODS
    settings = parse_settings({"benchmark": {"methods": ["full", "less_onpolicy"]}}, "settings.yaml", tmp_path)
    assert settings.warmup_saves_optimizer_state
    assert "less_onpolicy" not in parse_settings({}, "settings.yaml", tmp_path).benchmark.methods  # run on request


def test_less_onpolicy_costs_less_s_passes_and_the_rollouts_at_the_warm_up_checkpoints():
    cost = pipeline_cost(demo_records(), REFERENCE)
    # The warm-up (2700), the gradients at every checkpoint (870 + 540, as less counts them) and the
    # rollouts at the warm-up's checkpoint (40), not the base model's (60), which it does not read.
    assert method_cost("less_onpolicy", cost, 600, 90).token_passes == 2700 + 870 + 540 + 40
    assert method_cost("less", cost, 600, 90).token_passes == 2700 + 870 + 540


def test_the_benchmark_reads_the_validation_span_only_where_less_onpolicy_runs(tmp_path):
    from drift_assets.defs.benchmark import BenchmarkGiven, OnPolicySpan, build_benchmark
    from drift_assets.settings import given

    def version(methods: list[str], span: str) -> str:
        settings = parse_settings(
            {"benchmark": {"methods": methods}, "projection": {"validation_span": span}}, "settings.yaml", tmp_path
        )
        onpolicy = given(OnPolicySpan, settings) if "less_onpolicy" in methods else None
        spec, _ = build_benchmark(given(BenchmarkGiven, settings, onpolicy=onpolicy), lambda: None)
        return spec.code_version

    assert version(["less_onpolicy"], "answer") != version(["less_onpolicy"], "completion")
    assert version(["less"], "answer") == version(["less"], "completion")
