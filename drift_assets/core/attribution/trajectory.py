"""DRIFT along a warm-up run: the pool scored at several checkpoints, the scores combined.

First-order influence at one checkpoint measures how a small step on an example pushes against the
model's *current* errors. When those errors lean one way (the demo's base model answers too low
more often than too high), the signed target points "answer higher", and examples whose answers
are too high score above correct ones. Full SFT is not a small step. LESS scores over the
checkpoints of a short warm-up run and TracIn-CP sums over a training trajectory for the same
reason: the errors the model makes change along the run, and so does what pushes against them.

Every checkpoint keeps the same-checkpoint rule (docs/method.md): its own rollouts, grades, basis
and gradients. The base model is checkpoint ``base``. The scores of each checkpoint are
standardized (their scale follows ‖g‖, which shrinks as the model improves) and averaged, the base
model's included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path, PurePath

import numpy as np
import polars as pl

from drift_assets.core.attribution.influence import Curvature, PoolScores, fit_curvature, score_pool
from drift_assets.core.attribution.less import OPTIMIZER_STATE_FILE, AdamMoments
from drift_assets.core.attribution.scores import (
    ScoringSettings,
    TargetGradient,
    check_same_checkpoint,
    scores_frame,
    target_gradient,
    weighted_rollouts,
)
from drift_assets.core.attribution.selection import base_losses_of, blended_ranks, round_robin_ranks
from drift_assets.core.gradients.tables import vectors
from drift_assets.core.training.adapters import LoraOptions, add_adapter
from drift_assets.core.training.sft import SftOptions, SftRun, SftStep, fine_tune

BASE = "base"  # the checkpoint key of the base model itself


def checkpoint_key(step: int) -> str:
    """The partition key of a warm-up step: zero-padded so that keys sort as steps do."""
    return f"{step:06d}"


def checkpoint_keys(steps: Sequence[int]) -> list[str]:
    """Every checkpoint the pool is scored at: the base model, then the warm-up steps."""
    return [BASE, *(checkpoint_key(step) for step in steps)]


def given_checkpoint_keys(paths: Sequence[str]) -> list[str]:
    """The partition key of each given checkpoint directory (``warmup.checkpoints``): its name, in
    letters, digits and ``_.-`` (other runs of characters become ``-``; a name of digits alone, a warm-up step's form,
    becomes ``checkpoint-<digits>``), so that a key reads as the directory and stays when entries
    are added or reordered. Raises naming the entry whose key is empty, ``base`` or another entry's."""
    keys: list[str] = []
    for index, path in enumerate(paths):
        entry = f"entry {index} ({path!r})"
        key = re.sub(r"[^\w.-]+", "-", PurePath(str(path).rstrip("/\\")).name).strip("-.")
        key = f"checkpoint-{key}" if key.isdigit() else key
        if not key:
            raise ValueError(f"{entry}: its directory name gives no partition key; name the directory")
        if key == BASE:
            raise ValueError(f"{entry}: a directory named {BASE!r} would pass for the base model's checkpoint; rename it")
        if key in keys:
            raise ValueError(
                f"{entry}: its name {key!r} is also entry {keys.index(key)}'s (each directory names its partition): "
                "link one of them under another name"
            )
        keys.append(key)
    return keys


def check_given_checkpoint(index: int, path: str | Path, base_model: str | Path) -> None:
    """Raise, naming ``warmup.checkpoints[index]``, unless ``path`` is a Hugging Face model directory
    (or a PEFT adapter directory) whose tokenizer is ``base_model``'s: the same vocabulary, special
    tokens and chat template, so that the pool's rows and the rollouts are the same tokens there."""
    from transformers import AutoTokenizer

    from drift_assets.core.training.adapters import is_adapter

    entry = f"warmup.checkpoints[{index}] ({path})"
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{entry}: not found or not a directory")
    config = "adapter_config.json" if is_adapter(directory) else "config.json"
    if not (directory / config).is_file():
        raise FileNotFoundError(f"{entry}: has no config.json; it must be a Hugging Face model directory (or a LoRA adapter)")
    if not any(directory.glob("*.safetensors")) and not any(directory.glob("*.bin")):
        raise FileNotFoundError(f"{entry}: has no weights (*.safetensors or *.bin)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # transformers' errors for a missing tokenizer vary by model type
        raise ValueError(
            f"{entry}: its tokenizer does not load ({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
            "save model.path's "
            "tokenizer beside the checkpoint (tokenizer.save_pretrained)"
        ) from None
    base = AutoTokenizer.from_pretrained(str(base_model))
    differences = [
        what
        for what, mine, theirs in (
            ("vocabulary", tokenizer.get_vocab(), base.get_vocab()),
            ("special tokens", tokenizer.special_tokens_map, base.special_tokens_map),
            ("chat template", tokenizer.chat_template, base.chat_template),
        )
        if mine != theirs
    ]
    if differences:
        raise ValueError(
            f"{entry}: its tokenizer is not model.path's ({base_model}): its {' and '.join(differences)} differ; "
            "the pool is scored along one model's tokens, so list checkpoints of a fine-tune of model.path"
        )


def warm_up(
    model,
    tokenizer,
    messages_json: Sequence[str],
    options: SftOptions,
    steps: Sequence[int],
    save: Callable[[int], None],
    log: Callable[[str], None],
    save_optimizer: Callable[[int, AdamMoments], None] | None = None,
) -> tuple[dict[int, float], SftRun]:
    """Fine-tune ``model`` up to the last of ``steps``, calling ``save(step)`` at each; returns the
    loss at each and the whole run's losses. ``save_optimizer(step, moments)`` also gets AdamW's
    moments there (LESS preconditions with them), with the mean learning rate of the steps since
    the previous checkpoint (LESS weighs its checkpoints by it)."""
    wanted = set(steps)
    losses: dict[int, float] = {}
    rates: list[float] = []

    def after_step(step: int, loss: float, state: SftStep) -> None:
        rates.append(state.learning_rate)
        if step in wanted:
            save(step)
            losses[step] = loss
            if save_optimizer is not None:
                save_optimizer(step, AdamMoments(step, float(np.mean(rates)), state.adam_moments()))
            rates.clear()

    run = fine_tune(model, tokenizer, messages_json, options, log=log, after_step=after_step)
    log("warm-up checkpoints saved: " + ", ".join(f"step {step} (loss {loss:.4f})" for step, loss in sorted(losses.items())))
    return losses, run


def warmup_run_directory(directory: Path, base_fingerprint: str, lora: bool) -> Path:
    """Where a warm-up run of the base model ``base_fingerprint`` saves its checkpoints: another base
    model or another kind of run (LoRA or every weight) never overwrites them."""
    return directory / (f"{base_fingerprint}-lora" if lora else base_fingerprint)


def warm_up_into(
    run_directory: Path,
    model,
    tokenizer,
    messages_json: Sequence[str],
    options: SftOptions,
    steps: Sequence[int],
    log: Callable[[str], None],
    lora: LoraOptions | None = None,
    save_optimizer_state: bool = False,
) -> tuple[dict[int, float], SftRun]:
    """:func:`warm_up` of every weight, or of a fresh LoRA adapter (``lora``), once up to the last of
    ``steps``, saving the model (or the adapter) and the tokenizer at each step in
    ``run_directory/<checkpoint_key(step)>``, with AdamW's moments where ``save_optimizer_state``."""
    if lora:
        model = add_adapter(model, lora, options.seed)
    trains = f"LoRA adapters (rank {lora.rank})" if lora else "every weight"
    log(
        f"warm-up: {max(steps)} steps on {len(messages_json)} examples, training {trains}; "
        f"checkpoints at {list(steps)} in {run_directory}"
    )

    def save(step: int) -> None:
        path = run_directory / checkpoint_key(step)
        # An earlier run's optimizer state must not pass for this run's (save_optimizer writes it anew).
        (path / OPTIMIZER_STATE_FILE).unlink(missing_ok=True)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    def save_optimizer(step: int, moments: AdamMoments) -> None:
        moments.save(run_directory / checkpoint_key(step))

    # A constant learning rate: the first n steps of a longer run are the run of n steps.
    run_options = replace(options, steps=max(steps))
    return warm_up(
        model, tokenizer, messages_json, run_options, steps, save, log, save_optimizer if save_optimizer_state else None
    )


def warmup_checkpoints_frame(
    keys: Sequence[str],
    paths: Sequence[str],
    adapters: Sequence[bool],
    fingerprints: Sequence[str],
    base_fingerprint: str,
    steps: Sequence[int] | None = None,
    losses: Sequence[float] | None = None,
    optimizer_state: Sequence[bool] | None = None,
) -> pl.DataFrame:
    """The ``warmup_checkpoints`` table: each checkpoint's key, step, directory, whether it is a LoRA
    adapter, its model's fingerprint, the base model's and the loss there (no step or loss where the
    checkpoints are given, not trained), and where given whether AdamW's moments are saved beside it."""
    columns = {
        "checkpoint": list(keys),
        "step": pl.Series(steps if steps is not None else [None] * len(keys), dtype=pl.Int64),
        "path": list(paths),
        "adapter": list(adapters),
        "model_fingerprint": list(fingerprints),
        "base_model_fingerprint": [base_fingerprint] * len(keys),
        "loss": pl.Series(losses if losses is not None else [None] * len(keys), dtype=pl.Float64),
    }
    if optimizer_state is not None:
        columns["optimizer_state"] = list(optimizer_state)
    return pl.DataFrame(columns)


Batches = Callable[[], Iterator[tuple[list[str], np.ndarray]]]


@dataclass
class CheckpointGradients:
    """What one checkpoint contributes to scoring.

    ``batches`` streams the pool's projected gradients as (example_ids, (n, k) matrix) and can be
    iterated again (scoring reads them twice: the Hessian, then the scores), so that memory holds
    one batch, not the pool. ``training_fingerprints`` are the {(model, projection)} of those rows.
    """

    checkpoint: str
    batches: Batches
    validation_gradients: pl.DataFrame  # rollout_id, query_id, target, grad, fingerprints
    grades: pl.DataFrame  # rollout_id, query_id, correct, reward
    training_fingerprints: set[tuple[str, str]]

    @classmethod
    def in_memory(
        cls,
        checkpoint: str,
        example_ids: list[str],
        training: np.ndarray,
        validation_gradients: pl.DataFrame,
        grades: pl.DataFrame,
        training_fingerprints: set[tuple[str, str]],
    ) -> CheckpointGradients:
        loaded = cls(checkpoint, lambda: iter([(example_ids, training)]), validation_gradients, grades, training_fingerprints)
        loaded.__dict__["_loaded"] = (list(example_ids), training)
        return loaded

    @cached_property
    def _loaded(self) -> tuple[list[str], np.ndarray]:
        ids, matrices = [], []
        for batch_ids, matrix in self.batches():
            ids += batch_ids
            matrices.append(matrix)
        if not matrices:
            raise ValueError(f"checkpoint {self.checkpoint} has no training gradients")
        return ids, np.concatenate(matrices)

    def loaded(self) -> CheckpointGradients:
        """The same checkpoint with every batch in memory (the benchmark scores it many ways)."""
        return CheckpointGradients.in_memory(
            self.checkpoint, *self._loaded, self.validation_gradients, self.grades, self.training_fingerprints
        )

    @property
    def example_ids(self) -> list[str]:
        return self._loaded[0]

    @property
    def training(self) -> np.ndarray:
        """Every training gradient, (n, k), in :attr:`example_ids` order (loads the stream once)."""
        return self._loaded[1]

    @property
    def pass_at_1(self) -> float:
        return float(self.grades["correct"].mean())


@dataclass
class CheckpointScores:
    checkpoint: str
    target: TargetGradient
    curvature: Curvature
    scores: PoolScores
    pass_at_1: float


@dataclass
class ScoredAlong:
    """The pool scored along the checkpoints: the combination, and what each checkpoint gave."""

    scores: PoolScores
    checkpoints: list[CheckpointScores]
    queries: QueryScores | None = None  # with influence.ranking round_robin

    @property
    def reference_share(self) -> float:
        """The reference answers' share of ‖g‖², averaged over the checkpoints."""
        return float(np.mean([c.target.reference_share for c in self.checkpoints]))


def score_along(
    checkpoints: Iterable[CheckpointGradients],
    scoring: ScoringSettings,
    curvature: Callable[[int, CheckpointGradients], Curvature | None] = lambda index, checkpoint: None,
    log: Callable[[str], None] = lambda _: None,
    progress: Callable[[int], None] = lambda _: None,
) -> ScoredAlong:
    """Score the pool at every checkpoint (one in memory at a time) and combine the scores.

    ``curvature(index, checkpoint)`` may give a Hessian already fitted at that checkpoint (the
    benchmark scores many settings); None fits it from the checkpoint's stream. ``progress(n)``
    after the n-th checkpoint.
    """
    along = []
    for index, checkpoint in enumerate(checkpoints):
        target = target_gradient(
            checkpoint.validation_gradients, checkpoint.grades, scoring.targets, scoring.weighting, scoring.unsolved
        )
        check_same_checkpoint(checkpoint.training_fingerprints, target)
        fitted = curvature(index, checkpoint)
        if fitted is None:
            k = target.vector.shape[0]
            if scoring.hessian == "fisher":
                log(
                    f"fitting the fisher Hessian: a {k}×{k} float64 matrix and its Cholesky factor, "
                    f"{2 * k**2 * 8 / 2**30:.2f} GiB, at checkpoint {checkpoint.checkpoint}"
                )
            fitted = fit_curvature(scoring.hessian, (matrix for _, matrix in checkpoint.batches()), k, scoring.damping)
        per_query = query_targets(checkpoint, scoring) if scoring.ranking == "round_robin" else None
        scores = score_pool(checkpoint.batches, target.vector, fitted, scoring.debias, scoring.debias_strength, per_query)
        along.append(CheckpointScores(checkpoint.checkpoint, target, fitted, scores, checkpoint.pass_at_1))
        progress(index + 1)
    if not along:
        raise ValueError("nothing to score: no checkpoint gradients")
    combined = along[0].scores if len(along) == 1 else combine_checkpoints([c.scores for c in along])
    queries = combine_query_scores([c.scores for c in along]) if scoring.ranking == "round_robin" else None
    return ScoredAlong(combined, along, queries)


def standardized(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


def combine_checkpoints(scores: Sequence[PoolScores]) -> PoolScores:
    """The mean of the checkpoints' standardized scores (raw and debiased apart), in the first one's example order.

    grad_norm and self_influence are the first checkpoint's (the base model's): the diagnostics
    compare the score with the gradient norms of the model the pool is selected for.
    """
    if not scores:
        raise ValueError("no checkpoint scores to combine")
    first = scores[0]
    order = {example_id: index for index, example_id in enumerate(first.example_ids)}
    raw, debiased = [], []
    for checkpoint in scores:
        if set(checkpoint.example_ids) != set(order):
            missing = set(order) ^ set(checkpoint.example_ids)
            raise ValueError(f"checkpoints scored different examples ({len(missing)} differ, e.g. {sorted(missing)[:3]})")
        positions = np.array([order[example_id] for example_id in checkpoint.example_ids])
        aligned_raw, aligned = np.empty(len(order)), np.empty(len(order))
        aligned_raw[positions], aligned[positions] = checkpoint.score_raw, checkpoint.score
        raw.append(standardized(aligned_raw))
        debiased.append(standardized(aligned))
    return PoolScores(
        list(first.example_ids), np.mean(raw, axis=0), np.mean(debiased, axis=0), first.grad_norm, first.self_influence
    )


@dataclass
class QueryScores:
    """Every pool example scored against each validation query's own part of the target, combined along the checkpoints."""

    example_ids: list[str]
    query_ids: list[str]
    matrix: np.ndarray  # (examples, queries): the mean of the checkpoints' per-query z-scores


def query_targets(checkpoint: CheckpointGradients, scoring: ScoringSettings) -> tuple[list[str], np.ndarray]:
    """Each query's own part of the target (rows, in query_id order): g_j = Σ_k w_jk ĝ_jk over its
    rollouts with a nonzero weight (on-policy), or its reference answer's gradient (off-policy)."""
    if scoring.targets == "offpolicy":
        rows = checkpoint.validation_gradients.filter(pl.col("target") == "reference").with_columns(weight=pl.lit(1.0))
    else:
        rows, _, _ = weighted_rollouts(checkpoint.validation_gradients, checkpoint.grades, scoring.weighting, scoring.unsolved)
    query_ids = sorted(rows["query_id"].unique().to_list())
    position = {query_id: index for index, query_id in enumerate(query_ids)}
    gradients = vectors(rows).astype(np.float64)
    targets = np.zeros((len(query_ids), gradients.shape[1]))
    np.add.at(targets, [position[q] for q in rows["query_id"]], rows["weight"].to_numpy()[:, None] * gradients)
    return query_ids, targets


def combine_query_scores(scores: Sequence[PoolScores]) -> QueryScores:
    """Each query's column standardized at every checkpoint, then averaged over the checkpoints
    whose target it is part of (a query all of whose rollouts are right at one checkpoint and mixed
    at another has a column at the second only, under signed weights), in the first one's example order."""
    order = {example_id: index for index, example_id in enumerate(scores[0].example_ids)}
    totals: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for checkpoint in scores:
        positions = np.array([order[example_id] for example_id in checkpoint.example_ids])
        for column, query_id in enumerate(checkpoint.query_ids or []):
            aligned = np.empty(len(order))
            aligned[positions] = standardized(checkpoint.per_query[:, column])
            totals[query_id] = totals.get(query_id, 0.0) + aligned
            counts[query_id] = counts.get(query_id, 0) + 1
    query_ids = sorted(totals)
    matrix = np.column_stack([totals[q] / counts[q] for q in query_ids]) if query_ids else np.zeros((len(order), 0))
    return QueryScores(list(order), query_ids, matrix)


def ranked_scores(
    along: ScoredAlong, training_pool: pl.DataFrame, loss_per_token: pl.DataFrame | None = None, likelihood_blend: float = 0.0
) -> pl.DataFrame:
    """The pool's scores table (:func:`~drift_assets.core.attribution.scores.scores_frame`) sorted by ``rank``,
    the order the selection takes: with per-query scores, the validation queries taking turns
    (:func:`~drift_assets.core.attribution.selection.round_robin_ranks`), else the score.
    ``likelihood_blend`` w > 0 orders the pool by (1 − w)·that order's rank + w·the rank by
    ``loss_per_token`` (example_id, loss_per_token under the base model:
    :func:`~drift_assets.core.attribution.selection.blended_ranks`)."""
    frame = scores_frame(along.scores, training_pool)
    if along.queries is None:
        ranks = frame["rank"].to_numpy()
    else:
        row = {example_id: index for index, example_id in enumerate(along.queries.example_ids)}
        matrix = along.queries.matrix[[row[example_id] for example_id in frame["example_id"]]]
        if matrix.shape[1] == 0:
            raise ValueError("influence.ranking round_robin: no validation query has a nonzero weight at any checkpoint")
        ranks = round_robin_ranks(matrix)
    if likelihood_blend > 0.0:
        if loss_per_token is None:
            raise ValueError("influence.likelihood_blend above 0 needs the base model's loss per token of every pool example")
        losses = base_losses_of(loss_per_token, frame["example_id"].to_list(), "influence.likelihood_blend")
        ranks = blended_ranks(ranks, losses, likelihood_blend)
    return frame.with_columns(rank=pl.Series(ranks)).sort("rank")
