"""The two cheapest baselines of the DRIFT paper's comparison: RDS+ and BM25.

Both score a pool example by its similarity to the validation queries, with no gradients:

- **RDS+** (representation-based data selection): the cosine between mean-pooled last hidden
  states of the base model, of the pool example (prompt and response) and of each validation query
  (prompt and reference response); an example scores its best match.
- **BM25**: Okapi BM25 of each validation prompt, as a query, against the pool examples' words as
  documents (rank_bm25's ``BM25Okapi``: k1 = 1.5, b = 0.75, and a negative idf replaced by 0.25 times
  the mean idf); an example scores its best match.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from drift_assets.core.sequences import collate_pairs

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
def mean_pooled_hidden_states(
    model, tokenizer, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], batch_size: int = 32
) -> np.ndarray:
    """(n, hidden) float64: each sequence's last hidden states averaged over its tokens (prompt and response)."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(prompt_ids), batch_size):
        batch = collate_pairs(tokenizer, prompt_ids[start : start + batch_size], response_ids[start : start + batch_size]).to(
            device
        )
        hidden = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states[
            -1
        ]
        mask = batch.attention_mask.unsqueeze(-1).to(hidden.dtype)
        rows.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1)).double().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, model.config.hidden_size))


def cosine_similarity(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """(queries, documents) cosines."""

    def unit(matrix: np.ndarray) -> np.ndarray:
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    return unit(queries) @ unit(documents).T
