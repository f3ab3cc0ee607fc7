"""The parity baselines of the method benchmark, each against an independent computation on a toy.

LESS against per-example autograd, Adam's update and a projection written out here; RDS+'s pooling
weights by hand; DSIR's weights from n-grams counted here and hashed as its package says;
GRAPE, training dynamics, self-distillation and standard influence functions on hand-made tables.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import polars as pl
import pytest
import torch

from drift_assets.core.attribution.less import (
    OPTIMIZER_STATE_FILE,
    AdamMoments,
    RademacherProjector,
    adam_preconditioned,
    less_along,
)
from drift_assets.core.attribution.trajectory import CheckpointGradients, warm_up
from drift_assets.core.data.publish import EVALUATION_ONLY_COLUMNS, export_columns
from drift_assets.core.generation.engines import Completion, GenerationReport
from drift_assets.core.study.baselines import (
    dsir_log_weights,
    gumbel_order,
    likeliest_per_prompt,
    position_weighted_hidden_states,
)
from drift_assets.core.study.benchmark import (
    BASE_ONLY,
    MethodScorer,
    ScoringSettings,
    dynamics_scores,
    grape_scores,
    less_scores,
    noisy_share,
    order_auc,
    scoring_for,
    selected_ids,
    selection_of,
    self_distilled,
    similarity_scores,
)
from drift_assets.core.training.sft import SftOptions
from drift_assets.settings import parse_settings
from drift_assets.tasks import get_task
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama
from drift_assets_tests.helpers.two_layers import TwoLayers, hand_adam_steps, hand_gradient, random_adam_moments, unit

# -- LESS ----------------------------------------------------------------------------------------


def test_less_scores_are_the_learning_rate_weighted_cosines_of_adam_steps_with_reference_gradients():
    tokenizer = build_char_tokenizer()
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    training = ([encode("ab"), encode("c"), encode("de")], [encode("xy"), encode("z"), encode("w")])
    validation = ([encode("a"), encode("dd")], [encode("xz"), encode("q")])
    vocabulary = len(tokenizer)
    checkpoints, expected = [], np.zeros((3, 2))
    rates = {"a": 3e-3, "b": 1e-3}  # LESS weighs the checkpoints 0.75 and 0.25
    projector = None
    for seed, (name, rate) in enumerate(rates.items()):
        model = TwoLayers(vocabulary, seed=seed)
        moments = random_adam_moments(model, seed)
        adam = AdamMoments(step=seed + 1, learning_rate=rate, moments=moments)
        dimension = sum(p.numel() for p in model.parameters())
        projector = projector or RademacherProjector(dimension, 16)
        matrix = projector.matrix().double() / 4.0  # ±1/√16
        steps = hand_adam_steps(model, moments, matrix, training)
        references = [unit(hand_gradient(model, p, r) @ matrix) for p, r in zip(*validation, strict=True)]
        cosines = torch.stack([torch.stack([s @ q for q in references]) for s in steps]).numpy()
        expected += rate / sum(rates.values()) * cosines
        checkpoints.append((name, model, adam))

    scores = less_along(iter(checkpoints), tokenizer, training, validation, projected=16)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    # Unprojected, the cosines are those of the whole vectors: the projection only approximates them.
    exact = less_along(iter(checkpoints), tokenizer, training, validation, projected=None)
    assert exact.shape == (3, 2) and not np.allclose(exact, scores, atol=1e-3)


def test_adam_preconditioning_is_less_s_formula():
    g, m, v = torch.tensor([[2.0, -1.0]]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0])
    expected = [(0.9 * 0.5 + 0.2) / math.sqrt(0.999 + 0.004 + 1e-8), -0.1 / math.sqrt(0.001 + 1e-8)]
    np.testing.assert_allclose(adam_preconditioned(g, m, v).numpy()[0], expected, rtol=1e-6)


def test_the_projection_is_a_seeded_rademacher_matrix_whatever_the_batching():
    projector = RademacherProjector(70_000, 8, seed=3)  # more rows than one generated block
    matrix = projector.matrix()
    assert matrix.shape == (70_000, 8) and set(matrix.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(RademacherProjector(70_000, 8, seed=3).matrix(), matrix)
    assert not torch.equal(RademacherProjector(70_000, 8, seed=4).matrix(), matrix)
    vectors = torch.randn(5, 70_000, generator=torch.Generator().manual_seed(0))
    together = projector.project(vectors)
    one_by_one = torch.cat([projector.project(vectors[i : i + 1]) for i in range(5)])
    exact = (vectors.double() @ matrix.double() / math.sqrt(8)).float()
    # Entries near 100, sums of 70,000 float32 terms whose order the BLAS picks by batch and thread
    # count: equal to the float64 product within float32 rounding, a wrong or missing block is not.
    for projected in (together, one_by_one):
        torch.testing.assert_close(projected, exact, rtol=0, atol=1e-2)
    with pytest.raises(ValueError, match="takes 70000-dimensional gradients, got 3"):
        projector.project(torch.zeros(1, 3))


def test_the_projection_keeps_inner_products_as_johnson_lindenstrauss_says():
    generator = torch.Generator().manual_seed(1)
    vectors = torch.nn.functional.normalize(torch.randn(6, 3000, generator=generator), dim=1)
    projected = RademacherProjector(3000, 2048).project(vectors)
    # k = 2048: each inner product moves by about 1/√k ≈ 0.02.
    np.testing.assert_allclose((projected @ projected.T).numpy(), (vectors @ vectors.T).numpy(), atol=0.1)


def test_the_warm_up_saves_adam_s_moments_and_each_checkpoint_s_mean_learning_rate(tmp_path):
    tokenizer = build_char_tokenizer()
    shape = TinyLlamaShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64)
    model = build_tiny_llama(tokenizer, shape, seed=1)
    examples = [
        json.dumps([{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"Answer: {i + 1}"}])
        for i in range(12)
    ]
    saved: dict[int, AdamMoments] = {}
    options = SftOptions(steps=4, batch_size=4, learning_rate=2e-3, schedule="linear", seed=0)
    warm_up(model, tokenizer, examples, options, [2, 4], lambda _: None, lambda _: None, saved.__setitem__)
    # The linear schedule's rates are lr·(1, 3/4, 1/2, 1/4): steps 1-2 average 7/8 lr, steps 3-4 3/8 lr.
    assert saved[2].learning_rate == pytest.approx(2e-3 * 7 / 8) and saved[4].learning_rate == pytest.approx(2e-3 * 3 / 8)
    names = [name for name, _ in model.named_parameters()]
    assert saved[4].names == names and saved[4].step == 4
    for name, weights in model.named_parameters():
        first, second = saved[4].moments[name]
        assert first.shape == second.shape == weights.shape and (second >= 0).all()
    assert not torch.equal(saved[2].moments[names[0]][1], saved[4].moments[names[0]][1])
    saved[4].save(tmp_path)
    loaded = AdamMoments.load(tmp_path)
    assert loaded.step == 4 and loaded.learning_rate == saved[4].learning_rate and loaded.names == names
    torch.testing.assert_close(loaded.flat()[1], saved[4].flat()[1], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="no optimizer state.*warmup.optimizer_state"):
        AdamMoments.load(tmp_path / "elsewhere")
    assert OPTIMIZER_STATE_FILE in {path.name for path in tmp_path.iterdir()}


def test_less_by_score_and_less_taking_turns():
    matrix = np.array([[0.9, 0.0], [0.8, 0.1], [0.0, 0.2], [0.1, 0.05]])
    by_score = less_scores("less", ["a", "b", "c", "d"], matrix)
    assert by_score["example_id"].to_list() == ["a", "b", "c", "d"]  # means 0.45, 0.45 (by id), 0.1, 0.075
    assert by_score["score"].to_list() == pytest.approx([0.45, 0.45, 0.1, 0.075])
    turns = less_scores("less_round_robin", ["a", "b", "c", "d"], matrix)
    # Query 1 takes a, query 2 takes c, query 1 then b, query 2 then d.
    assert turns["example_id"].to_list() == ["a", "c", "b", "d"] and turns["rank"].to_list() == [1, 2, 3, 4]


def test_the_warm_up_saves_optimizer_state_where_the_benchmark_asks_for_less(tmp_path):
    def saves(**groups) -> bool:
        return parse_settings(groups, "settings.yaml", tmp_path).warmup_saves_optimizer_state

    assert saves()  # the default method list runs LESS
    assert not saves(benchmark={"methods": ["full", "drift"]})
    assert saves(benchmark={"methods": ["full", "less_round_robin"]})
    assert saves(benchmark={"methods": ["full"]}, warmup={"optimizer_state": True})
    assert not saves(warmup={"optimizer_state": False})


def test_a_checkpoint_without_optimizer_state_names_its_file_and_the_methods_that_need_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/optimizer_state.pt: .*no optimizer state.*less_round_robin"):
        AdamMoments.load(tmp_path)


# -- RDS+ ----------------------------------------------------------------------------------------


def test_rds_weights_each_token_s_last_hidden_state_by_its_position():
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, TinyLlamaShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), seed=3)
    model.eval()
    prompts = [tokenizer("ab")["input_ids"], tokenizer("xyz w")["input_ids"]]
    responses = [tokenizer("c", add_special_tokens=False)["input_ids"], tokenizer("ok", add_special_tokens=False)["input_ids"]]
    pooled = position_weighted_hidden_states(model, tokenizer, prompts, responses, batch_size=2)  # the first row is padded
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        with torch.no_grad():
            hidden = model(torch.tensor([prompt + response]), output_hidden_states=True).hidden_states[-1][0].double()
        length = len(prompt) + len(response)
        weights = [(t + 1) / (length * (length + 1) / 2) for t in range(length)]  # 1, 2, ..., L over L(L+1)/2
        expected = sum(weight * hidden[t] for t, weight in enumerate(weights))
        np.testing.assert_allclose(pooled[row], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_rds_lets_the_queries_take_turns():
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, TinyLlamaShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64), seed=5)
    model.eval()

    def chat(prompt, response):
        return json.dumps([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])

    texts = [("What is 1 + 2?", "Answer: 3"), ("Spell cat", "c a t"), ("What is 1 + 3?", "Answer: 4"), ("Spell dog", "d o g")]
    pool = pl.DataFrame(
        {"example_id": ["e0", "e1", "e2", "e3"], "prompt": [p for p, _ in texts], "response": [r for _, r in texts]}
    ).with_columns(messages=pl.Series([chat(p, r) for p, r in texts]))
    queries = pl.DataFrame({"prompt": ["What is 2 + 2?", "Spell cow"], "reference_response": ["Answer: 4", "c o w"]})
    scores = similarity_scores("rds", pool, queries, model, tokenizer)

    def pooled(prompt, response):
        ids = (
            tokenizer(prompt)["input_ids"] + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        )
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double().numpy()
        weights = np.arange(1, len(ids) + 1) / (len(ids) * (len(ids) + 1) / 2)
        return weights @ hidden

    pool_vectors = [pooled(p, r) for p, r in texts]
    query_vectors = [pooled(p, r) for p, r in zip(queries["prompt"], queries["reference_response"], strict=True)]
    cosine = np.array([[q @ e / np.linalg.norm(q) / np.linalg.norm(e) for e in pool_vectors] for q in query_vectors])
    taken: list[int] = []  # RDS+'s selection: each query in turn takes its most similar example not yet taken
    while len(taken) < 4:
        for query in range(2):
            best = max((e for e in range(4) if e not in taken), key=lambda e: cosine[query, e], default=None)
            if best is not None and len(taken) < 4:
                taken.append(best)
    assert scores["example_id"].to_list() == [f"e{e}" for e in taken]
    by_id = dict(zip(scores["example_id"], scores["score"], strict=True))
    np.testing.assert_allclose([by_id[f"e{e}"] for e in range(4)], cosine.max(axis=0), rtol=1e-5)


# -- DSIR ----------------------------------------------------------------------------------------


def bucket(text: str, buckets: int = 10_000) -> int:
    """data-selection's hash: sha256 of the n-gram (words joined by a space), modulo the buckets."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % buckets


def test_dsir_weights_from_hand_counted_ngrams():
    raw = ["The cat sat.", "a dog sat", "cat cat"]
    target = ["the cat", "cat sat"]
    # Lower-cased word-punct tokens, then unigrams and bigrams, counted by hand:
    raw_grams = [
        ["the", "cat", "sat", ".", "the cat", "cat sat", "sat ."],
        ["a", "dog", "sat", "a dog", "dog sat"],
        ["cat", "cat", "cat cat"],
    ]
    target_grams = ["the", "cat", "the cat", "cat", "sat", "cat sat"]

    def distribution(grams):
        counts = np.zeros(10_000)
        for gram in grams:
            counts[bucket(gram)] += 1
        return counts / counts.sum()

    raw_p = distribution([gram for grams in raw_grams for gram in grams])
    target_p = distribution(target_grams)
    log_ratio = np.log(target_p + 1e-8) - np.log(raw_p + 1e-8)
    expected = [sum(log_ratio[bucket(gram)] for gram in grams) for grams in raw_grams]
    np.testing.assert_allclose(dsir_log_weights(raw, target), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="needs raw texts"):
        dsir_log_weights([], target)


def test_dsir_resamples_in_proportion_to_the_importance_weights():
    log_weights = np.log([0.1, 0.2, 0.7])
    first = [int(np.argmin(gumbel_order(log_weights, seed))) for seed in range(4000)]
    np.testing.assert_allclose(np.bincount(first, minlength=3) / 4000, [0.1, 0.2, 0.7], atol=0.03)
    assert gumbel_order(log_weights, 7).tolist() == gumbel_order(log_weights, 7).tolist()
    assert sorted(gumbel_order(log_weights, 7).tolist()) == [1, 2, 3]


# -- GRAPE, training dynamics ----------------------------------------------------------------------


def test_grape_keeps_each_prompt_s_likeliest_response_first():
    pool = pl.DataFrame({"example_id": ["a", "b", "c", "d", "e", "f"], "prompt": ["p1", "p1", "p1", "p2", "p3", "p3"]})
    losses = pl.DataFrame({"example_id": ["a", "b", "c", "d", "e", "f"], "loss_per_token": [0.5, 0.2, 0.9, 0.7, 0.1, 0.3]})
    scores = grape_scores(pool, losses)
    # Likeliest per prompt: b (p1, 0.2), d (p2, 0.7), e (p3, 0.1), by likelihood e, b, d; then the
    # second likeliest (f 0.3, a 0.5), then c. The loss filter would take e, b, f, a before d.
    assert scores["example_id"].to_list() == ["e", "b", "d", "f", "a", "c"]
    assert dict(zip(scores["example_id"], scores["score"])) == pytest.approx(
        {"a": -0.5, "b": -0.2, "c": -0.9, "d": -0.7, "e": -0.1, "f": -0.3}
    )
    assert likeliest_per_prompt(["p", "p"], np.array([1.0, 1.0])).tolist() == [1, 2]  # a tie: the first row first
    with pytest.raises(ValueError, match="no base-model loss"):
        grape_scores(pool, losses.head(5))


def test_dynamics_scores_the_mean_confidence_along_the_checkpoints():
    checkpoints = ["base", "000010", "000020"]
    table = {"a": [2.0, 1.0, 0.5], "b": [0.5, 0.4, 0.3], "c": [3.0, 3.0, 3.0]}
    losses = pl.DataFrame(
        [
            {"example_id": example, "checkpoint": checkpoint, "loss_per_token": loss}
            for example, values in table.items()
            for checkpoint, loss in zip(checkpoints, values, strict=True)
        ]
    )
    scores = dynamics_scores(losses, checkpoints)
    expected = {example: sum(math.exp(-loss) for loss in values) / 3 for example, values in table.items()}
    assert dict(zip(scores["example_id"], scores["score"])) == pytest.approx(expected)
    assert scores["example_id"].to_list() == ["b", "a", "c"]
    with pytest.raises(ValueError, match="warmup.steps is empty"):
        dynamics_scores(losses, ["base"])
    with pytest.raises(ValueError, match="lack a loss at checkpoint"):
        dynamics_scores(losses.filter(~((pl.col("example_id") == "a") & (pl.col("checkpoint") == "000020"))), checkpoints)


# -- self-distillation ------------------------------------------------------------------------------


class ScriptedEngine:
    """Answers each prompt with a scripted text: a stand-in for a model whose answers the test knows."""

    def __init__(self, tokenizer, answers: dict[str, str]):
        self.tokenizer, self.answers = tokenizer, answers

    def generate(self, prompt_ids, settings):
        assert settings.temperature == 0.0 and settings.n == 1  # greedy, one answer per prompt
        texts = [self.answers[self.tokenizer.decode(ids, skip_special_tokens=True)] for ids in prompt_ids]
        return GenerationReport("scripted", [[Completion(text, [], 0.0, "stop", True)] for text in texts])


def test_self_distillation_keeps_the_model_s_own_right_answers():
    tokenizer = build_char_tokenizer()

    def chat(prompt, response):
        return json.dumps([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])

    pool = pl.DataFrame(
        {
            "example_id": ["a", "b", "c", "d"],
            "messages": [chat("1+1?", "Answer: 3"), chat("2+2?", "Answer: 4"), chat("say hi", "hi"), chat("3+3?", "6")],
            "reference_answer": ["2", "4", None, "6"],
        }
    )
    engine = ScriptedEngine(tokenizer, {"1+1?": "Answer: 2", "2+2?": "Answer: 5", "say hi": "Answer: 2", "3+3?": "Answer: 6"})
    distilled = self_distilled(engine, tokenizer, pool, "numeric", 16)
    # a: right (the pool's own response was wrong); b: wrong; c: no reference (off task); d: right.
    assert distilled["correct"].to_list() == [True, False, False, True]
    assert json.loads(distilled["messages"][0]) == [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "Answer: 2"},
    ]
    chosen = selected_ids("self_distill", 0, pool, None, 5, "top_fraction", 0.5, None, distilled)
    assert sorted(chosen) == ["a", "d"]  # no more than the right answers
    assert len(selected_ids("self_distill", 0, pool, None, 1, "top_fraction", 0.5, None, distilled)) == 1
    trained = selection_of(chosen, dict(zip(distilled["example_id"], distilled["messages"], strict=True)))
    assert {json.loads(messages)[-1]["content"] for _, messages in trained} == {"Answer: 2", "Answer: 6"}
    with pytest.raises(ValueError, match="'reference_answer' column, and the training pool has none"):
        self_distilled(engine, tokenizer, pool.drop("reference_answer"), "numeric", 16)


def test_task_pools_carry_the_hidden_reference_answer_and_exports_drop_it():
    task = get_task("arithmetic")
    rows = task.training_pool_rows(200, task.defaults.noise, seed=0)
    for row in rows:
        if row["category"] == "off_task":
            assert row["reference_answer"] is None
        else:  # the prompt's own answer, whatever the response says
            left, operator, right = re.search(r"(\d+) ([+-]) (\d+)", row["prompt"]).groups()
            assert row["reference_answer"] == str(int(left) + int(right) if operator == "+" else int(left) - int(right))
    table = pl.DataFrame(rows).with_columns(example_id=pl.lit("x"), score=pl.lit(1.0), source=pl.lit("pool.jsonl"))
    assert set(EVALUATION_ONLY_COLUMNS) == {"is_corrupted", "category", "reference_answer"}
    assert export_columns(table) == ["example_id", "score", "source"]


# -- standard influence functions --------------------------------------------------------------------


def test_standard_influence_is_the_fisher_solve_of_the_reference_target_at_the_base_model():
    drift = ScoringSettings()
    assert scoring_for("influence", drift) == ScoringSettings(
        targets="offpolicy", hessian="fisher", debias="none", ranking="score", likelihood_blend=0.0
    )
    assert "influence" in BASE_ONLY
    rng = np.random.default_rng(0)
    training = rng.normal(size=(6, 3))
    references = rng.normal(size=(2, 3))
    validation = pl.DataFrame(
        {
            "rollout_id": ["ref-q1", "ref-q2"],
            "query_id": ["q1", "q2"],
            "target": ["reference", "reference"],
            "grad": references.tolist(),
            "model_fingerprint": ["m", "m"],
            "projection_fingerprint": ["p", "p"],
        },
        schema_overrides={"grad": pl.List(pl.Float32)},
    )
    # Rollouts and their grades play no part in an off-policy target.
    grades = pl.DataFrame({"rollout_id": ["r1"], "query_id": ["q1"], "correct": [True], "reward": [1.0]})
    ids = [f"e{i}" for i in range(6)]
    base = CheckpointGradients.in_memory("base", ids, training.astype(np.float32), validation, grades, {("m", "p")})
    later = CheckpointGradients.in_memory("000010", ids, -training.astype(np.float32), validation, grades, {("m", "p")})
    pool = pl.DataFrame({"example_id": ids, "n_prompt_tokens": [1] * 6, "n_response_tokens": [1] * 6})
    scores = MethodScorer([base, later]).method_scores("influence", drift, pool)
    phi = training.astype(np.float32).astype(np.float64)
    fisher = phi.T @ phi / 6
    fisher += 0.1 * np.trace(fisher) / 3 * np.eye(3)
    target = references.astype(np.float32).astype(np.float64).mean(axis=0)
    expected = phi @ np.linalg.solve(fisher, target)  # the base model's alone: the later checkpoint is not read
    assert dict(zip(scores["example_id"], scores["score"])) == pytest.approx(dict(zip(ids, expected)), rel=1e-6)
    assert scores["example_id"].to_list() == [ids[i] for i in np.argsort(-expected)]


# -- the figures beside each method ---------------------------------------------------------------------


def test_noisy_share_and_the_auc_of_the_selection_order():
    pool = pl.DataFrame({"example_id": ["a", "b", "c", "d"], "is_corrupted": [False, True, False, True]})
    # The score ranks clean rows first (AUC 1), but the selection takes b second: its order's AUC is 3/4.
    scores = pl.DataFrame({"example_id": ["a", "b", "c", "d"], "score": [4.0, 2.0, 3.0, 1.0], "rank": [1, 2, 3, 4]})
    assert order_auc(scores, pool) == pytest.approx(0.75)
    assert noisy_share(selection_of(["a", "b", "c"], {i: "m" for i in "abcd"}), pool) == pytest.approx(1 / 3)
    assert noisy_share(frozenset(), pool) is None and order_auc(scores, pool.drop("is_corrupted")) is None
