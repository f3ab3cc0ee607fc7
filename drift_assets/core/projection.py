"""Projected per-example log-prob gradients of targeted ``nn.Linear`` layers (LoGra-style).

For a linear layer y_t = W x_t the per-example gradient of an objective is Σ_t δ_t x_tᵀ, with
δ_t = ∂objective/∂y_t. Its projection with a Kronecker projector (P_out ⊗ P_in) is

    P_out (Σ_t δ_t x_tᵀ) P_inᵀ = Σ_t (P_out δ_t)(P_in x_t)ᵀ            (r_out × r_in)

so it is computed from the layer's inputs and output-gradients, captured by hooks during one
ordinary batched forward/backward, and the d_out × d_in gradient is never built.

Conventions (shared/DESIGN.md §3):
- the objective is log π_θ(y | x) of each example's response tokens (prompt and padding masked),
  summed over tokens (``loss_reduction="sum"``) or averaged (``"mean"``); the returned vectors are
  ∇_θ log π, i.e. the ascent direction of the log-likelihood;
- projectors are Gaussian with variance 1/r, drawn from a generator seeded by (seed, layer name),
  so validation and training gradients share them whatever the batch or process;
- ``rank=None`` uses identity projectors (the exact gradient, flattened row-major like
  ``weight.grad``), meant for tests and tiny models;
- biases are not included (Llama's projections have none).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from drift_assets.core.sequences import ResponseBatch, sequence_logprobs


@dataclass(frozen=True)
class ProjectionOptions:
    target_modules: str = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    rank: int | None = 8
    seed: int = 0
    loss_reduction: str = "sum"

    def fingerprint(self) -> str:
        """Identifies the projection: rows computed under another one cannot be reused."""
        text = f"{self.target_modules}|{self.rank}|{self.seed}|{self.loss_reduction}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layer_seed(seed: int, layer_name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{layer_name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def gaussian_projector(rows: int, columns: int, seed: int, layer_name: str, which: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_layer_seed(seed, f"{layer_name}/{which}"))
    return torch.randn(rows, columns, generator=generator) / rows**0.5


@dataclass
class ProjectedGradients:
    """``gradients`` (B, k) float32; ``logprobs`` (B,) the objective's value; ``n_tokens`` (B,)."""

    gradients: torch.Tensor
    logprobs: torch.Tensor
    n_tokens: torch.Tensor


class LinearGradientProjector:
    """Hooks that turn one batched forward/backward into projected per-example gradients."""

    def __init__(self, model: nn.Module, options: ProjectionOptions = ProjectionOptions()):
        if options.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"projection.loss_reduction must be 'sum' or 'mean' (got {options.loss_reduction!r})")
        self.model = model
        self.options = options
        pattern = re.compile(options.target_modules)
        self.layers: list[tuple[str, nn.Linear]] = [
            (name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and pattern.fullmatch(name)
        ]
        if not self.layers:
            examples = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][:4]
            raise ValueError(
                f"projection.target_modules {options.target_modules!r} matches no nn.Linear layer "
                f"(linear layers are named like {examples})"
            )
        device = next(model.parameters()).device
        self.projectors: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        for name, module in self.layers:
            if options.rank is None:
                self.projectors[name] = None
            else:
                p_in = gaussian_projector(options.rank, module.in_features, options.seed, name, "in").to(device)
                p_out = gaussian_projector(options.rank, module.out_features, options.seed, name, "out").to(device)
                self.projectors[name] = (p_in, p_out)

    @property
    def dimension(self) -> int:
        if self.options.rank is None:
            return sum(m.in_features * m.out_features for _, m in self.layers)
        return len(self.layers) * self.options.rank**2

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers]

    def project(self, batch: ResponseBatch) -> ProjectedGradients:
        """Projected ∇_θ log π(response | prompt) of every example in ``batch``."""
        inputs: dict[str, torch.Tensor] = {}
        output_grads: dict[str, torch.Tensor] = {}
        handles = []

        def capture(name: str):
            projector = self.projectors[name]

            def forward_hook(module, args, output):
                x = args[0].detach().float()
                inputs[name] = x if projector is None else x @ projector[0].T

                def grad_hook(grad):
                    g = grad.detach().float()
                    output_grads[name] = g if projector is None else g @ projector[1].T

                output.register_hook(grad_hook)

            return forward_hook

        # Parameters are frozen during the pass: autograd then computes only activation gradients
        # (the δ_t we need), not the weight gradients that projections replace.
        requires_grad = {p: p.requires_grad for p in self.model.parameters()}
        embeddings = self.model.get_input_embeddings()
        try:
            for parameter in requires_grad:
                parameter.requires_grad_(False)
            handles.append(embeddings.register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
            for name, module in self.layers:
                handles.append(module.register_forward_hook(capture(name)))
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logprobs = sequence_logprobs(logits, batch, self.options.loss_reduction)
            logprobs.sum().backward()
        finally:
            for handle in handles:
                handle.remove()
            for parameter, flag in requires_grad.items():
                parameter.requires_grad_(flag)
        blocks = []
        for name, _ in self.layers:
            # Σ_t (P_out δ_t)(P_in x_t)ᵀ for every example at once: (B, r_out, r_in)
            block = torch.einsum("bto,bti->boi", output_grads[name], inputs[name])
            blocks.append(block.reshape(block.shape[0], -1))
        return ProjectedGradients(
            gradients=torch.cat(blocks, dim=1),
            logprobs=logprobs.detach(),
            n_tokens=batch.response_mask[:, :-1].sum(dim=1),
        )


def project_in_batches(
    projector: LinearGradientProjector,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    batch_size: int,
    progress=None,
) -> ProjectedGradients:
    """Projected gradients of many (prompt, response) token pairs, ``batch_size`` at a time.

    Pairs are processed in order of length so that padding stays small; results come back in the
    input order.
    """
    from drift_assets.core.sequences import collate_pairs

    device = next(projector.model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    gradients = torch.zeros((len(order), projector.dimension), dtype=torch.float32)
    logprobs = torch.zeros(len(order), dtype=torch.float32)
    n_tokens = torch.zeros(len(order), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate_pairs(tokenizer, [prompt_ids[i] for i in chunk], [response_ids[i] for i in chunk]).to(device)
        result = projector.project(batch)
        index = torch.tensor(chunk)
        gradients[index] = result.gradients.cpu()
        logprobs[index] = result.logprobs.cpu()
        n_tokens[index] = result.n_tokens.cpu()
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return ProjectedGradients(gradients, logprobs, n_tokens)
