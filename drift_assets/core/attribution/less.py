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

``less_onpolicy`` (the registered candidate ``adam``) keeps LESS's training side and makes the
validation side on-policy, as DRIFT's default target is: at each checkpoint the correct rollouts
that checkpoint sampled (``positive`` weighting: 1/n⁺_j for each of query j's n⁺_j right answers,
the wrong ones nothing, a query with none skipped there), each its plain projected unit gradient
(the same projector), over the span DRIFT's validation gradients cover. Query j's score is the
1/n⁺_j-weighted sum of its right answers' cosines with each training example's Adam step, averaged
over the checkpoints where it has a right answer with the weights η_c (renormalized over those
checkpoints, as DRIFT averages a query over the checkpoints whose target it is part of); a query
right at no checkpoint has no column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from drift_assets.core.data.sequences import collate_pairs, sequence_logprobs
from drift_assets.core.gradients.tables import response_token_pairs
from drift_assets.core.grading.weighting import rollout_weights

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
                "warmup.optimizer_state (auto saves it where benchmark.methods names less, less_round_robin or "
                "less_onpolicy) and re-materialize warmup_checkpoints"
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


@dataclass
class LessCheckpoint:
    """One checkpoint's contribution: its weight η and the (examples × queries) cosines; ``query_ids``
    names the columns where they are some of the queries (the on-policy side: those solved there)."""

    checkpoint: str
    learning_rate: float
    cosines: np.ndarray
    query_ids: list[str] | None = None


def less_matrix(checkpoints: Sequence[LessCheckpoint]) -> np.ndarray:
    """(examples, queries) Σ_c η_c cos_c with the η_c normalized to sum to 1 (matching.py)."""
    if not checkpoints:
        raise ValueError("LESS scores along a warm-up run's checkpoints, and there are none (warmup.steps is empty)")
    total = sum(checkpoint.learning_rate for checkpoint in checkpoints)
    if total <= 0:
        raise ValueError("LESS weighs checkpoints by their learning rate, and every checkpoint's is 0")
    return sum(checkpoint.learning_rate / total * checkpoint.cosines for checkpoint in checkpoints)


def less_onpolicy_matrix(checkpoints: Sequence[LessCheckpoint]) -> tuple[list[str], np.ndarray]:
    """The queries right at some checkpoint (sorted) and their (examples, queries) scores: each
    query's columns averaged over the checkpoints where it has one, weighted by η_c."""
    if not checkpoints:
        raise ValueError("less_onpolicy scores along a warm-up run's checkpoints, and there are none (warmup.steps is empty)")
    totals: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for checkpoint in checkpoints:
        for column, query_id in enumerate(checkpoint.query_ids or []):
            totals[query_id] = totals.get(query_id, 0.0) + checkpoint.learning_rate * checkpoint.cosines[:, column]
            weights[query_id] = weights.get(query_id, 0.0) + checkpoint.learning_rate
    if not totals:
        names = ", ".join(checkpoint.checkpoint for checkpoint in checkpoints)
        raise ValueError(
            f"less_onpolicy targets the correct rollouts, and there is no correct rollout at any warm-up checkpoint "
            f"({names}): raise rollout.temperature or rollout.samples_per_query, or use validation queries the model "
            "solves sometimes"
        )
    zero = [query_id for query_id, weight in weights.items() if weight <= 0]
    if zero:
        raise ValueError(
            f"less_onpolicy weighs checkpoints by their learning rate, and query {zero[0]} is right only where it is 0"
        )
    query_ids = sorted(totals)
    return query_ids, np.column_stack([totals[query_id] / weights[query_id] for query_id in query_ids])


@dataclass
class CorrectRollouts:
    """One checkpoint's correct rollouts, each with its query and the ``positive`` weight 1/n⁺ of that
    query's right answers there (a query's weights sum to 1), and the tokens to differentiate."""

    query_ids: list[str]
    weights: np.ndarray
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_ids: list[str] | None = None

    def columns(self) -> tuple[list[str], np.ndarray]:
        """The queries (in order of appearance) and the (rollouts, queries) weights summing each query's rollouts."""
        query_ids = list(dict.fromkeys(self.query_ids))
        position = {query_id: index for index, query_id in enumerate(query_ids)}
        combine = np.zeros((len(self.query_ids), len(query_ids)))
        for row, (query_id, weight) in enumerate(zip(self.query_ids, self.weights, strict=True)):
            combine[row, position[query_id]] = weight
        return query_ids, combine


def correct_rollouts(
    tokenizer,
    rollouts: pl.DataFrame,
    grades: pl.DataFrame,
    answer_marker: str | None = None,
    checkpoint: str = "",
    model_fingerprint: str | None = None,
) -> CorrectRollouts:
    """One checkpoint's right answers (``rollouts`` and ``grades``: that checkpoint's rows), weighted as
    DRIFT's ``positive`` weighting weighs them, each as the ids it was sampled as (the answer span
    with ``answer_marker``, as :func:`~drift_assets.core.gradients.tables.response_token_pairs` splits it).
    ``model_fingerprint``: the checkpoint's model, which must have sampled them (the target is its own)."""
    where = f"checkpoint {checkpoint}: " if checkpoint else ""
    if "token_ids" not in rollouts.columns:
        raise ValueError(f"{where}rollouts has no token_ids column (written by an earlier drift_assets): re-materialize rollouts")
    if model_fingerprint is not None and "model_fingerprint" in rollouts.columns:
        stale = sorted(set(rollouts["model_fingerprint"].unique()) - {model_fingerprint})
        if stale:
            raise ValueError(
                f"{where}rollouts were sampled from model {stale}, not the checkpoint's {model_fingerprint}: re-materialize them"
            )
    ungraded = rollouts.join(grades.select("rollout_id"), on="rollout_id", how="anti")
    if ungraded.height:
        raise ValueError(
            f"{where}{ungraded.height} rollouts have no grade (e.g. {ungraded['rollout_id'].sort()[0]}): "
            "re-materialize grades for that checkpoint"
        )
    if not grades["correct"].any():
        return CorrectRollouts([], np.zeros(0), [], [], [])
    weighted, summary = rollout_weights(grades, "positive")
    # rollout_weights divides by the number of queries used; each query's weights here sum to 1.
    weighted = weighted.filter(pl.col("weight") > 0).with_columns(pl.col("weight") * summary.queries_used)
    chosen = rollouts.join(weighted.select("rollout_id", "weight"), on="rollout_id", how="inner").sort("query_id", "rollout_id")
    prompt_ids, response_ids = response_token_pairs(
        tokenizer, chosen["prompt"], chosen["completion"], chosen["token_ids"], answer_marker
    )
    return CorrectRollouts(
        chosen["query_id"].to_list(), chosen["weight"].to_numpy(), prompt_ids, response_ids, chosen["rollout_id"].to_list()
    )


def score_checkpoint(
    model,
    tokenizer,
    moments: AdamMoments,
    training: tuple[Sequence[list[int]], Sequence[list[int]]],
    validation: tuple[Sequence[list[int]], Sequence[list[int]]],
    projector: RademacherProjector | None,
    checkpoint: str = "",
) -> LessCheckpoint:
    """One checkpoint's cosines of the training examples' Adam steps with the validation references' gradients."""
    train = less_features(model, tokenizer, *training, moments.names, projector, moments)
    queries = less_features(model, tokenizer, *validation, moments.names, projector)
    return LessCheckpoint(checkpoint, moments.learning_rate, train @ queries.T)


def projector_for(model, names: Sequence[str], projected: int | None = PROJECTION_DIMENSION) -> RademacherProjector | None:
    """The one projector of a run (None: no projection), sized to the trained parameters."""
    if projected is None:
        return None
    dimension = sum(parameter.numel() for parameter in trained_parameters(model, names))
    return RademacherProjector(dimension, projected)


@dataclass
class LessScores:
    """LESS's (examples × queries) scores against the references (``reference``), and/or
    ``less_onpolicy``'s against the correct rollouts (``onpolicy``, its columns ``onpolicy_query_ids``)."""

    reference: np.ndarray | None
    onpolicy: np.ndarray | None
    onpolicy_query_ids: list[str] | None


def less_scores_along(
    checkpoints: Iterable[tuple[str, object, AdamMoments, CorrectRollouts | None]],
    tokenizer,
    training: tuple[Sequence[list[int]], Sequence[list[int]]],
    validation: tuple[Sequence[list[int]], Sequence[list[int]]] | None,
    projected: int | None = PROJECTION_DIMENSION,
) -> LessScores:
    """LESS's scores along (checkpoint, model, moments, correct rollouts) quadruples, one model in memory
    at a time: the training examples' Adam steps computed once per checkpoint, against the references
    (``validation``; None: not scored) and the correct rollouts (None at every checkpoint: not scored)."""
    reference, onpolicy, projector = [], [], None
    for checkpoint, model, moments, correct in checkpoints:
        if projector is None:
            projector = projector_for(model, moments.names, projected)
        train = less_features(model, tokenizer, *training, moments.names, projector, moments)
        if validation is not None:
            queries = less_features(model, tokenizer, *validation, moments.names, projector)
            reference.append(LessCheckpoint(checkpoint, moments.learning_rate, train @ queries.T))
        if correct is not None:
            answers = less_features(model, tokenizer, correct.prompt_ids, correct.response_ids, moments.names, projector)
            query_ids, combine = correct.columns()
            onpolicy.append(LessCheckpoint(checkpoint, moments.learning_rate, train @ answers.T @ combine, query_ids))
    query_ids, matrix = less_onpolicy_matrix(onpolicy) if onpolicy else (None, None)
    return LessScores(less_matrix(reference) if validation is not None else None, matrix, query_ids)


def less_along(
    checkpoints: Iterable[tuple[str, object, AdamMoments]],
    tokenizer,
    training: tuple[Sequence[list[int]], Sequence[list[int]]],
    validation: tuple[Sequence[list[int]], Sequence[list[int]]],
    projected: int | None = PROJECTION_DIMENSION,
) -> np.ndarray:
    """(examples, queries) LESS scores along (checkpoint, model, moments) triples, one model in memory at a time."""
    triples = ((checkpoint, model, moments, None) for checkpoint, model, moments in checkpoints)
    return less_scores_along(triples, tokenizer, training, validation, projected).reference
