"""The linear datamodeling score (LDS; Park et al. 2023, TRAK): do attribution scores predict retraining?

Draw M random subsets S_1..S_M of the pool (half of it each), fine-tune the base model on each and
measure, for every validation query j, a quantity f_j of the fine-tuned model. An attribution
method gives per-query scores τ_ij (pool example i, query j; positive: training on i raises f_j);
it predicts the effect of a subset as the sum Σ_{i∈S} τ_ij. LDS_j is the Spearman correlation over
the M subsets of predicted and measured f_j; the score of a method is the mean of LDS_j over the
queries, with its standard error. Queries whose measurement is the same after every fine-tune
carry no ranking and are left out (and counted).

Two measurements of query j (:func:`query_objectives`):

- on-policy: J_j = Σ_k w_jk log π(y_jk | q_j) over the base model's stored rollouts with DRIFT's
  weighting, the quantity whose gradient DRIFT's per-query target g_j is;
- off-policy: log π(reference_j | q_j), what LESS and classic influence functions target.

Each is over the same tokens as the stored validation gradients (the answer span with
``projection.validation_span: answer``). Also here: the fine-tune that measures them
(:func:`fine_tune_and_measure`, run in worker processes) and the key its result is cached under.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from drift_assets.core.attribution.scores import weighted_rollouts
from drift_assets.core.data.sequences import teacher_forced_logprobs
from drift_assets.core.gradients.tables import validation_token_pairs
from drift_assets.core.study.stats import mean_and_standard_error, spearman
from drift_assets.core.training.evaluation import load_base_model
from drift_assets.core.training.sft import SftOptions, fine_tune

# A measurement whose spread over the fine-tunes is below this (relative to its size) is constant:
# float64 sums of float32 log-probabilities of identical models differ by rounding only.
CONSTANT_TOLERANCE = 1e-9


def half_pools(example_ids: Sequence[str], m: int, seed: int = 0, fraction: float = 0.5) -> list[list[str]]:
    """``m`` random subsets of ``fraction`` of the pool (rounded), each sorted; reproducible from
    ``seed`` whatever order ``example_ids`` come in, and subset i the same whatever ``m``."""
    if m < 2:
        raise ValueError(f"the LDS needs at least 2 subsets (got {m})")
    if not 0 < fraction < 1:
        raise ValueError(f"the subset fraction must be between 0 and 1 (got {fraction})")
    ids = sorted(set(example_ids))
    if len(ids) != len(example_ids):
        raise ValueError(f"the pool has {len(example_ids) - len(ids)} duplicate example ids")
    size = max(1, round(fraction * len(ids)))
    return [sorted(random.Random(f"lds-subset-{seed}-{index}").sample(ids, size)) for index in range(m)]


def predicted_effects(scores: np.ndarray, example_ids: Sequence[str], subsets: Sequence[Sequence[str]]) -> np.ndarray:
    """(subsets, queries): Σ_{i∈S} τ_ij for ``scores`` τ (examples, queries) in ``example_ids`` order."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(example_ids):
        raise ValueError(f"scores must be (examples, queries) with {len(example_ids)} rows (got {scores.shape})")
    column = {example_id: index for index, example_id in enumerate(example_ids)}
    membership = np.zeros((len(subsets), len(example_ids)))  # row s marks the examples of subset s
    for row, subset in enumerate(subsets):
        missing = [example_id for example_id in subset if example_id not in column]
        if missing:
            raise ValueError(f"subset {row} has {len(missing)} examples without a score (e.g. {missing[:3]})")
        membership[row, [column[example_id] for example_id in subset]] = 1.0
    return membership @ scores


def is_constant(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.ptp(values) <= CONSTANT_TOLERANCE * max(1.0, float(np.max(np.abs(values)))))


def column_spearman(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``predicted`` with the same column of ``measured``
    (rows: the subsets); NaN where the measurement is constant (or the prediction is)."""
    predicted, measured = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if predicted.shape != measured.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and measured {measured.shape} must both be (subsets, queries)")
    result = np.full(predicted.shape[1], np.nan)
    for j in range(predicted.shape[1]):
        if not (is_constant(measured[:, j]) or is_constant(predicted[:, j])):
            result[j] = spearman(predicted[:, j], measured[:, j])
    return result


@dataclass(frozen=True)
class LdsSummary:
    mean: float  # the mean of LDS_j over the queries with a varying measurement
    se: float  # its standard error (NaN with fewer than 2 queries)
    queries: int  # queries averaged
    constant: int  # queries left out: a measurement (or prediction) the same after every fine-tune


def summarize(per_query: np.ndarray) -> LdsSummary:
    values = np.asarray(per_query, dtype=np.float64)
    kept = values[~np.isnan(values)]
    mean, se = mean_and_standard_error(kept)
    return LdsSummary(mean, float("nan") if se is None else se, int(kept.size), int(values.size - kept.size))


def lds(
    scores: np.ndarray,
    example_ids: Sequence[str],
    score_query_ids: Sequence[str],
    subsets: Sequence[Sequence[str]],
    measured: np.ndarray,
    measured_query_ids: Sequence[str],
) -> tuple[LdsSummary, dict[str, float]]:
    """The LDS of per-query ``scores`` (examples, queries) against ``measured`` (subsets, queries),
    over the queries both have; returns the summary and each query's LDS (NaN: left out).

    Any method's per-query score matrix goes through here: ours, a reference implementation's, or
    one built elsewhere (an Adam-preconditioned LESS score, say) in the same shape.
    """
    shared = [query_id for query_id in score_query_ids if query_id in set(measured_query_ids)]
    if not shared:
        raise ValueError("the scores and the measurements have no validation query in common")
    score_column = {query_id: index for index, query_id in enumerate(score_query_ids)}
    measured_column = {query_id: index for index, query_id in enumerate(measured_query_ids)}
    predicted = predicted_effects(np.asarray(scores)[:, [score_column[q] for q in shared]], example_ids, subsets)
    per_query = column_spearman(predicted, np.asarray(measured)[:, [measured_column[q] for q in shared]])
    return summarize(per_query), dict(zip(shared, per_query.tolist()))


# --- what is measured after each fine-tune -------------------------------------------------------


@dataclass(frozen=True)
class MeasuredSequences:
    """The token sequences whose log-probability is measured: every stored rollout (by rollout_id)
    and every query's reference answer (``reference-<query_id>``), split as the validation gradients are."""

    ids: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]

    def fingerprint(self) -> str:
        text = json.dumps([self.ids, self.prompt_ids, self.response_ids])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def reference_id(query_id: str) -> str:
    """The rollout_id the validation gradients give a query's reference answer."""
    return f"reference-{query_id}"


def measured_sequences(
    tokenizer, rollouts: pl.DataFrame, validation_queries: pl.DataFrame, answer_marker: str | None
) -> MeasuredSequences:
    """The rollouts' sampled token ids and the references' encoded text, split as
    :func:`~drift_assets.core.gradients.tables.validation_gradient_frame` splits them (its own pairs)."""
    ids, prompt_ids, response_ids = validation_token_pairs(tokenizer, rollouts, validation_queries, answer_marker)
    return MeasuredSequences(ids["rollout_id"], prompt_ids, response_ids)


def sequence_logprobs(model, tokenizer, sequences: MeasuredSequences, batch_size: int = 64) -> dict[str, float]:
    """id -> log π(response | prompt) under ``model`` (float64 sums of the response tokens)."""
    values: list[float] = []
    model.eval()
    for start in range(0, len(sequences.ids), batch_size):
        end = start + batch_size
        values += teacher_forced_logprobs(
            model, tokenizer, sequences.prompt_ids[start:end], sequences.response_ids[start:end]
        ).tolist()
    return dict(zip(sequences.ids, values))


@dataclass(frozen=True)
class QueryObjectives:
    """Each validation query's two measurements as functions of the measured log-probabilities."""

    onpolicy_query_ids: list[str]
    onpolicy_weights: pl.DataFrame  # rollout_id, query_id, weight: DRIFT's target rows (nonzero weights)
    offpolicy_query_ids: list[str]

    def onpolicy(self, logprobs: dict[str, float]) -> np.ndarray:
        """J_j = Σ_k w_jk log π(y_jk | q_j), in ``onpolicy_query_ids`` order."""
        totals = dict.fromkeys(self.onpolicy_query_ids, 0.0)
        for rollout_id, query_id, weight in self.onpolicy_weights.select("rollout_id", "query_id", "weight").iter_rows():
            totals[query_id] += weight * logprobs[rollout_id]
        return np.array([totals[q] for q in self.onpolicy_query_ids])

    def offpolicy(self, logprobs: dict[str, float]) -> np.ndarray:
        """log π(reference_j | q_j), in ``offpolicy_query_ids`` order."""
        return np.array([logprobs[reference_id(q)] for q in self.offpolicy_query_ids])


def query_objectives(validation_gradients: pl.DataFrame, grades: pl.DataFrame, weighting: str, unsolved: str) -> QueryObjectives:
    """The weights DRIFT's on-policy target sums the base model's rollouts with (its own
    :func:`~drift_assets.core.attribution.scores.weighted_rollouts`), and the queries with a reference."""
    rows, _, _ = weighted_rollouts(validation_gradients, grades, weighting, unsolved)
    references = validation_gradients.filter(pl.col("target") == "reference")
    return QueryObjectives(
        sorted(rows["query_id"].unique().to_list()),
        rows.select("rollout_id", "query_id", "weight"),
        sorted(references["query_id"].unique().to_list()),
    )


# --- the fine-tunes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureJob:
    """Fine-tune the base model on one subset, then measure the sequences' log-probabilities."""

    key: str
    messages: list[str]
    model_path: str
    dtype: str
    device: str
    options: SftOptions
    sequences: MeasuredSequences


@dataclass(frozen=True)
class Measured:
    logprobs: dict[str, float]
    seconds: float
    final_loss: float


def fine_tune_and_measure(job: MeasureJob) -> Measured:
    """Load the base model, fine-tune it on the job's subset with the task's recipe, measure."""
    started = time.perf_counter()
    model, tokenizer = load_base_model(job.model_path, job.dtype, job.device)
    run = fine_tune(model, tokenizer, job.messages, job.options, log=lambda _: None)
    logprobs = sequence_logprobs(model, tokenizer, job.sequences)
    return Measured(logprobs, time.perf_counter() - started, run.losses[-1])


@functools.cache
def training_code() -> str:
    """A hash of the fine-tuning loop's source (sft.py, sequences.py): a change to how SFT trains
    (its batch order, say) is a change of what a cached fine-tune measured. Read once, so that a
    file edited during a run does not key the run's results as the edited code's."""
    from drift_assets.core.data import sequences
    from drift_assets.core.training import sft

    text = "".join(inspect.getsource(module) for module in (sft, sequences))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fine_tune_key(workspace: str, subset: Sequence[str], options: SftOptions, model_fingerprint: str, measured: str) -> str:
    """What a fine-tune's measurements are cached under: the task's workspace, the subset, the SFT
    recipe (seed included) and loop, the base model's fingerprint and the measured sequences'."""
    text = json.dumps(
        {
            "workspace": workspace,
            "code": training_code(),
            "subset": hashlib.sha256("\n".join(sorted(subset)).encode()).hexdigest(),
            "sft": repr(options),
            "model": model_fingerprint,
            "measured": measured,
        }
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]
