"""Scripts that measure the pipeline; run each from the repository root as ``python -m benchmarks.<script>``."""
