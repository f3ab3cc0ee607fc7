"""Planned peak memory of the steps that hold a model: SFT (and the warm-up), the gradient pass.

A step that runs out of memory an hour in has wasted the hour; one that is planned says so before
it starts, with the setting to change. The plan counts what the step holds at its peak:

- the weights (and, for a 16-bit full fine-tune, the float32 master copy);
- the activations autograd keeps for the backward pass, per token: about 9·h + 4.3·i values per
  decoder layer (norms, q/k/v, rotary, attention output; the MLP's gate, up and product), 7.3·h
  outside the layers and 4·V for the logits (the logits, their float32 log-softmax and its
  gradient). The coefficients were fitted on transformers' Llama (SDPA attention, which keeps no
  L × L matrix) from peak memory measured on the CPU across shapes, and a test checks them
  against a measured peak on models the fit did not see. With every weight frozen (the gradient
  pass) a linear layer's input is not kept: about 4.6·h + 3.45·i per layer. With gradient
  checkpointing a layer keeps only its input (h per token) and one layer's activations are alive
  at a time;
- SFT's optimizer: at the backward pass's peak the gradients are being filled in (counted whole,
  which errs high), and at the optimizer step AdamW holds gradients and two moments (12 bytes per
  trained parameter) plus temporaries about 2.5 times the largest trained tensor;
- the gradient pass: the projected inputs and output gradients its hooks keep (rank values per
  token and side of every hooked layer, or the layer's width without a projection) and the batch's
  projected gradients;
- the PCA basis fit's covariances and the fisher Hessian, which the callers plan apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

GiB = 2**30
PER_LAYER_H, PER_LAYER_I, OUTSIDE_LAYERS_H, LOGITS_V = 9.0, 4.3, 7.3, 4.0
# With the weights frozen (the gradient pass) a linear layer's input is not kept: its weight
# gradient is not asked for.
FROZEN_PER_LAYER_H, FROZEN_PER_LAYER_I, FROZEN_OUTSIDE_LAYERS_H = 4.6, 3.45, 7.5
ADAM_BYTES_PER_PARAMETER, ADAM_TEMPORARIES = 12, 2.5


class MemoryPlanError(MemoryError):
    """A step's planned peak memory exceeds what its device has free; the message names the settings."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder-only transformer."""

    parameters: int
    trainable: int  # parameters that require gradients (all, or a LoRA adapter's)
    largest_trainable: int  # elements of the largest trained tensor
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    weight_bytes: int  # per parameter: 4 (float32) or 2 (bfloat16, float16)

    @property
    def master_weights(self) -> bool:
        """Whether fine-tuning keeps a float32 copy of the weights: a 16-bit model whose every
        weight trains (a LoRA adapter is float32 already, and the frozen weights need none)."""
        return self.weight_bytes < 4 and self.trainable == self.parameters

    @classmethod
    def of(cls, model: nn.Module) -> ModelShape:
        config = model.config
        parameters = list(model.parameters())
        trained = [p for p in parameters if p.requires_grad]
        return cls(
            parameters=sum(p.numel() for p in parameters),
            trainable=sum(p.numel() for p in trained),
            largest_trainable=max((p.numel() for p in trained), default=0),
            hidden=config.hidden_size,
            intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size),
            layers=config.num_hidden_layers,
            vocab=config.vocab_size,
            weight_bytes=parameters[0].element_size(),
        )


@dataclass(frozen=True)
class MemoryPlan:
    step: str
    parts: dict[str, int] = field(default_factory=dict)  # bytes held at the peak, by what holds them

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = " + ".join(f"{name} {_size(size)}" for name, size in self.parts.items() if size)
        return f"{self.step}: planned peak memory {_size(self.total)} ({parts})"

    def check(self, available: int, device: str, advice: str) -> None:
        """Raise :class:`MemoryPlanError` where what the step adds to the loaded weights exceeds
        ``available`` bytes free on ``device``."""
        needed = self.total - self.parts.get("weights", 0)
        if needed > available:
            raise MemoryPlanError(
                f"{self.describe()}: it needs {_size(needed)} beside the loaded weights, and {device} has "
                f"{_size(available)} free. {advice}"
            )


def _size(size: float) -> str:
    return f"{size / GiB:.2f} GiB" if size >= GiB / 10 else f"{size / 2**20:.0f} MiB"


def activation_bytes(shape: ModelShape, tokens: int, value_bytes: int, checkpointing: bool = False, frozen: bool = False) -> int:
    """What autograd keeps for the backward pass over ``tokens`` tokens (logits in float32);
    ``frozen``: no weight requires a gradient."""
    if frozen:
        per_layer = FROZEN_PER_LAYER_H * shape.hidden + FROZEN_PER_LAYER_I * shape.intermediate
        outside = FROZEN_OUTSIDE_LAYERS_H * shape.hidden
    else:
        per_layer = PER_LAYER_H * shape.hidden + PER_LAYER_I * shape.intermediate
        outside = OUTSIDE_LAYERS_H * shape.hidden
    if checkpointing:  # every layer's input, and one layer recomputed at a time
        layers = shape.layers * shape.hidden + per_layer
    else:
        layers = shape.layers * per_layer
    return int(tokens * ((layers + outside) * value_bytes + LOGITS_V * shape.vocab * 4))


def training_plan(shape: ModelShape, batch_size: int, max_tokens: int, checkpointing: bool = False) -> MemoryPlan:
    """One optimizer step at ``batch_size`` sequences of ``max_tokens`` (the longest, padded to)."""
    activations = activation_bytes(shape, batch_size * max_tokens, shape.weight_bytes, checkpointing)
    backward = activations + 4 * shape.trainable
    optimizer = ADAM_BYTES_PER_PARAMETER * shape.trainable + int(ADAM_TEMPORARIES * 4 * shape.largest_trainable)
    parts = {
        "weights": shape.parameters * shape.weight_bytes,
        "float32 master weights": 4 * shape.parameters if shape.master_weights else 0,
    }
    if backward >= optimizer:
        parts |= {"activations": activations, "gradients": 4 * shape.trainable}
    else:
        parts |= {"gradients and AdamW state": optimizer}
    return MemoryPlan("SFT step", parts)


def gradient_pass_plan(
    shape: ModelShape,
    batch_size: int,
    max_tokens: int,
    hooked_values: int,
    dimension: int,
    checkpointing: bool = False,
) -> MemoryPlan:
    """One projected gradient pass: ``hooked_values`` per token kept by the hooks (both sides of
    every hooked layer), ``dimension`` = k, the projected gradient's length."""
    tokens = batch_size * max_tokens
    return MemoryPlan(
        "gradient pass",
        {
            "weights": shape.parameters * shape.weight_bytes,
            "activations": activation_bytes(shape, tokens, shape.weight_bytes, checkpointing, frozen=True),
            "hooked projections": 4 * tokens * hooked_values,
            "projected gradients": 4 * batch_size * dimension,
        },
    )
