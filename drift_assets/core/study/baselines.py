"""Baselines that need no gradients: RDS+, BM25, DSIR, a GRAPE-style likelihood selector, and a
training-dynamics noise detector.

Three score a pool example by its similarity to the validation queries:

- **RDS+** (Ivison et al. 2025, "Large-Scale Data Selection for Instruction Tuning"): the cosine
  between position-weighted means of the base model's last hidden states (token t of L weighs
  (t+1)/Σ(s+1), SGPT's weighting: ``--pooling weighted_mean`` in their
  ``minimal_multitask/compute_influence_cosinesim.py``), of the pool example (prompt and
  response) and of each validation query (prompt and reference response). Their selection
  (``get_top_influences.py --selection_method max``) lets the queries take turns, each taking its
  most similar example; an example's score is its best match.
- **BM25**: Okapi BM25 of each validation prompt, as a query, against the pool examples' words as
  documents (rank_bm25's ``BM25Okapi``: k1 = 1.5, b = 0.75, and a negative idf replaced by 0.25 times
  the mean idf); an example scores its best match.
- **DSIR** (Xie et al. 2023, "Data Selection for Language Models via Importance Resampling"), by
  its authors' package ``data-selection``: hashed unigram and bigram counts (10,000 buckets), the
  log importance weight Σ_b count_b(x)·(log p_target(b) − log p_raw(b)) of the target (the
  validation queries' text) against the raw data (the pool), and importance *resampling*: the
  Gumbel top-k of the log weights, a sample without replacement in proportion to the weights.

Two read the losses the pipeline stores:

- **GRAPE-style** (Zhang et al. 2025, "The Best Instruction-Tuning Data are Those That Fit"): of
  the pool's responses to one prompt, the one the base model finds likeliest per response token;
  those are ranked by that likelihood, the other responses after them.
- **Training dynamics** (Swayamdipta et al. 2020, "Dataset Cartography"): each row's confidence,
  the mean over the base model and the warm-up checkpoints of its probability per response token
  (exp of minus the loss per token); low confidence marks the hard-to-learn rows where Data Maps
  finds mislabelled ones.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from drift_assets.core.attribution.selection import ranks_by
from drift_assets.core.data.sequences import collate_pairs

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case runs of letters and digits."""
    return _WORD.findall(text.lower())


def bm25_scores(
    documents: Sequence[list[str]], queries: Sequence[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25
) -> np.ndarray:
    """(queries, documents) Okapi BM25 scores of tokenized ``queries`` against tokenized ``documents``."""
    n = len(documents)
    if n == 0:
        return np.zeros((len(queries), 0))
    lengths = np.array([len(document) for document in documents], dtype=np.float64)
    average_length = lengths.mean() if lengths.mean() > 0 else 1.0
    frequencies = [Counter(document) for document in documents]
    document_frequency = Counter(word for counts in frequencies for word in counts)
    idf = {word: math.log(n - df + 0.5) - math.log(df + 0.5) for word, df in document_frequency.items()}
    floor = epsilon * (sum(idf.values()) / len(idf)) if idf else 0.0
    idf = {word: value if value >= 0 else floor for word, value in idf.items()}
    normalizer = k1 * (1 - b + b * lengths / average_length)
    scores = np.zeros((len(queries), n))
    for row, query in enumerate(queries):
        for word in query:
            if word not in idf:
                continue
            counts = np.array([counts.get(word, 0) for counts in frequencies], dtype=np.float64)
            scores[row] += idf[word] * counts * (k1 + 1) / (counts + normalizer)
    return scores


def best_match(similarity: np.ndarray) -> np.ndarray:
    """Each pool example's score: its best similarity over the validation queries (rows)."""
    return similarity.max(axis=0) if similarity.size else np.zeros(similarity.shape[1])


@torch.no_grad()
def position_weighted_hidden_states(
    model, tokenizer, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], batch_size: int = 32
) -> np.ndarray:
    """(n, hidden) float64: each sequence's last hidden states (prompt and response) averaged with
    weights growing with the position, (t+1)/Σ_s(s+1) over its own L tokens (RDS+'s pooling)."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = collate_pairs(tokenizer, prompt_ids[start : start + batch_size], response_ids[start : start + batch_size]).to(
            device
        )
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states[
            -1
        ]
        # Right-padded: position t of every row is its (t+1)-th token, and padding weighs 0.
        positions = torch.arange(1, hidden.shape[1] + 1, device=device, dtype=hidden.dtype)
        weights = (batch.attention_mask.to(hidden.dtype) * positions).unsqueeze(-1)
        rows.append(((hidden * weights).sum(dim=1) / weights.sum(dim=1)).double().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, model.config.hidden_size))


def cosine_similarity(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """(queries, documents) cosines."""

    def unit(matrix: np.ndarray) -> np.ndarray:
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    return unit(queries) @ unit(documents).T


def dsir_log_weights(raw_texts: Sequence[str], target_texts: Sequence[str], ngrams: int = 2, buckets: int = 10_000) -> np.ndarray:
    """DSIR's log importance weight of each raw text, computed by the ``data-selection`` package
    (its ``HashedNgramDSIR``: word-punct tokens, lower-cased, hashed n-gram counts)."""
    import json
    import tempfile
    from pathlib import Path

    from data_selection import HashedNgramDSIR

    if not raw_texts or not target_texts:
        raise ValueError("DSIR needs raw texts (the pool) and target texts (the validation queries)")
    with tempfile.TemporaryDirectory(prefix="dsir-") as directory:
        paths = {}
        for name, texts in (("raw", raw_texts), ("target", target_texts)):
            paths[name] = Path(directory) / f"{name}.jsonl"
            paths[name].write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        dsir = HashedNgramDSIR(
            [str(paths["raw"])],
            [str(paths["target"])],
            cache_dir=str(Path(directory) / "cache"),
            num_proc=1,  # one virtual shard, in this process: its weights land in 0.npy in the pool's order
            ngrams=ngrams,
            num_buckets=buckets,
            min_example_length=0,  # its length filter (100 words) applies to resampling web text, not here
        )
        dsir.fit_importance_estimator(num_tokens_to_fit="all")
        dsir.compute_importance_weights()
        weights = np.load(Path(dsir.log_importance_weights_dir) / "0.npy")
    if weights.shape != (len(raw_texts),):
        raise RuntimeError(f"data-selection returned {weights.shape[0]} weights for {len(raw_texts)} texts")
    return weights.astype(np.float64)


def gumbel_order(log_weights: np.ndarray, seed: int) -> np.ndarray:
    """Ranks (1 = first) of the Gumbel top-k of ``log_weights``: the first k of this order are a sample
    of k without replacement, each draw in proportion to the weights (DSIR's resampling)."""
    noise = np.random.default_rng(seed).gumbel(size=len(log_weights))
    return ranks_by(-(log_weights + noise), np.arange(len(log_weights)))


def likeliest_per_prompt(prompts: Sequence[str], likelihood: np.ndarray) -> np.ndarray:
    """Ranks (1 = first): each prompt's likeliest response first, those ordered by ``likelihood``
    (higher first), then each prompt's second likeliest, and so on (ties by position)."""
    likelihood = np.asarray(likelihood, dtype=np.float64)
    by_prompt: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_prompt.setdefault(prompt, []).append(index)
    place = np.zeros(len(prompts), dtype=np.int64)  # 0 = the prompt's likeliest response
    for members in by_prompt.values():
        for position, index in enumerate(sorted(members, key=lambda at: (-likelihood[at], at))):
            place[index] = position
    return ranks_by(place, -likelihood)


def mean_confidence(loss_per_token: np.ndarray) -> np.ndarray:
    """Data Maps' confidence of each row (rows × checkpoints of loss per token): the mean over the
    checkpoints of exp(−loss per token), the model's probability per response token."""
    return np.exp(-np.asarray(loss_per_token, dtype=np.float64)).mean(axis=1)
