"""LoRA adapters: their projected gradients against exact per-example gradients, saving and loading
them (kept or merged), and a warm-up fine-tune that trains the adapter only."""

import copy
import json

import pytest
import torch

from drift_assets.core.gradients.projection import LinearGradientProjector, ProjectionOptions
from drift_assets.core.training.adapters import (
    LoraOptions,
    adapter_rank,
    add_adapter,
    is_adapter,
    vllm_max_lora_rank,
    with_adapter,
)
from drift_assets.core.training.sft import SftOptions, fine_tune
from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets_tests.helpers.gradients import exact_per_example_gradients

ADAPTERS = r".*\.lora_[AB]\.default"
OPTIONS = LoraOptions(rank=4, alpha=8.0, target_modules=r".*\.(q_proj|v_proj|down_proj)")


def adapted(model, seed: int = 0):
    """A copy of ``model`` with an adapter whose B is not zero (a fresh adapter's A gets no gradient)."""
    wrapped = add_adapter(copy.deepcopy(model), OPTIONS, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, weights in wrapped.named_parameters():
            if "lora_B" in name:
                weights.copy_(0.1 * torch.randn(weights.shape, generator=generator))
    return wrapped.eval()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_adapter_gradients_with_an_identity_basis_equal_exact_per_example_gradients(tiny, reduction):
    model, _, batch = tiny
    wrapped = adapted(model)
    projector = LinearGradientProjector(wrapped, ProjectionOptions(target_modules=ADAPTERS, rank=None, loss_reduction=reduction))
    # Only the adapters: A and B for each of the 3 adapted layers in each of the 2 blocks.
    assert len(projector.layers) == 12 and all(".lora_" in name for name in projector.layer_names)
    projected = projector.project(batch).gradients
    exact = exact_per_example_gradients(wrapped, batch, projector.layer_names, reduction)
    assert projected.shape == exact.shape == (6, projector.dimension)
    assert (projected - exact).norm() / exact.norm() < 1e-4


def test_a_saved_adapter_loads_kept_for_adapter_gradients_or_merged_into_the_weights(tiny, tmp_path):
    model, _, batch = tiny
    wrapped = adapted(model, seed=5)
    wrapped.save_pretrained(tmp_path / "adapter")
    assert is_adapter(tmp_path / "adapter") and adapter_rank(tmp_path / "adapter") == 4
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter alone, no copy of the model
    with torch.no_grad():
        expected = wrapped(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        kept = with_adapter(copy.deepcopy(model), tmp_path / "adapter", ADAPTERS)
        merged = with_adapter(copy.deepcopy(model), tmp_path / "adapter", r".*\.(q_proj|v_proj)")
        assert any(".lora_A." in name for name, _ in kept.named_modules())
        assert not any("lora" in name for name, _ in merged.named_modules())
        for loaded in (kept, merged):
            logits = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            assert torch.allclose(logits, expected, atol=1e-5)
    # Merged, the weights differ from the base model's exactly where an adapter was.
    changed = {name for name, w in merged.state_dict().items() if not torch.equal(w, model.state_dict()[name])}
    assert changed and all(any(part in name for part in ("q_proj", "v_proj", "down_proj")) for name in changed)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_a_fine_tune_with_an_adapter_trains_the_adapter_and_nothing_else(tiny, checkpointing):
    model, tokenizer, _ = tiny
    wrapped = add_adapter(copy.deepcopy(model), OPTIONS, seed=0)
    before = {name: w.detach().clone() for name, w in wrapped.named_parameters()}
    rows = training_pool_rows(40, 0.25, 0.1, seed=2)
    messages = [
        json.dumps([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]) for r in rows
    ]
    run = fine_tune(
        wrapped,
        tokenizer,
        messages,
        SftOptions(steps=8, batch_size=8, learning_rate=1e-2, schedule="constant", gradient_checkpointing=checkpointing),
    )
    after = dict(wrapped.named_parameters())
    moved = {name for name, w in after.items() if not torch.equal(w, before[name])}
    assert moved == {name for name in before if ".lora_" in name}
    assert run.losses[-1] < run.losses[0]


def test_vllm_lora_ranks_and_bad_target_modules():
    assert [vllm_max_lora_rank(r) for r in (1, 4, 8, 9, 64)] == [1, 8, 8, 16, 64]
    with pytest.raises(ValueError, match="above what vLLM serves"):
        vllm_max_lora_rank(1000)


def test_target_modules_naming_no_layer_fail_naming_the_setting(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="warmup.lora.target_modules"):
        add_adapter(copy.deepcopy(model), LoraOptions(target_modules=r".*\.nothing_here"), seed=0)
