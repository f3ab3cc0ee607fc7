"""Projected per-example log-prob gradients of targeted ``nn.Linear`` layers (LoGra-style).

For a linear layer y_t = W x_t the per-example gradient of an objective is Σ_t δ_t x_tᵀ, with
δ_t = ∂objective/∂y_t. Its projection with a Kronecker projector (P_out ⊗ P_in) is

    P_out (Σ_t δ_t x_tᵀ) P_inᵀ = Σ_t (P_out δ_t)(P_in x_t)ᵀ            (r_out × r_in)

so it is computed from the layer's inputs and output-gradients, captured by hooks during one
ordinary batched forward/backward, and the d_out × d_in gradient is never built.

Conventions (docs/method.md):
- the objective is log π_θ(y | x) of each example's response tokens (prompt and padding masked),
  summed over tokens (``loss_reduction="sum"``) or averaged (``"mean"``); the returned vectors are
  ∇_θ log π, i.e. the ascent direction of the log-likelihood;
- the projectors of every layer form a :class:`ProjectionBasis`, which validation and training
  gradients must share. Two bases (``basis``):
  ``pca`` (default, LoGra's PCA initialisation): P_in and P_out hold the top-r eigenvectors of the
  layer's input and output-gradient covariances, fitted on a fixed sample (the pipeline uses the
  validation references). Influence scores are inner products with the validation gradient, so
  keeping the directions in which validation gradients vary keeps most of that inner product
  (``benchmarks/projection_fidelity.py`` compares both bases with the exact-gradient scores);
  ``random``: Gaussian with variance 1/r, drawn from a generator seeded by (seed, layer name), so
  it needs no data and is identical whatever the batch or process;
- ``rank=None`` uses identity projectors (the exact gradient, flattened row-major like
  ``weight.grad``), meant for tests and tiny models;
- biases are not included (Llama's projections have none).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import polars as pl
import torch
from torch import nn

from drift_assets.core.data.sequences import LossReduction, ResponseBatch, collate_pairs, sequence_logprobs
from drift_assets.core.gradients.memory import ModelShape, gradient_pass_plan

Basis = Literal["pca", "random"]
BASES: tuple[str, ...] = get_args(Basis)


@dataclass(frozen=True)
class ProjectionOptions:
    target_modules: str = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    rank: int | None = 16
    seed: int = 0
    loss_reduction: LossReduction = "sum"
    basis: Basis = "pca"
    # Recompute each decoder layer in the backward pass instead of keeping its activations (memory
    # for time); the gradients are the same, so it is not part of the fingerprint.
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"projection.loss_reduction must be 'sum' or 'mean' (got {self.loss_reduction!r})")
        if self.basis not in BASES:
            raise ValueError(f"projection.basis must be one of {BASES} (got {self.basis!r})")

    def fingerprint(self) -> str:
        text = f"{self.target_modules}|{self.rank}|{self.seed}|{self.loss_reduction}|{self.basis}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def gaussian_projector(rows: int, columns: int, seed: int, layer_name: str, which: str) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{layer_name}/{which}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(rows, columns, generator=generator) / rows**0.5


def matching_layers(model: nn.Module, target_modules: str) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear layers whose names ``target_modules`` full-matches (none is no error here)."""
    pattern = re.compile(target_modules)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear) and pattern.fullmatch(name)]


def target_layers(model: nn.Module, target_modules: str) -> list[tuple[str, nn.Linear]]:
    layers = matching_layers(model, target_modules)
    if not layers:
        examples = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][:4]
        raise ValueError(
            f"projection.target_modules {target_modules!r} matches no nn.Linear layer (linear layers are named like {examples})"
        )
    return layers


@dataclass
class ProjectionBasis:
    """Per-layer projectors ``layer -> (P_in (r, d_in), P_out (r, d_out))``, float32 on the CPU."""

    options: ProjectionOptions
    matrices: dict[str, tuple[torch.Tensor, torch.Tensor]]
    fit_tokens: int = 0  # tokens passed forward and backward to fit it, over every pass (0: random)

    def fingerprint(self) -> str:
        """Identifies the projection: gradient rows computed under another basis cannot be reused."""
        digest = hashlib.sha256(self.options.fingerprint().encode())
        for name in sorted(self.matrices):
            digest.update(name.encode())
            for matrix in self.matrices[name]:
                digest.update(matrix.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def metadata(self, references: int, model_fingerprint: str) -> dict[str, str | int]:
        """What ``projection_basis`` records of the basis fitted for the model ``model_fingerprint``: a
        pca basis is fitted on the ``references`` sequences, a random one on none."""
        return {
            "basis": self.options.basis,
            "rank": self.options.rank,
            "layers": len(self.matrices),
            "fitted_on_sequences": references if self.options.basis == "pca" else 0,
            "basis_fingerprint": self.fingerprint(),
            "model_fingerprint": model_fingerprint,
        }

    def non_finite_layers(self) -> list[str]:
        """The layers whose projectors hold NaN or inf (fitted on non-finite activations or gradients)."""
        return [name for name, pair in sorted(self.matrices.items()) if not all(bool(torch.isfinite(m).all()) for m in pair)]

    def to_frame(self) -> pl.DataFrame:
        """One row per (layer, side): the matrix flattened row-major, with its shape."""
        rows = [
            (name, side, int(matrix.shape[0]), int(matrix.shape[1]), matrix.reshape(-1).numpy().astype(np.float32))
            for name, pair in self.matrices.items()
            for side, matrix in zip(("in", "out"), pair, strict=True)
        ]
        return pl.DataFrame(
            {
                "layer": [r[0] for r in rows],
                "side": [r[1] for r in rows],
                "rank": [r[2] for r in rows],
                "width": [r[3] for r in rows],
                "values": pl.Series("values", [r[4] for r in rows], dtype=pl.List(pl.Float32)),
                "basis_fingerprint": [self.fingerprint()] * len(rows),
            }
        )

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, options: ProjectionOptions) -> ProjectionBasis:
        sides: dict[str, dict[str, torch.Tensor]] = {}
        for row in frame.iter_rows(named=True):
            matrix = torch.tensor(np.asarray(row["values"], dtype=np.float32)).reshape(row["rank"], row["width"])
            sides.setdefault(row["layer"], {})[row["side"]] = matrix
        incomplete = sorted(name for name, pair in sides.items() if set(pair) != {"in", "out"})
        if incomplete:
            raise ValueError(f"projection_basis lacks the in or out projector of layers {incomplete}: re-materialize it")
        basis = cls(options, {name: (pair["in"], pair["out"]) for name, pair in sides.items()})
        recorded = set(frame["basis_fingerprint"].unique()) if "basis_fingerprint" in frame.columns else set()
        if recorded and recorded != {basis.fingerprint()}:
            raise ValueError(
                f"projection_basis was fitted under other projection settings (fingerprint {sorted(recorded)}, "
                f"these settings give {basis.fingerprint()}): re-materialize projection_basis"
            )
        return basis


def narrow(width: int, rank: int) -> bool:
    """Whether a layer side of ``width`` is kept whole: projecting it to ``rank`` ≥ its width would
    compress nothing (a LoRA adapter's rank side, say), so its projector is the identity (exact)."""
    return width <= rank


def random_basis(model: nn.Module, options: ProjectionOptions) -> ProjectionBasis:
    """Gaussian projectors from (seed, layer name): no data needed (the identity on a narrow side)."""

    def projector(width: int, name: str, which: str) -> torch.Tensor:
        if narrow(width, options.rank):
            return torch.eye(width)
        return gaussian_projector(options.rank, width, options.seed, name, which)

    return ProjectionBasis(
        options,
        {
            name: (projector(module.in_features, name, "in"), projector(module.out_features, name, "out"))
            for name, module in target_layers(model, options.target_modules)
        },
    )


def _top_eigenvectors(covariance: torch.Tensor, rank: int) -> torch.Tensor:
    """(rank, d) leading eigenvectors, each signed so that its largest entry is positive (determinism).

    In float64 on the covariance's own device: the time grows as d³, so an LLM's covariances belong
    on its GPU (CPU timings in docs/operating.md, "Scale-out").
    """
    _, vectors = torch.linalg.eigh(covariance.double())
    top = vectors[:, -rank:].flip(1).T
    signs = torch.sign(top.gather(1, top.abs().argmax(dim=1, keepdim=True)))
    return (top * signs).float().cpu().contiguous()


def _side_projector(covariance: torch.Tensor | None, width: int, rank: int) -> torch.Tensor:
    return torch.eye(width) if narrow(width, rank) else _top_eigenvectors(covariance, rank)


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` (CUDA: what the allocator can get; else the host's MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def covariance_groups(layers: list[tuple[str, nn.Linear]], budget_bytes: int) -> list[list[tuple[str, nn.Linear]]]:
    """Consecutive layers whose float32 covariances (d_in² + d_out² each) fit in ``budget_bytes``
    together; a layer over the budget on its own forms a group of one."""
    groups: list[list[tuple[str, nn.Linear]]] = []
    used = 0
    for name, module in layers:
        size = 4 * (module.in_features**2 + module.out_features**2)
        if not groups or used + size > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append((name, module))
        used += size
    return groups


def fit_pca_basis(
    model: nn.Module,
    options: ProjectionOptions,
    batches: Iterable[ResponseBatch],
    budget_bytes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ProjectionBasis:
    """PCA projectors: top-r eigenvectors of Σ x xᵀ (layer inputs) and Σ δ δᵀ (output gradients).

    The covariances are d×d float32 per targeted layer, held on the model's device: for an LLM, much
    of a GPU or more (sizes per model in docs/operating.md, "Scale-out"). So the layers are taken in
    groups whose covariances fit in ``budget_bytes`` (default: half the device's free memory), one
    pass over ``batches`` per group, each group eigendecomposed and freed before the next. A
    layer's covariance does not depend on which other layers are hooked, so the basis is the same
    however the layers are grouped.
    """
    layers = target_layers(model, options.target_modules)
    if budget_bytes is None:
        budget_bytes = available_memory(next(model.parameters()).device) // 2
    groups = covariance_groups(layers, budget_bytes)
    batches = list(batches) if len(groups) > 1 else batches  # token ids only: cheap to keep for several passes
    if log:
        sides = [width for _, m in layers for width in (m.in_features, m.out_features) if not narrow(width, options.rank)]
        held = f"PCA basis: the covariances of {len(layers)} layers hold {sum(4 * w * w for w in sides) / 2**30:.3g} GiB"
        if len(groups) > 1:
            log(f"{held}, over the {budget_bytes / 2**30:.3g} GiB budget: {len(groups)} passes over the references")
        else:
            log(f"{held}: one pass over the references")
    matrices: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    fit_tokens = 0
    for group in groups:
        input_covariance: dict[str, torch.Tensor] = {}
        output_covariance: dict[str, torch.Tensor] = {}
        n_tokens = 0

        def accumulate(store: dict[str, torch.Tensor], name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
            if narrow(values.shape[-1], options.rank):  # kept whole: no covariance needed
                return
            flat = values[mask]
            store[name] = store.get(name, 0) + flat.T @ flat

        for batch in batches:
            mask = batch.attention_mask.bool()
            n_tokens += int(mask.sum())
            with _captured(
                model,
                group,
                on_input=lambda name, x, mask=mask, store=input_covariance: accumulate(store, name, x, mask),
                on_output_grad=lambda name, g, mask=mask, store=output_covariance: accumulate(store, name, g, mask),
            ):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                sequence_logprobs(logits, batch, options.loss_reduction).sum().backward()
        if n_tokens < options.rank:
            raise ValueError(f"the PCA basis was fitted on {n_tokens} tokens, fewer than projection.rank {options.rank}")
        fit_tokens += n_tokens
        for name, module in group:
            matrices[name] = (
                _side_projector(input_covariance.pop(name, None), module.in_features, options.rank),
                _side_projector(output_covariance.pop(name, None), module.out_features, options.rank),
            )
    return ProjectionBasis(options, {name: matrices[name] for name, _ in layers}, fit_tokens)


def fit_basis(
    model: nn.Module,
    options: ProjectionOptions,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    batch_size: int,
    budget_bytes: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ProjectionBasis:
    """The basis ``options.basis`` asks for; ``pca`` is fitted on the given (prompt, response) pairs
    (``budget_bytes``, ``log``: see :func:`fit_pca_basis`)."""
    if options.rank is None:
        raise ValueError("projection.rank is None (exact gradients): there is no basis to fit")
    if options.basis == "random":
        return random_basis(model, options)
    if not prompt_ids:
        raise ValueError("the PCA projection basis needs at least one (prompt, response) pair to fit on")
    device = next(model.parameters()).device
    batches = (
        collate_pairs(tokenizer, prompt_ids[start : start + batch_size], response_ids[start : start + batch_size]).to(device)
        for start in range(0, len(prompt_ids), batch_size)
    )
    return fit_pca_basis(model, options, batches, budget_bytes, log)


@contextmanager
def _captured(
    model: nn.Module,
    layers: list[tuple[str, nn.Linear]],
    on_input: Callable[[str, torch.Tensor], None],
    on_output_grad: Callable[[str, torch.Tensor], None],
):
    """Hooks that hand every targeted layer's input and output-gradient to the callbacks.

    Parameters are frozen meanwhile: autograd then computes only activation gradients (the δ_t we
    need), not the weight gradients that projections replace.
    """
    handles = []
    requires_grad = {p: p.requires_grad for p in model.parameters()}

    def hook(name: str):
        def forward_hook(module, args, output):
            on_input(name, args[0].detach().float())
            output.register_hook(lambda grad: on_output_grad(name, grad.detach().float()))

        return forward_hook

    try:
        for parameter in requires_grad:
            parameter.requires_grad_(False)
        handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.requires_grad_(True)))
        for name, module in layers:
            handles.append(module.register_forward_hook(hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)


@contextmanager
def _checkpointed(model: nn.Module, enabled: bool):
    """transformers' gradient checkpointing for one gradient pass of a model in eval mode.

    transformers checkpoints a decoder layer only while that layer is in training mode. Only the
    layers themselves are switched (their attention and MLP stay in eval mode: no dropout), and
    non-reentrant checkpointing keeps the original graph, on whose tensors the hooks wait for
    their gradients; the recomputed forward calls the input hooks again with the same values.
    """
    if not enabled:
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"projection.gradient_checkpointing: {type(model).__name__} has no layer transformers can checkpoint")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        for layer in layers:
            layer.training = True
        yield
    finally:
        for layer in layers:
            layer.training = False
        model.gradient_checkpointing_disable()


@dataclass
class ProjectedGradients:
    """``gradients`` (B, k) float32; ``logprobs`` (B,) the objective's value; ``n_tokens`` (B,)."""

    gradients: torch.Tensor
    logprobs: torch.Tensor
    n_tokens: torch.Tensor


class LinearGradientProjector:
    """Hooks that turn one batched forward/backward into projected per-example gradients.

    ``basis`` is required for ``pca`` (fit it once with :func:`fit_basis` and share it); a
    ``random`` basis is drawn here when none is given; ``rank=None`` needs none.
    """

    def __init__(self, model: nn.Module, options: ProjectionOptions = ProjectionOptions(), basis: ProjectionBasis | None = None):
        self.model = model
        self.options = options
        self.layers = target_layers(model, options.target_modules)
        if options.rank is not None and basis is None:
            if options.basis != "random":
                raise ValueError(f"projection.basis {options.basis!r} needs a fitted ProjectionBasis (see fit_basis)")
            basis = random_basis(model, options)
        self.basis = basis
        device = next(model.parameters()).device
        self.projectors: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
        for name, module in self.layers:
            if basis is None:
                self.projectors[name] = None
                continue
            if name not in basis.matrices:
                raise ValueError(f"the projection basis has no projector for layer {name!r}: re-fit it for this model")
            p_in, p_out = basis.matrices[name]
            if p_in.shape[1] != module.in_features or p_out.shape[1] != module.out_features:
                raise ValueError(
                    f"projection basis for {name!r} is {tuple(p_out.shape)}/{tuple(p_in.shape)} (out/in), but the layer is "
                    f"{module.out_features}×{module.in_features}: re-fit it for this model"
                )
            self.projectors[name] = (p_in.to(device), p_out.to(device))

    @property
    def dimension(self) -> int:
        if self.basis is None:
            return sum(m.in_features * m.out_features for _, m in self.layers)
        return sum(p_in.shape[0] * p_out.shape[0] for p_in, p_out in self.projectors.values())

    @property
    def hooked_values(self) -> int:
        """Values per token the hooks keep: each layer's projected input and output gradient."""
        if self.basis is None:
            return sum(m.in_features + m.out_features for _, m in self.layers)
        return sum(p_in.shape[0] + p_out.shape[0] for p_in, p_out in self.projectors.values())

    @property
    def fingerprint(self) -> str:
        """Identifies the projection (settings and basis): rows under another one are not reusable."""
        return self.options.fingerprint() if self.basis is None else self.basis.fingerprint()

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers]

    def project(self, batch: ResponseBatch) -> ProjectedGradients:
        """Projected ∇_θ log π(response | prompt) of every example in ``batch``."""
        inputs: dict[str, torch.Tensor] = {}
        output_grads: dict[str, torch.Tensor] = {}

        def keep_input(name: str, x: torch.Tensor) -> None:
            projector = self.projectors[name]
            inputs[name] = x if projector is None else x @ projector[0].T

        def keep_output_grad(name: str, g: torch.Tensor) -> None:
            projector = self.projectors[name]
            output_grads[name] = g if projector is None else g @ projector[1].T

        with (
            _captured(self.model, self.layers, keep_input, keep_output_grad),
            _checkpointed(self.model, self.options.gradient_checkpointing),
        ):
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            logprobs = sequence_logprobs(logits, batch, self.options.loss_reduction)
            logprobs.sum().backward()
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
    log: Callable[[str], None] | None = None,
) -> ProjectedGradients:
    """Projected gradients of many (prompt, response) token pairs, ``batch_size`` at a time.

    Pairs are processed in order of length so that padding stays small; results come back in the
    input order. The pass's planned peak memory is logged first, and checked against what the
    device has free (:class:`~drift_assets.core.gradients.memory.MemoryPlanError` naming the setting).
    """
    device = next(projector.model.parameters()).device
    if prompt_ids:
        longest = max(len(prompt) + len(response) for prompt, response in zip(prompt_ids, response_ids))
        plan = gradient_pass_plan(
            ModelShape.of(projector.model),
            min(batch_size, len(prompt_ids)),
            longest,
            projector.hooked_values,
            projector.dimension,
            projector.options.gradient_checkpointing,
        )
        if log:
            log(plan.describe())
        plan.check(
            available_memory(device),
            str(device),
            "Lower projection.batch_size, set projection.gradient_checkpointing, or cap data.max_example_tokens.",
        )
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
