"""Models the benchmarks run on: the demo model and a random-initialised Llama of about 50M parameters.

Both use the demo's character tokenizer, so the same prompts and pool examples encode identically.
The random model's attention heads are 64 wide because vLLM's CPU attention accepts no smaller
head_dim. Its default shape (hidden 512, 12 layers, MLP 2048) has 50.4M parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama, save_model

HEAD_DIM = 64


@dataclass(frozen=True)
class RandomLlamaShape:
    hidden_size: int = 512
    num_layers: int = 12
    intermediate_size: int = 2048
    max_positions: int = 256

    def __post_init__(self):
        if self.hidden_size % HEAD_DIM:
            raise ValueError(
                f"--hidden must be a multiple of {HEAD_DIM} (vLLM's CPU attention needs head_dim 64; got {self.hidden_size})"
            )


@dataclass
class BenchmarkModel:
    """``label`` names the model in tables; ``path`` is a save_pretrained directory (model + tokenizer)."""

    label: str
    path: Path
    note: str


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def format_parameters(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


def random_llama(tokenizer, shape: RandomLlamaShape = RandomLlamaShape(), seed: int = 0) -> LlamaForCausalLM:
    """The demo's architecture (build_tiny_llama), scaled up, left at its random initialisation."""
    tiny_shape = TinyLlamaShape(
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.hidden_size // HEAD_DIM,
        intermediate_size=shape.intermediate_size,
        max_positions=shape.max_positions,
    )
    return build_tiny_llama(tokenizer, tiny_shape, seed=seed).eval()


def demo_model_directory(requested: str | Path, scratch: Path) -> BenchmarkModel:
    """The trained demo model at ``requested``, or an untrained tiny one saved under ``scratch``."""
    requested = Path(requested)
    if (requested / "config.json").exists():
        return BenchmarkModel("demo", requested, f"demo model from {requested}")
    directory = scratch / "demo-untrained"
    tokenizer = build_char_tokenizer()
    save_model(build_tiny_llama(tokenizer), tokenizer, directory)
    return BenchmarkModel(
        "demo (untrained)",
        directory,
        f"{requested} does not exist: using an UNTRAINED tiny demo-shaped model (build_tiny_llama) instead",
    )


def random_model_directory(shape: RandomLlamaShape, scratch: Path, seed: int = 0) -> BenchmarkModel:
    tokenizer = build_char_tokenizer()
    model = random_llama(tokenizer, shape, seed)
    directory = scratch / "random-llama"
    save_model(model, tokenizer, directory)
    label = f"random Llama {format_parameters(parameter_count(model))}"
    note = (
        f"{label}: hidden {shape.hidden_size}, {shape.num_layers} layers, {shape.hidden_size // HEAD_DIM} heads of 64, "
        f"MLP {shape.intermediate_size}, vocab {len(tokenizer)}, random init (seed {seed})"
    )
    return BenchmarkModel(label, directory, note)


def load(directory: str | Path):
    """(model in eval mode, float32 on CPU; tokenizer) from a save_pretrained directory."""
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(directory))
