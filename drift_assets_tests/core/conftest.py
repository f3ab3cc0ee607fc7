"""Fixtures shared by the core tests."""

import json

import pytest
import torch

from drift_assets.core.data.sequences import collate_pairs, encode_prompt, encode_response, render_prompt
from drift_assets.tasks.demo_task import training_pool_rows
from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama


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


@pytest.fixture(scope="module")
def examples():
    """64 demo pool rows as chat conversations (JSON): what the SFT tests fine-tune on."""
    rows = [r for r in training_pool_rows(64, 0.0, 0.0, seed=4)]
    return [json.dumps([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]) for r in rows]
