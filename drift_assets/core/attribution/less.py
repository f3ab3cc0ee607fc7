"""LESS (Xia et al. 2024, "LESS: Selecting Influential Data for Targeted Instruction Tuning") as
its authors compute it (princeton-nlp/LESS: less/data_selection/collect_grad_reps.py, matching.py).

- At each checkpoint of a warm-up run, each training example's gradient g of its own loss (the
  mean negative log-likelihood of its response tokens, one example at a time) becomes the step
  Adam would take on it alone from the checkpoint's optimizer state (their
  ``obtain_gradients_with_adam``): m' = β₁m + (1−β₁)g, v' = β₂v + (1−β₂)g², Γ = m' / √(v' + ε),
  with β = (0.9, 0.999), ε = 1e-8, no bias correction, and ε inside the root as their code has it.
- Each validation query's reference answer gives the plain gradient of its loss (their "sgd"
  gradients: the validation side is off-policy).
- Both are projected by one seeded Rademacher matrix (TRAK's projector, which LESS uses, the
  same at every checkpoint) and normalized to unit length.
- Training example i scores Σ_c η_c ⟨Γ̂_ic, ĝ_jc⟩ for query j, over the checkpoints c, with η_c the
  mean learning rate of the steps that led to c (their "average lr of the epoch"), normalized to
  sum to 1; a task's score is the mean over its queries (matching.py takes the mean over a task's
  examples, then the max over tasks: here there is one task).

Only the parameters the warm-up trained count (those the saved optimizer state covers): every
weight, or LoRA's adapters as in LESS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drift_assets.core.data.sequences import collate_pairs, sequence_logprobs

OPTIMIZER_STATE_FILE = "optimizer_state.pt"  # beside a warm-up checkpoint's weights (not part of its fingerprint)
ADAM_BETAS = (0.9, 0.999)  # LESS's obtain_gradients_with_adam (the warm-up's AdamW uses the same)
ADAM_EPSILON = 1e-8
PROJECTION_DIMENSION = 1024  # LESS projects 7B models' LoRA gradients to 8192; the tiny models here to as many as TRAK's rows in benchmarks/lds.py (projected=None: exact)
PROJECTION_SEED = 0  # LESS: seed 0, model_id 0, for every checkpoint and both sides
_PROJECTION_ROWS = 1 << 16  # rows of the projection generated (and seeded) at a time


@dataclass
class AdamMoments:
    """AdamW's moments at a warm-up checkpoint, by parameter name, and the rate that led there."""

    step: int
    learning_rate: float  # the mean rate of the steps since the previous checkpoint
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (exp_avg, exp_avg_sq)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / OPTIMIZER_STATE_FILE
        state = {
            "step": self.step,
            "learning_rate": self.learning_rate,
            "exp_avg": {name: first for name, (first, _) in self.moments.items()},
            "exp_avg_sq": {name: second for name, (_, second) in self.moments.items()},
        }
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> AdamMoments:
        path = Path(directory) / OPTIMIZER_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the warm-up checkpoint has no optimizer state, which LESS preconditions with: set "
                "warmup.optimizer_state (auto saves it where benchmark.methods names less or less_round_robin) and "
                "re-materialize warmup_checkpoints"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        moments = {name: (first, state["exp_avg_sq"][name]) for name, first in state["exp_avg"].items()}
        return cls(int(state["step"]), float(state["learning_rate"]), moments)

    @property
    def names(self) -> list[str]:
        return list(self.moments)

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(exp_avg, exp_avg_sq) as vectors, in :attr:`names` order (the order of the gradients)."""
        return tuple(torch.cat([self.moments[name][part].reshape(-1).float() for name in self.moments]) for part in (0, 1))


def adam_preconditioned(gradients: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> torch.Tensor:
    """(n, d): each row's Adam step from the given moments, LESS's way (no bias correction, ε under the root)."""
    beta1, beta2 = ADAM_BETAS
    first = beta1 * exp_avg + (1 - beta1) * gradients
    second = beta2 * exp_avg_sq + (1 - beta2) * gradients**2
    return first / torch.sqrt(second + ADAM_EPSILON)


class RademacherProjector:
    """x ↦ xᵀP/√k with P a (d, k) matrix of independent ±1 entries (TRAK's Rademacher projector).

    P is generated in blocks of rows, each from its own seeded generator, so the matrix depends on
    (d, k, seed) alone, not on how the gradients are batched; the blocks are kept (as int8) for the
    next batch.
    """

    def __init__(self, dimension: int, projected: int, seed: int = PROJECTION_SEED):
        if dimension < 1 or projected < 1:
            raise ValueError(f"a projection needs positive dimensions (got {dimension} -> {projected})")
        self.dimension, self.projected, self.seed = dimension, projected, seed
        self._blocks: dict[int, torch.Tensor] = {}

    def block(self, start: int) -> torch.Tensor:
        """Rows ``start`` .. ``start + 65536`` of P (±1, int8)."""
        if start not in self._blocks:
            rows = min(_PROJECTION_ROWS, self.dimension - start)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + start // _PROJECTION_ROWS)
            signs = torch.randint(0, 2, (rows, self.projected), generator=generator, dtype=torch.int8)
            self._blocks[start] = signs * 2 - 1
        return self._blocks[start]

    def matrix(self) -> torch.Tensor:
        """P as float32 (d, k): for tests."""
        return torch.cat([self.block(start) for start in range(0, self.dimension, _PROJECTION_ROWS)]).float()

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, k) float32."""
        if vectors.shape[-1] != self.dimension:
            raise ValueError(f"the projection takes {self.dimension}-dimensional gradients, got {vectors.shape[-1]}")
        vectors = vectors.float()
        projected = torch.zeros(vectors.shape[0], self.projected)
        for start in range(0, self.dimension, _PROJECTION_ROWS):
            block = self.block(start)
            projected += vectors[:, start : start + block.shape[0]] @ block.float()
        return projected / math.sqrt(self.projected)


def trained_parameters(model, names: Sequence[str]) -> list[torch.nn.Parameter]:
    """The parameters of ``model`` named in the optimizer state, in that order (with gradients on)."""
    by_name = dict(model.named_parameters())
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(
            f"the warm-up's optimizer state names {len(missing)} parameters the checkpoint's model lacks "
            f"(e.g. {missing[:3]}): re-materialize warmup_checkpoints"
        )
    parameters = [by_name[name] for name in names]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def example_gradients(
    model, tokenizer, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], parameters: list[torch.nn.Parameter]
) -> Iterator[torch.Tensor]:
    """Each example's flattened gradient (d,) of its mean response-token loss, one example at a time
    (as LESS's batch size of 1: no padding enters any example's loss)."""
    device = next(model.parameters()).device
    model.eval()  # no dropout: the gradient of the checkpoint's own function
    for prompt, response in zip(prompt_ids, response_ids, strict=True):
        batch = collate_pairs(tokenizer, [prompt], [response]).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        loss = -sequence_logprobs(logits, batch, "mean")[0]
        gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
        yield torch.cat(
            [
                (gradient if gradient is not None else torch.zeros_like(parameter)).reshape(-1).float().cpu()
                for gradient, parameter in zip(gradients, parameters, strict=True)
            ]
        )


def less_features(
    model,
    tokenizer,
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    names: Sequence[str],
    projector: RademacherProjector | None,
    moments: AdamMoments | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """(n, k) unit rows: each example's gradient (Adam-preconditioned with ``moments``, else plain),
    projected (``projector``; None keeps the whole gradient) and normalized."""
    parameters = trained_parameters(model, names)
    exp_avg, exp_avg_sq = moments.flat() if moments is not None else (None, None)
    rows, pending = [], []

    def flush() -> None:
        gradients = torch.stack(pending)
        pending.clear()
        if exp_avg is not None:
            gradients = adam_preconditioned(gradients, exp_avg, exp_avg_sq)
        if projector is not None:
            gradients = projector.project(gradients)
        rows.append(torch.nn.functional.normalize(gradients.double(), dim=1).numpy())

    for gradient in example_gradients(model, tokenizer, prompt_ids, response_ids, parameters):
        pending.append(gradient)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    width = projector.projected if projector is not None else sum(p.numel() for p in parameters)
    return np.concatenate(rows) if rows else np.zeros((0, width))


def less_along(
    checkpoints: Iterable[tuple[str, object, AdamMoments]],
    tokenizer,
    training: tuple[Sequence[list[int]], Sequence[list[int]]],
    validation: tuple[Sequence[list[int]], Sequence[list[int]]],
    projected: int | None = PROJECTION_DIMENSION,
) -> np.ndarray:
    """(examples, queries) LESS scores along (checkpoint, model, moments) triples, one model in memory at a
    time: Σ_c η_c cos_c, each checkpoint's cosines of the training examples' Adam steps with the validation
    references' gradients, the η_c normalized to sum to 1 (matching.py). One projector (None: no
    projection) serves every checkpoint, sized to the trained parameters."""
    weighted, projector = [], None
    for _, model, moments in checkpoints:
        if projector is None and projected is not None:
            projector = RademacherProjector(sum(p.numel() for p in trained_parameters(model, moments.names)), projected)
        train = less_features(model, tokenizer, *training, moments.names, projector, moments)
        queries = less_features(model, tokenizer, *validation, moments.names, projector)
        weighted.append((moments.learning_rate, train @ queries.T))
    if not weighted:
        raise ValueError("LESS scores along a warm-up run's checkpoints, and there are none (warmup.steps is empty)")
    total = sum(learning_rate for learning_rate, _ in weighted)
    if total <= 0:
        raise ValueError("LESS weighs checkpoints by their learning rate, and every checkpoint's is 0")
    return sum(learning_rate / total * cosines for learning_rate, cosines in weighted)
