"""What each column of the pipeline's tables holds: the descriptions of the UI's Columns tables.

One name means one thing across the tables (``example_id`` is the same id in every table), so one
description per name. A column the pipeline does not make is one of the input file's own, carried
through (:data:`CARRIED`).
"""

from __future__ import annotations

CARRIED = "a column of the input file, carried through unchanged"

COLUMN_DESCRIPTIONS = {
    # --- ids and where a row comes from
    "example_id": "the pool example's id: a hash of its text (NFC), the same in every table",
    "query_id": "the validation or test query's id (from the file, or its row number)",
    "rollout_id": "the rollout's id: query, checkpoint and sample index",
    "row_number": "where the row is in its input file (a JSONL line from 1, else a row index from 0)",
    "source": "the input file the row was read from",
    "checkpoint": "the model the row was computed with: base (the base model) or a warm-up step",
    "shard": "the shard of the pool the row was computed in (projection.shards)",
    "split": "which part of the task or export the row describes",
    "path": "where the file or directory lies",
    "sha256": "sha256 of the file's content",
    "format": "the file's format",
    "rows": "how many rows the file holds",
    # --- the pool
    "prompt": "the prompt (the turns before the response, rendered as text)",
    "response": "the response the example trains the model to give",
    "messages": "the example as chat messages (JSON: role and content per turn)",
    "n_prompt_tokens": "prompt tokens under the model's tokenizer and chat template",
    "n_response_tokens": "response tokens (with the EOS that closes it)",
    "raw": "the rejected row as it was read (cut to 2,000 characters)",
    "reason": "why the row was set aside",
    "category": "the demo's label of the row: correct, or the kind of noise (evaluation only, never used to score)",
    "is_corrupted": "the demo's hidden noise label (evaluation only: never used to score, never exported)",
    # --- queries
    "reference": "the reference answer the grader compares with",
    "reference_response": "a full reference response (optional), the off-policy target's text",
    "grader": "the grader that grades the query's answers",
    # --- rollouts and grades
    "sample_idx": "which of the query's samples the rollout is (0 .. rollout.samples_per_query - 1)",
    "completion": "the model's sampled answer",
    "token_ids": "the token ids the model sampled",
    "logprob_sum": "log-probability of the sampled tokens under the model (summed)",
    "finish_reason": "why sampling stopped: stop (EOS) or length (rollout.max_tokens)",
    "ended_with_eos": "whether the completion ended with the EOS token",
    "engine": "the engine that sampled it (vllm or transformers)",
    "model_fingerprint": "sha256 of the model's config, tokenizer and weight files",
    "base_model_fingerprint": "the fingerprint of the base model the warm-up started from",
    "correct": "whether the grader accepted the answer",
    "reward": "the grader's reward (1.0 correct, 0.0 wrong, or the custom grader's value)",
    "extracted_answer": "the answer the grader read from the completion",
    # --- gradients
    "grad": "the projected gradient of the example's loss (float32, projection.rank² per layer)",
    "grad_norm": "L2 norm of the projected gradient",
    "side": "which of the layer's two sides the basis projects",
    "layer": "the targeted layer's name",
    "basis_fingerprint": "a hash of the projection basis the gradients were taken in",
    "projection_fingerprint": "a hash of the basis and the projection settings the gradients depend on",
    "n_tokens": "tokens in the loss",
    "loss": "the example's loss under the model",
    "loss_per_token": "the base model's loss per response token (the likelihood blend's and the loss filter's order)",
    "fitted_on_sequences": "how many reference sequences the basis was fitted on",
    "dimension": "the projected gradient's dimension",
    # --- scores and the selection
    "score": "the influence score: higher helps the model's correct answers more",
    "score_raw": "the score before the gradient-norm debias",
    "self_influence": "the example's influence on itself (its gradient's squared norm under H⁻¹)",
    "rank": "the selection's order: the first k rows by rank are the selection of k",
    "selected": "whether the row is in the refined dataset",
    "weight": "the row's SFT weight: 1.0 selected, 0.0 not",
    # --- evaluation and benchmark
    "model": "what was evaluated: base (no fine-tune), full (SFT on the whole pool) or refined (SFT on the selection)",
    "method": "the selection method",
    "seed": "the fine-tune's seed",
    "n_train": "the examples it was fine-tuned on",
    "n_selected": "the examples the method selected",
    "n_queries": "the test queries it was scored on",
    "accuracy": "test accuracy (share of test queries answered correctly)",
    "accuracy_low": "the 95% Wilson interval's lower end",
    "accuracy_high": "the 95% Wilson interval's upper end",
    "wall_seconds": "seconds it took",
    "pass_at_1": "share of rollouts graded correct",
    "noise_auc": "ROC-AUC of the score for clean against noisy rows (where the pool says which)",
    # --- the demo and the warm-up
    "task": "the demo's task",
    "n_parameters": "the model's parameter count",
    "pretrain_steps": "the optimizer steps of pre-training",
    "calibration_accuracy": "accuracy on the calibration queries when pre-training stopped",
    "continued_sft_steps": "steps of SFT on the pool after pre-training",
    "step": "the warm-up step the checkpoint was saved at",
    "adapter": "the LoRA adapter's directory (none for a full fine-tune)",
}


def describe_column(name: str) -> str:
    """What column ``name`` holds (:data:`CARRIED` for a column the pipeline does not make)."""
    return COLUMN_DESCRIPTIONS.get(name, CARRIED)
