"""The GPU check script runs end to end (on the CPU, with its tiny model) before a GPU is lent to run it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.vllm
@pytest.mark.slow
def test_the_gpu_check_runs_every_step_and_prints_its_table(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--json", str(tmp_path / "figures.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    steps = [line.split(" | ")[0].removeprefix("| ") for line in table[1:]]
    assert steps == [
        "vLLM rollouts",
        "transformers rollouts",
        "projected gradient pass (k = 3,584)",
        "plain training step (AdamW)",
        "PCA basis fit (rank 16, 8 references)",
        "LoRA warm-up (rank 16)",
    ]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert all(value > 0 for value in figures.values())
    # The ratios are the measured figures divided, not typed in.
    assert figures["gradient_over_training"] == pytest.approx(
        figures["gradient_examples_per_s"] / figures["training_examples_per_s"]
    )
