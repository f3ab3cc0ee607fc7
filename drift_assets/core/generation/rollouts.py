"""Turning engine completions into rollout rows (the ``rollouts`` table)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import polars as pl

from drift_assets.core.data.sequences import encode_prompt, render_prompt
from drift_assets.core.generation.engines import GenerationProgress, GenerationReport, SamplingSettings, check_prompt_lengths
from drift_assets.core.runtime.progress import Progress

ROLLOUT_SCHEMA = {
    "rollout_id": pl.String,
    "query_id": pl.String,
    "sample_idx": pl.Int64,
    "prompt": pl.String,
    "completion": pl.String,
    "token_ids": pl.List(pl.Int64),
    "n_tokens": pl.Int64,
    "logprob_sum": pl.Float64,
    "finish_reason": pl.String,
    "ended_with_eos": pl.Boolean,
    "engine": pl.String,
    "model_fingerprint": pl.String,
}


def rollout_id_for(query_id: str, sample_idx: int, model_fingerprint: str, seed: int) -> str:
    return hashlib.sha256(f"{query_id}|{sample_idx}|{model_fingerprint}|{seed}".encode()).hexdigest()[:20]


def rollout_rows(queries: pl.DataFrame, report: GenerationReport, model_fingerprint: str, seed: int) -> pl.DataFrame:
    """One row per (query, sample), in query order; ``queries`` has query_id and prompt."""
    if len(report.completions) != queries.height:
        raise ValueError(f"the engine returned {len(report.completions)} groups for {queries.height} queries")
    rows = []
    for query, group in zip(queries.iter_rows(named=True), report.completions):
        for sample_idx, completion in enumerate(group):
            rows.append(
                {
                    "rollout_id": rollout_id_for(query["query_id"], sample_idx, model_fingerprint, seed),
                    "query_id": query["query_id"],
                    "sample_idx": sample_idx,
                    "prompt": query["prompt"],
                    "completion": completion.text,
                    # What the engine sampled (EOS and any stop-string tokens included): the tokens that
                    # logprob_sum sums over and that the validation gradients differentiate.
                    "token_ids": list(completion.token_ids),
                    "n_tokens": len(completion.token_ids),
                    "logprob_sum": completion.logprob_sum,
                    "finish_reason": completion.finish_reason,
                    "ended_with_eos": completion.ended_with_eos,
                    "engine": report.engine,
                    "model_fingerprint": model_fingerprint,
                }
            )
    return pl.DataFrame(rows, schema=ROLLOUT_SCHEMA)


def query_progress(what: str, n_queries: int, log: Callable[[str], None]) -> GenerationProgress:
    """An engine's progress callback: the queries done, logged at most every 10 seconds with the
    tokens generated per second (the clock starts now)."""
    progress = Progress(what, n_queries, log, "queries", every_s=10)
    return lambda done, total, tokens: progress.update(done, total, f"{progress.rate(tokens):.0f} tokens/s")


def sample_rollouts(
    engine,
    tokenizer,
    validation_queries: pl.DataFrame,
    sampling: SamplingSettings,
    model_fingerprint: str,
    progress: GenerationProgress | None = None,
) -> tuple[pl.DataFrame, GenerationReport]:
    """The ``rollouts`` table (and the engine's report): ``sampling.n`` completions of every query from a rollout engine."""
    prompt_ids = [encode_prompt(tokenizer, render_prompt(tokenizer, prompt)) for prompt in validation_queries["prompt"]]
    check_prompt_lengths(engine, prompt_ids, validation_queries["query_id"], "validation queries")
    report = engine.generate(prompt_ids, sampling, progress=progress)
    return rollout_rows(validation_queries, report, model_fingerprint, sampling.seed), report
