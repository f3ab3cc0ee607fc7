"""LoRA adapters (PEFT) for the warm-up run, and the model at a checkpoint saved as one.

A full warm-up run of a 7B model keeps float32 master weights and AdamW moments for every
parameter, about 16 bytes each: more than one GPU holds. LESS warms up with LoRA instead and takes
its gradients of the adapters. Here a warm-up run with ``warmup.lora`` trains adapters only and
saves each checkpoint as an adapter directory; the checkpoint's model is the base model with that
adapter. Its gradients are of the adapters where ``projection.target_modules`` names their modules
(``…lora_A.default``, ``…lora_B.default``), otherwise of the weights with the adapter merged in.
vLLM serves the adapter on top of the base model (its LoRA support), so no merged copy of the model
is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from drift_assets.core.gradients.projection import matching_layers

ADAPTER_CONFIG = "adapter_config.json"
# The ranks vLLM's max_lora_rank accepts (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class LoraOptions:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # A regex over module names, full-matched by PEFT, as projection.target_modules is.
    target_modules: str = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def add_adapter(model: nn.Module, options: LoraOptions, seed: int) -> nn.Module:
    """``model`` wrapped with a fresh LoRA adapter (B = 0, so it computes what ``model`` does); only
    the adapter's parameters train. ``seed`` fixes the initialisation of A."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as error:
            raise ValueError(f"warmup.lora.target_modules {options.target_modules!r}: {error}") from None


def is_adapter(directory: str | Path) -> bool:
    """Whether ``directory`` holds a PEFT adapter (not a whole model)."""
    return (Path(directory) / ADAPTER_CONFIG).exists()


def adapter_rank(directory: str | Path) -> int:
    """The largest rank of the adapter saved in ``directory``."""
    config = json.loads((Path(directory) / ADAPTER_CONFIG).read_text())
    return max([int(config["r"]), *(int(rank) for rank in (config.get("rank_pattern") or {}).values())])


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above what vLLM serves ({VLLM_LORA_RANKS[-1]})")


def with_adapter(model: nn.Module, directory: str | Path, target_modules: str | None = None) -> nn.Module:
    """``model`` with the adapter saved in ``directory``: kept as adapter modules where
    ``target_modules`` names them (the gradients are of the adapters), otherwise merged into the
    weights (the model as it computes, with its usual module names)."""
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(model, str(directory))
    if target_modules is not None and any(".lora_" in name for name, _ in matching_layers(adapted, target_modules)):
        return adapted.eval()
    return adapted.merge_and_unload().eval()
