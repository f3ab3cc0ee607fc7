"""Gradient tables: token pairs for pool examples, rollouts and references; shard assignment; reuse.

Rows of ``training_gradient_projections`` are keyed by (example_id, model_fingerprint,
projection_fingerprint): the example_id is a content hash, so an unchanged example under an
unchanged model and projection keeps its row, and appending 1% new data computes 1% new gradients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from drift_assets.core.attribution.influence import row_norms
from drift_assets.core.data.sequences import encode_prompt, encode_response, render_messages_prompt, render_prompt
from drift_assets.core.gradients.projection import (
    LinearGradientProjector,
    ProjectionBasis,
    ProjectionOptions,
    fit_basis,
    project_in_batches,
)


def shard_keys(n_shards: int) -> list[str]:
    """String partition keys "000", "001", … (Delta partition values must be strings here)."""
    if not 1 <= n_shards < 100:
        raise ValueError(f"projection.shards must be between 1 and 99 (got {n_shards}); Dagster skips staleness checks at 100+")
    return [f"{index:03d}" for index in range(n_shards)]


def shard_of(example_id: str, n_shards: int) -> str:
    digest = hashlib.sha256(example_id.encode()).digest()
    return f"{int.from_bytes(digest[:4], 'little') % n_shards:03d}"


def pool_token_pairs(tokenizer, messages_json: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    prompts, responses = [], []
    for text in messages_json:
        messages = json.loads(text)
        prompts.append(encode_prompt(tokenizer, render_messages_prompt(tokenizer, messages[:-1])))
        responses.append(encode_response(tokenizer, messages[-1]["content"]))
    return prompts, responses


def query_token_pairs(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], answer_marker: str | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt and response ids of text (references, edited completions), each response closed by
    EOS. Each response is encoded whole and then split (:func:`response_token_pairs`), so its
    tokens are the ones the tokenizer gives the whole text. Rollouts keep the ids they were
    sampled as instead."""
    encoded = [encode_response(tokenizer, response) for response in responses]
    return response_token_pairs(tokenizer, prompts, responses, encoded, answer_marker)


def answer_split(tokenizer, token_ids: Sequence[int], cut: int) -> int:
    """How many of ``token_ids`` come before character ``cut`` of their decoded text: the largest i
    whose first i tokens decode to at most ``cut`` characters, so token i holds that character."""
    low, high = 0, len(token_ids)
    while low < high:  # decoded length grows with the prefix: a binary search, not a decode per token
        middle = (low + high + 1) // 2
        if len(tokenizer.decode(token_ids[:middle], skip_special_tokens=True)) <= cut:
            low = middle
        else:
            high = middle - 1
    return low


def response_token_pairs(
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    response_ids: Sequence[Sequence[int]],
    answer_marker: str | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Rendered prompt ids, and each response's ids as given: for a rollout, the ids the engine
    sampled, so that its gradient is of log π of exactly what the model wrote.

    Re-encoding a rollout's text does not give its tokens back under a merging tokenizer (BPE
    merges what the model sampled apart, drops special tokens), and the gradient would then be of a
    sequence the model did not sample. With ``answer_marker`` the response is only the answer span:
    from the token that holds the response's last marker on (the whole response where it has none);
    the tokens before it join the context. The same tokens in the same order: only the split
    between context (masked) and response moves.
    """
    prompt_ids, split_response_ids = [], []
    for prompt, response, ids in zip(prompts, responses, response_ids, strict=True):
        ids = list(ids)
        cut = response.rfind(answer_marker) if answer_marker else -1
        split = answer_split(tokenizer, ids, cut) if cut > 0 else 0
        prompt_ids.append(encode_prompt(tokenizer, render_prompt(tokenizer, prompt)) + ids[:split])
        split_response_ids.append(ids[split:])
    return prompt_ids, split_response_ids


def reference_basis(
    model,
    options: ProjectionOptions,
    tokenizer,
    validation_queries: pl.DataFrame,
    batch_size: int,
    log: Callable[[str], None] | None = None,
) -> ProjectionBasis:
    """The projection basis of a model, fitted (``pca``) on the validation queries' whole reference responses.

    The references, not the rollouts: the basis then survives a change of rollout settings, and a
    change of the pool, so training-gradient rows stay reusable. Whole responses, whatever span the
    validation gradients cover: the training gradients are projected with the same basis.
    """
    prompt_ids, response_ids = query_token_pairs(
        tokenizer, validation_queries["prompt"], validation_queries["reference_response"]
    )
    check_within_context(model, prompt_ids, response_ids, validation_queries["query_id"])
    return fit_basis(model, options, tokenizer, prompt_ids, response_ids, batch_size, log=log)


def check_within_context(
    model, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], query_ids: Sequence[str]
) -> None:
    """Refuse reference answers longer, with their prompts, than the model's positions
    (``validation_queries`` quarantines them; a table written before it did may still hold them)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int):
        return
    too_long = [
        (query_id, len(prompt) + len(response))
        for query_id, prompt, response in zip(query_ids, prompt_ids, response_ids, strict=True)
        if len(prompt) + len(response) > context
    ]
    if too_long:
        (query_id, n_tokens), others = too_long[0], [repr(query_id) for query_id, _ in too_long[1:]]
        raise ValueError(
            f"validation query {query_id!r}: its reference_response is {n_tokens} tokens with its prompt, beyond the "
            f"model's context of {context} tokens{f' (so are {len(others)} more: ' + ', '.join(others[:5]) + ')' if others else ''}; "
            "re-materialize validation_queries, which quarantines them"
        )


def gradient_frame(
    ids: dict[str, Sequence],
    projector: LinearGradientProjector,
    tokenizer,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    batch_size: int,
    model_fingerprint: str,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """Identifier columns ``ids`` plus grad (list<float32>[k]), grad_norm, loss (−log π), n_tokens
    (``log``: the pass's memory plan)."""
    projected = project_in_batches(projector, tokenizer, prompt_ids, response_ids, batch_size, progress, log)
    # No full copies beside the table's own: a shard's n × k float32 is gigabytes for an LLM, and
    # a float64 copy for the norms alone would be twice that.
    gradients = projected.gradients.numpy().astype(np.float32, copy=False)
    return pl.DataFrame(
        {
            **{name: list(values) for name, values in ids.items()},
            "grad": pl.Series("grad", gradients, dtype=pl.Array(pl.Float32, gradients.shape[1])).cast(pl.List(pl.Float32)),
            "grad_norm": row_norms(gradients),
            "loss": (-projected.logprobs.numpy()).astype(np.float64),
            "n_tokens": projected.n_tokens.numpy().astype(np.int64),
            "model_fingerprint": [model_fingerprint] * len(prompt_ids),
            "projection_fingerprint": [projector.fingerprint] * len(prompt_ids),
        }
    )


# The columns every gradient table has besides its ids.
GRADIENT_SCHEMA = {
    "grad": pl.List(pl.Float32),
    "grad_norm": pl.Float64,
    "loss": pl.Float64,
    "n_tokens": pl.Int64,
    "model_fingerprint": pl.String,
    "projection_fingerprint": pl.String,
}


# A gradient table row's loss per response token (its summed −log π over n_tokens; an empty response counts one).
LOSS_PER_TOKEN = (pl.col("loss") / pl.col("n_tokens").clip(lower_bound=1)).alias("loss_per_token")


def empty_gradient_frame(id_columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """:func:`gradient_frame`'s table with no rows (a shard that no example hashes to)."""
    return pl.DataFrame(schema={**id_columns, **GRADIENT_SCHEMA})


def shard_gradients(
    checkpoint: str,
    shard: str,
    examples: pl.DataFrame,
    reused: pl.DataFrame,
    compute: Callable[[pl.DataFrame], pl.DataFrame],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the shard's gradient table at ``checkpoint``, sorted by example_id; the examples computed):
    the ``reused`` rows of ``examples`` as they are, the others' gradients by ``compute(todo)``
    (:func:`gradient_frame` with an example_id column), each row labelled with checkpoint and shard."""
    todo = examples.filter(~pl.col("example_id").is_in(reused["example_id"].implode())) if reused.height else examples
    frames = [reused] if reused.height else []
    if todo.height or not frames:  # a small pool can leave a shard without examples: an empty table
        computed = compute(todo) if todo.height else empty_gradient_frame({"example_id": pl.String})
        frames.append(computed.select(pl.lit(checkpoint).alias("checkpoint"), pl.lit(shard).alias("shard"), pl.all()))
    return pl.concat(frames, how="vertical_relaxed").sort("example_id"), todo


def validation_token_pairs(
    tokenizer, rollouts: pl.DataFrame, validation_queries: pl.DataFrame, answer_marker: str | None = None
) -> tuple[dict[str, list[str]], list[list[int]], list[list[int]]]:
    """The ids columns and the (prompt, response) token pairs of every rollout, then every reference
    answer, that :func:`validation_gradient_frame` differentiates."""
    if "token_ids" not in rollouts.columns:
        raise ValueError("rollouts has no token_ids column (written by an earlier drift_assets): re-materialize rollouts")
    rollout_pairs = response_token_pairs(
        tokenizer, rollouts["prompt"], rollouts["completion"], rollouts["token_ids"], answer_marker
    )
    reference_pairs = query_token_pairs(
        tokenizer, validation_queries["prompt"], validation_queries["reference_response"], answer_marker=answer_marker
    )
    ids = {
        "rollout_id": rollouts["rollout_id"].to_list() + [f"reference-{q}" for q in validation_queries["query_id"]],
        "query_id": rollouts["query_id"].to_list() + validation_queries["query_id"].to_list(),
        "target": ["rollout"] * rollouts.height + ["reference"] * validation_queries.height,
    }
    return ids, rollout_pairs[0] + reference_pairs[0], rollout_pairs[1] + reference_pairs[1]


def validation_gradient_frame(
    projector: LinearGradientProjector,
    tokenizer,
    rollouts: pl.DataFrame,
    validation_queries: pl.DataFrame,
    batch_size: int,
    model_fingerprint: str,
    progress: Callable[[int, int], None] | None = None,
    answer_marker: str | None = None,
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """The ``validation_gradients`` table: every rollout (target=rollout) and reference answer (target=reference).

    A rollout's gradient is of the tokens the engine sampled (:func:`response_token_pairs`), a
    reference's of its encoded text. With ``answer_marker`` each gradient is ∇ log π(answer span |
    query, text before it). Without it, ∇ log π(whole completion | query).
    """
    ids, prompt_ids, response_ids = validation_token_pairs(tokenizer, rollouts, validation_queries, answer_marker)
    return gradient_frame(ids, projector, tokenizer, prompt_ids, response_ids, batch_size, model_fingerprint, progress, log)


def sequence_tokens(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]) -> int:
    """The tokens a pass over these (prompt, response) pairs processes (padding left out)."""
    return sum(len(prompt) + len(response) for prompt, response in zip(prompt_ids, response_ids, strict=True))


def vectors(frame: pl.DataFrame, column: str = "grad") -> np.ndarray:
    """(n, k) float32 matrix from a list<float32> column, without a Python loop."""
    if frame.is_empty():
        return np.zeros((0, 0), dtype=np.float32)
    dimension = frame[column].list.len()[0]
    return frame[column].list.to_array(dimension).to_numpy()
