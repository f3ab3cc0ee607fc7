#!/usr/bin/env bash
# The pipeline's heavy steps on a ~1B-parameter random-initialised Llama on one GPU: rollouts
# (vLLM against transformers), the projected gradient pass against a training step, the PCA basis
# fit and a LoRA warm-up, with peak memory; then each stage against the roofline (tokens/s, 512-token
# examples per GPU-hour, the share of the device's 6N bound) and scaled to 7B parameters
# (benchmarks/gpu_check.py says what each figure is).
# Needs the environment with the `gpu` extra: pip install -e ".[gpu,dev]". No download.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
timeout 480 "$PYTHON" -m benchmarks.gpu_check "$@"
