"""Projected per-example gradients against exact per-example gradients from torch.func."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad

from drift_assets.core.demo_task import training_pool_rows
from drift_assets.core.projection import LinearGradientProjector, ProjectionOptions, gaussian_projector
from drift_assets.core.sequences import collate_pairs, encode_prompt, encode_response, render_prompt, sequence_logprobs
from drift_assets.core.stats import spearman
from drift_assets.core.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tokenizer, TinyLlamaShape(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=96), seed=3)
    # Perturb weights so that gradients are not those of a freshly initialised model.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    rows = training_pool_rows(24, 0.25, 0.1, seed=1)[:6]
    prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, r["prompt"])) for r in rows]
    responses = [encode_response(tokenizer, r["response"]) for r in rows]
    return model.eval(), tokenizer, collate_pairs(tokenizer, prompts, responses)


def exact_per_example_gradients(model, batch, names, reduction="sum"):
    """∇ log π(y_i|x_i) of each example with torch.func.grad, one unpadded example at a time
    (independent of the hooks, the batching and the padding)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logprob(p, input_ids, response_mask):
        logits = functional_call(model, p, (input_ids.unsqueeze(0),)).logits[0, :-1]
        lp = torch.log_softmax(logits, -1).gather(-1, input_ids[1:].unsqueeze(-1)).squeeze(-1)
        total = (lp * response_mask[:-1]).sum()
        return total if reduction == "sum" else total / response_mask[:-1].sum()

    rows = []
    for i in range(batch.input_ids.shape[0]):
        length = int(batch.attention_mask[i].sum())
        g = grad(logprob)(params, batch.input_ids[i, :length], batch.response_mask[i, :length].float())
        rows.append(torch.cat([g[f"{name}.weight"].reshape(-1) for name in names]))
    return torch.stack(rows)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_identity_projection_equals_exact_per_example_gradients(tiny, reduction):
    model, _, batch = tiny
    projector = LinearGradientProjector(model, ProjectionOptions(rank=None, loss_reduction=reduction))
    projected = projector.project(batch).gradients
    exact = exact_per_example_gradients(model, batch, projector.layer_names, reduction)
    assert projected.shape == exact.shape == (6, projector.dimension)
    relative_error = (projected - exact).norm() / exact.norm()
    assert relative_error < 1e-4
    # Inner products (what influence uses) match too.
    assert torch.allclose(projected @ projected.T, exact @ exact.T, rtol=1e-4, atol=1e-6 * float((exact @ exact.T).abs().max()))


def test_gaussian_projection_is_the_kronecker_projection_of_the_exact_gradient(tiny):
    model, _, batch = tiny
    options = ProjectionOptions(rank=4, seed=7)
    projector = LinearGradientProjector(model, options)
    projected = projector.project(batch).gradients
    exact_blocks = []
    for name, module in projector.layers:
        exact = exact_per_example_gradients(model, batch, [name]).reshape(-1, module.out_features, module.in_features)
        p_in = gaussian_projector(4, module.in_features, 7, name, "in")
        p_out = gaussian_projector(4, module.out_features, 7, name, "out")
        exact_blocks.append((p_out @ exact @ p_in.T).reshape(exact.shape[0], -1))
    expected = torch.cat(exact_blocks, dim=1)
    assert torch.allclose(projected, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_default_projection_preserves_the_ranking_of_exact_inner_products(tiny):
    model, tokenizer, _ = tiny
    rows = training_pool_rows(64, 0.25, 0.1, seed=2)
    prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, r["prompt"])) for r in rows]
    responses = [encode_response(tokenizer, r["response"]) for r in rows]
    batch = collate_pairs(tokenizer, prompts, responses)
    projector = LinearGradientProjector(model, ProjectionOptions(rank=8))
    exact_projector = LinearGradientProjector(model, ProjectionOptions(rank=None))
    projected = projector.project(batch).gradients.numpy()
    exact = exact_projector.project(batch).gradients.numpy()
    target = exact[:8].sum(0)  # a "validation gradient" made of a few examples
    target_projected = projected[:8].sum(0)
    assert spearman(exact[8:] @ target, projected[8:] @ target_projected) >= 0.9


def test_projectors_are_deterministic_and_batch_independent(tiny):
    model, _, batch = tiny
    first = LinearGradientProjector(model, ProjectionOptions(rank=4, seed=1)).project(batch).gradients
    again = LinearGradientProjector(model, ProjectionOptions(rank=4, seed=1)).project(batch).gradients
    assert torch.equal(first, again)
    single = LinearGradientProjector(model, ProjectionOptions(rank=4, seed=1)).project(
        collate_pairs_from(batch, [2])
    ).gradients
    assert torch.allclose(single[0], first[2], rtol=1e-4, atol=1e-6)
    other_seed = LinearGradientProjector(model, ProjectionOptions(rank=4, seed=2)).project(batch).gradients
    assert not torch.allclose(first, other_seed)


def collate_pairs_from(batch, rows):
    """A sub-batch trimmed of padding, to check that padding does not change a row's gradient."""
    length = int(batch.attention_mask[rows].sum(1).max())
    from drift_assets.core.sequences import ResponseBatch

    return ResponseBatch(batch.input_ids[rows, :length], batch.attention_mask[rows, :length], batch.response_mask[rows, :length])


def test_projection_leaves_the_model_trainable_and_logprobs_match(tiny):
    model, _, batch = tiny
    result = LinearGradientProjector(model, ProjectionOptions(rank=2)).project(batch)
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert np.allclose(result.logprobs.numpy(), sequence_logprobs(logits, batch).numpy(), atol=1e-4)


def test_a_pattern_matching_no_layer_is_a_clear_error(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        LinearGradientProjector(model, ProjectionOptions(target_modules=r"nothing_here"))
