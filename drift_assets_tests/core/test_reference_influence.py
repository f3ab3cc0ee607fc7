"""The reference implementations' adapters (Kronfluence, TRAK) on a toy model, against exact
gradients taken here with torch.autograd. They need the ``bench`` extra; without it they skip."""

import numpy as np
import pytest
import torch

from drift_assets.core.data.sequences import encode_prompt, encode_response, render_prompt
from drift_assets.core.gradients.projection import target_layers
from drift_assets.core.study.reference_influence import TokenPairs, ekfac_scores, response_logprob_terms, trak_scores
from drift_assets.core.study.stats import spearman
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama

TARGETS = r".*\.(q_proj|down_proj)$"


@pytest.fixture(scope="module")
def toy():
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, TinyLlamaShape(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=48), seed=0)
    rng = np.random.default_rng(0)

    def pairs(n):
        prompts, responses = [], []
        for _ in range(n):
            a, b = (int(x) for x in rng.integers(0, 50, 2))
            prompts.append(encode_prompt(tokenizer, render_prompt(tokenizer, f"{a}+{b}=")))
            responses.append(encode_response(tokenizer, str(a + b + int(rng.integers(0, 3)))))
        return prompts, responses

    return model, tokenizer, pairs(40), pairs(6)


def exact_gradients(model, tokenizer, pairs) -> np.ndarray:
    """∇ log π(response | prompt) of the TARGETS layers' weights, one sequence at a time."""
    named = dict(model.named_parameters())
    params = [named[f"{name}.weight"] for name, _ in target_layers(model, TARGETS)]
    rows = []
    for prompt, response in zip(*pairs):
        data = TokenPairs(tokenizer, [prompt], [response])
        logprob = response_logprob_terms(model, data.collate([data[0]])).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(logprob, params)]).double().numpy())
    return np.array(rows)


def test_kronfluence_adapter_gives_exact_gradient_products_with_the_identity_and_tends_to_them_as_damping_grows(toy):
    pytest.importorskip("kronfluence", reason="kronfluence is in the bench extra (make benchmark installs it)")
    model, tokenizer, train, queries = toy
    exact = exact_gradients(model, tokenizer, train) @ exact_gradients(model, tokenizer, queries).T  # (train, queries)
    identity = ekfac_scores(model, tokenizer, train, queries, TARGETS, strategy="identity", batch_size=16)
    # Same sign convention (positive: a step on the example raises log π of the query) and the same
    # layers, tokens and mask as our gradients.
    np.testing.assert_allclose(identity, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())
    ekfac = ekfac_scores(model, tokenizer, train, queries, TARGETS, damping=None, batch_size=16)
    assert ekfac.shape == exact.shape and np.isfinite(ekfac).all()
    # The true Fisher's labels are sampled: seeded, a second run gives the same scores.
    np.testing.assert_array_equal(ekfac_scores(model, tokenizer, train, queries, TARGETS, damping=None, batch_size=16), ekfac)
    # With damping far above every eigenvalue, (G + λI)⁻¹ ≈ I/λ: EK-FAC ranks as the products do.
    heavy = ekfac_scores(model, tokenizer, train, queries, TARGETS, damping=1e6, batch_size=16)
    assert min(spearman(heavy[:, j], exact[:, j]) for j in range(exact.shape[1])) > 0.99
    # At the heuristic damping its curvature does change the ranking (the test would not tell otherwise).
    assert np.mean([spearman(ekfac[:, j], exact[:, j]) for j in range(exact.shape[1])]) < 0.95


def test_trak_adapter_gives_traks_formula_on_exact_gradients(toy):
    pytest.importorskip("trak", reason="traker is in the bench extra (make benchmark installs it)")
    from trak.projectors import BasicProjector, ProjectionType

    model, tokenizer, train, queries = toy
    gradients, query_gradients = exact_gradients(model, tokenizer, train), exact_gradients(model, tokenizer, queries)
    scores = trak_scores(model, tokenizer, train, queries, TARGETS, proj_dim=32, batch_size=16)
    # TRAK's projection matrix (a seeded draw), read off by projecting the identity.
    projection = (
        BasicProjector(gradients.shape[1], 32, 0, ProjectionType.normal, "cpu", block_size=32)
        .project(torch.eye(gradients.shape[1]), 0)
        .double()
        .numpy()
    )
    features, targets = gradients @ projection, query_gradients @ projection
    oracle = features @ np.linalg.solve(features.T @ features, targets.T)  # φ_iᵀ(ΦᵀΦ)⁻¹φ_q
    # TRAK rescales (ΦᵀΦ)⁻¹ by a positive constant; the scores are the formula's up to it.
    scale = float(scores.ravel() @ oracle.ravel()) / float(oracle.ravel() @ oracle.ravel())
    assert scale > 0
    np.testing.assert_allclose(scores, scale * oracle, rtol=1e-3, atol=1e-4 * np.abs(scale * oracle).max())
