"""Projected per-example gradients against exact per-example gradients from torch.func."""

import numpy as np
import pytest
import torch

from drift_assets.core.data.sequences import collate_pairs, encode_prompt, encode_response, render_prompt, sequence_logprobs
from drift_assets.core.gradients.projection import (
    LinearGradientProjector,
    ProjectionBasis,
    ProjectionOptions,
    covariance_groups,
    fit_basis,
    fit_pca_basis,
    gaussian_projector,
    target_layers,
)
from drift_assets.core.study.stats import spearman
from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_tiny_llama
from drift_assets_tests.helpers.gradients import exact_per_example_gradients


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


def pairs(tokenizer, rows):
    prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, r["prompt"])) for r in rows]
    responses = [encode_response(tokenizer, r["response"]) for r in rows]
    return prompts, responses


@pytest.fixture(scope="module")
def pca_basis(tiny):
    """A rank-4 PCA basis fitted on examples other than the ones projected."""
    model, tokenizer, _ = tiny
    return fit_basis(
        model, ProjectionOptions(rank=4), tokenizer, *pairs(tokenizer, training_pool_rows(40, 0.25, 0.1, seed=9)), 16
    )


@pytest.mark.parametrize("basis", ["random", "pca"])
def test_projection_is_the_kronecker_projection_of_the_exact_gradient(tiny, pca_basis, basis):
    model, _, batch = tiny
    if basis == "random":
        projector = LinearGradientProjector(model, ProjectionOptions(rank=4, seed=7, basis="random"))
        matrices = {
            name: (gaussian_projector(4, m.in_features, 7, name, "in"), gaussian_projector(4, m.out_features, 7, name, "out"))
            for name, m in projector.layers
        }
    else:
        projector = LinearGradientProjector(model, pca_basis.options, pca_basis)
        matrices = pca_basis.matrices
    projected = projector.project(batch).gradients
    exact_blocks = []
    for name, module in projector.layers:
        exact = exact_per_example_gradients(model, batch, [name]).reshape(-1, module.out_features, module.in_features)
        p_in, p_out = matrices[name]
        exact_blocks.append((p_out @ exact @ p_in.T).reshape(exact.shape[0], -1))
    expected = torch.cat(exact_blocks, dim=1)
    assert projected.shape == (6, len(projector.layers) * 16)
    assert torch.allclose(projected, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def layer_io(model, batch, layer_name):
    """A layer's inputs and output-gradients of Σ log π, captured with plain autograd (no projector code)."""
    module = dict(model.named_modules())[layer_name]
    seen = {}

    def hook(_, args, output):
        seen["x"] = args[0].detach()
        output.retain_grad()
        seen["y"] = output

    handle = module.register_forward_hook(hook)
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        sequence_logprobs(logits, batch).sum().backward()
    finally:
        handle.remove()
        model.zero_grad()
    mask = batch.attention_mask.bool()
    return seen["x"][mask].double(), seen["y"].grad[mask].double()


def test_pca_basis_holds_the_leading_eigenvectors_of_the_layer_covariances(tiny):
    model, tokenizer, _ = tiny
    prompts, responses = pairs(tokenizer, training_pool_rows(40, 0.25, 0.1, seed=9))
    batch = collate_pairs(tokenizer, prompts, responses)
    basis = fit_pca_basis(model, ProjectionOptions(rank=4), [batch])
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        x, delta = layer_io(model, batch, name)
        for covariance, projector in ((x.T @ x, basis.matrices[name][0]), (delta.T @ delta, basis.matrices[name][1])):
            p = projector.double()
            assert torch.allclose(p @ p.T, torch.eye(4, dtype=torch.float64), atol=1e-5)  # orthonormal rows
            eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)[:4]
            # Rayleigh quotients of the rows are the top-4 eigenvalues: the rows span the leading subspace.
            assert torch.allclose(torch.diag(p @ covariance @ p.T), eigenvalues, rtol=1e-3)


def test_a_pca_basis_fitted_in_several_passes_is_the_one_pass_basis(tiny, pca_basis):
    """A memory budget smaller than the layers' covariances splits the fit into passes over groups
    of layers (a 7B model's covariances do not fit on one GPU); the basis must not change."""
    model, tokenizer, _ = tiny
    layers = target_layers(model, pca_basis.options.target_modules)
    size = {name: 4 * (m.in_features**2 + m.out_features**2) for name, m in layers}
    budget = 3 * max(size.values())
    groups = covariance_groups(layers, budget)
    assert [name for group in groups for name, _ in group] == [name for name, _ in layers]  # every layer once, in order
    assert all(sum(size[name] for name, _ in group) <= budget for group in groups)
    # Greedy: a group ends only where the next layer would not fit.
    assert all(
        sum(size[name] for name, _ in group) + size[following[0][0]] > budget for group, following in zip(groups, groups[1:])
    )
    assert 1 < len(groups) < len(layers)
    assert [len(group) for group in covariance_groups(layers, 1)] == [1] * len(layers)  # each over the budget alone: one each
    messages = []
    split = fit_basis(
        model,
        pca_basis.options,
        tokenizer,
        *pairs(tokenizer, training_pool_rows(40, 0.25, 0.1, seed=9)),
        16,
        budget_bytes=budget,
        log=messages.append,
    )
    assert split.fingerprint() == pca_basis.fingerprint()
    held = sum(size.values()) / 2**30
    assert messages == [
        f"PCA basis: the covariances of {len(layers)} layers hold {held:.3g} GiB, over the {budget / 2**30:.3g} GiB budget: "
        f"{len(groups)} passes over the references"
    ]


def test_a_full_rank_pca_basis_preserves_inner_products_exactly(tiny):
    """With r = the layer width the PCA projectors are rotations, so inner products are exact."""
    model, tokenizer, batch = tiny
    options = ProjectionOptions(target_modules=r".*\.(q_proj|o_proj)$", rank=64)
    basis = fit_basis(model, options, tokenizer, *pairs(tokenizer, training_pool_rows(80, 0.25, 0.1, seed=9)), 32)
    projected = LinearGradientProjector(model, options, basis).project(batch).gradients.double()
    exact = (
        LinearGradientProjector(model, ProjectionOptions(target_modules=options.target_modules, rank=None))
        .project(batch)
        .gradients.double()
    )
    assert torch.allclose(projected @ projected.T, exact @ exact.T, rtol=1e-4, atol=1e-6 * float((exact @ exact.T).abs().max()))


@pytest.mark.parametrize("basis", ["pca", "random"])
def test_default_rank_preserves_the_ranking_of_exact_inner_products(tiny, basis):
    model, tokenizer, _ = tiny
    prompts, responses = pairs(tokenizer, training_pool_rows(64, 0.25, 0.1, seed=2))
    batch = collate_pairs(tokenizer, prompts, responses)
    options = ProjectionOptions(basis=basis)
    # As in the pipeline, the basis is fitted on the targets' side (here: the first 8 examples).
    fitted = fit_basis(model, options, tokenizer, prompts[:8], responses[:8], 8)
    projected = LinearGradientProjector(model, options, fitted).project(batch).gradients.numpy()
    exact = LinearGradientProjector(model, ProjectionOptions(rank=None)).project(batch).gradients.numpy()
    target = exact[:8].sum(0)  # a "validation gradient" made of a few examples
    target_projected = projected[:8].sum(0)
    assert spearman(exact[8:] @ target, projected[8:] @ target_projected) >= 0.9


def test_projectors_are_deterministic_and_batch_independent(tiny):
    model, _, batch = tiny
    options = ProjectionOptions(rank=4, seed=1, basis="random")
    first = LinearGradientProjector(model, options).project(batch).gradients
    again = LinearGradientProjector(model, options).project(batch).gradients
    assert torch.equal(first, again)
    single = LinearGradientProjector(model, options).project(collate_pairs_from(batch, [2])).gradients
    assert torch.allclose(single[0], first[2], rtol=1e-4, atol=1e-6)
    other_seed = LinearGradientProjector(model, ProjectionOptions(rank=4, seed=2, basis="random")).project(batch).gradients
    assert not torch.allclose(first, other_seed)


def test_a_bfloat16_model_projects_close_to_its_float32_weights(tiny):
    """``model.dtype: bfloat16`` (what GPU users run): the hooks upcast what they capture, so only
    the model's own bf16 arithmetic separates the two."""
    import copy

    model, _, batch = tiny
    options = ProjectionOptions(rank=4, seed=1, basis="random")
    full = LinearGradientProjector(model, options).project(batch).gradients.double()
    half = LinearGradientProjector(copy.deepcopy(model).to(torch.bfloat16), options).project(batch).gradients
    assert half.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(full, half.double(), dim=1)
    assert cosine.min() > 0.99, cosine


def test_pca_basis_is_deterministic_and_survives_a_table_round_trip(tiny, pca_basis):
    model, tokenizer, batch = tiny
    fit_pairs = pairs(tokenizer, training_pool_rows(40, 0.25, 0.1, seed=9))
    assert fit_basis(model, pca_basis.options, tokenizer, *fit_pairs, 16).fingerprint() == pca_basis.fingerprint()
    rebatched = fit_basis(model, pca_basis.options, tokenizer, *fit_pairs, 7)  # other padding: equal up to rounding
    for name, (p_in, p_out) in pca_basis.matrices.items():
        assert torch.allclose(rebatched.matrices[name][0], p_in, atol=1e-3) and torch.allclose(
            rebatched.matrices[name][1], p_out, atol=1e-3
        )
    restored = ProjectionBasis.from_frame(pca_basis.to_frame(), pca_basis.options)
    assert restored.fingerprint() == pca_basis.fingerprint()
    original = LinearGradientProjector(model, pca_basis.options, pca_basis).project(batch).gradients
    assert torch.equal(LinearGradientProjector(model, restored.options, restored).project(batch).gradients, original)
    other = fit_basis(model, pca_basis.options, tokenizer, *pairs(tokenizer, training_pool_rows(40, 0.25, 0.1, seed=10)), 16)
    assert other.fingerprint() != pca_basis.fingerprint()


def test_basis_errors_name_the_problem(tiny, pca_basis):
    model, tokenizer, _ = tiny
    with pytest.raises(ValueError, match="needs a fitted ProjectionBasis"):
        LinearGradientProjector(model, ProjectionOptions(rank=4, basis="pca"))
    with pytest.raises(ValueError, match="projection.basis must be one of"):
        ProjectionOptions(basis="svd")
    wider = build_tiny_llama(tokenizer, TinyLlamaShape(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128), seed=3)
    with pytest.raises(ValueError, match="re-fit it for this model"):
        LinearGradientProjector(wider, pca_basis.options, pca_basis)
    frame = pca_basis.to_frame()
    with pytest.raises(ValueError, match="other projection settings"):
        ProjectionBasis.from_frame(frame, ProjectionOptions(rank=4, seed=5))
    with pytest.raises(ValueError, match="lacks the in or out projector"):
        ProjectionBasis.from_frame(frame.filter(frame["side"] == "in"), pca_basis.options)


def collate_pairs_from(batch, rows):
    """A sub-batch trimmed of padding, to check that padding does not change a row's gradient."""
    length = int(batch.attention_mask[rows].sum(1).max())
    from drift_assets.core.data.sequences import ResponseBatch

    return ResponseBatch(batch.input_ids[rows, :length], batch.attention_mask[rows, :length], batch.response_mask[rows, :length])


def test_projection_leaves_the_model_trainable_and_logprobs_match(tiny):
    model, _, batch = tiny
    result = LinearGradientProjector(model, ProjectionOptions(rank=2, basis="random")).project(batch)
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert np.allclose(result.logprobs.numpy(), sequence_logprobs(logits, batch).numpy(), atol=1e-4)


def test_a_pattern_matching_no_layer_is_a_clear_error(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        LinearGradientProjector(model, ProjectionOptions(target_modules=r"nothing_here"))


def test_answer_span_gradients_are_exact_gradients_of_the_answer_given_the_reasoning(tiny):
    from drift_assets.core.gradients.tables import query_token_pairs

    model, tokenizer, _ = tiny
    prompts = ["What is 12 + 5?", "What is 9 - 4?", "What is 3 + 3?"]
    completions = ["12 + 5 = 17. Answer: 17", "We compute 9 - 4 and get 5. Answer: 5", "no marker here"]
    whole = query_token_pairs(tokenizer, prompts, completions)
    split = query_token_pairs(tokenizer, prompts, completions, answer_marker="Answer:")
    # The same token sequence; only the boundary between masked context and scored response moves.
    assert [p + r for p, r in zip(*whole)] == [p + r for p, r in zip(*split)]
    assert [tokenizer.decode(r, skip_special_tokens=True) for r in split[1]] == ["Answer: 17", "Answer: 5", "no marker here"]
    projector = LinearGradientProjector(model, ProjectionOptions(rank=None))
    batch = collate_pairs(tokenizer, *split)
    exact = exact_per_example_gradients(model, batch, projector.layer_names)
    projected = projector.project(batch).gradients
    assert (projected - exact).norm() / exact.norm() < 1e-4
    # Scoring only the answer is not scoring the whole completion (except where there is no marker).
    whole_gradients = projector.project(collate_pairs(tokenizer, *whole)).gradients
    assert not torch.allclose(whole_gradients[0], projected[0], rtol=1e-2)
    assert torch.allclose(whole_gradients[2], projected[2], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("basis", ["random", "pca"])
def test_a_side_no_wider_than_the_rank_is_kept_whole(tiny, basis):
    """A layer side at most ``rank`` wide (a LoRA adapter's rank side) is projected by the identity:
    with rank 64 the attention layers (64 × 64) are exact, the MLP (96 wide) is projected on its wide side."""
    model, tokenizer, batch = tiny
    options = ProjectionOptions(rank=64, basis=basis)
    fitted = fit_basis(model, options, tokenizer, *pairs(tokenizer, training_pool_rows(40, 0.25, 0.1, seed=9)), 16)
    for name, (p_in, p_out) in fitted.matrices.items():
        module = dict(model.named_modules())[name]
        for projector, width in ((p_in, module.in_features), (p_out, module.out_features)):
            assert torch.equal(projector, torch.eye(width)) if width <= 64 else projector.shape == (64, width)
    attention = [name for name in fitted.matrices if "self_attn" in name]
    projected = LinearGradientProjector(model, ProjectionOptions(rank=64, basis=basis, target_modules=".*self_attn.*"), fitted)
    exact = LinearGradientProjector(model, ProjectionOptions(rank=None, target_modules=".*self_attn.*"))
    assert projected.layer_names == exact.layer_names == attention
    assert torch.allclose(projected.project(batch).gradients, exact.project(batch).gradients, atol=1e-6)


@pytest.mark.parametrize("rank", [None, 8])
def test_gradient_checkpointing_gives_the_same_projected_gradients(tiny, rank):
    model, _, batch = tiny
    plain = LinearGradientProjector(model, ProjectionOptions(rank=rank, basis="random")).project(batch)
    checkpointed = LinearGradientProjector(model, ProjectionOptions(rank=rank, basis="random", gradient_checkpointing=True))
    again = checkpointed.project(batch)
    torch.testing.assert_close(again.gradients, plain.gradients, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(again.logprobs, plain.logprobs)
    assert not model.training and not any(module.training for module in model.modules())  # eval mode, as it was
