"""The facts a test export's dataset card states (``export_dataset``'s ``facts``)."""

from drift_assets.core.data.publish import CardFacts

FACTS = CardFacts(
    model_path="/models/tiny",
    model_fingerprint="f" * 64,
    settings={"selection.method": "top_k", "selection.k": 3, "influence": {"ranking": "score", "likelihood_blend": 0.5}},
    code_versions={"refined_dataset": "2-abc", "refined_dataset_export": "3-def"},
    package_version="0.1.0",
    git_commit="0123456789ab",
    run_id="run-42",
    selection_method="top_k",
)
