"""The demo graph's assets (and partitions) that a change of the model makes stale."""

MODEL_DEPENDENTS = {
    "training_pool",
    "training_pool_rejects",
    "validation_queries",  # which references fit the context is counted in the model's tokens
    "rollouts[base]",
    "grades[base]",
    "projection_basis[base]",
    "validation_gradients[base]",
    "influence_scores",
    "refined_dataset",
    "refined_model_evaluation",
} | {f"training_gradient_projections[base|{s}]" for s in ("000", "001", "002")}
