"""The GPU check script runs end to end (on the CPU, with its tiny model) before a GPU is lent to run it."""

import json
import re
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
    tables = done.stdout.split("\n\n")
    table = [line for line in next(t for t in tables if "| step | throughput" in t).splitlines() if line.startswith("| ")]
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

    # Against the roofline: each stage's rate, examples per GPU-hour and share of the 6N bound at the
    # peak it printed, consistent with each other within their rounding, measured and at 7B.
    peak, parameters = (
        float(re.search(r"peak ([\d.e+]+) FLOP/s \(CPU: a timed 512² float32 matmul\)", done.stdout)[1]),
        int(re.search(r"N = ([\d,]+) parameters", done.stdout)[1].replace(",", "")),
    )
    assert parameters == figures["n_parameters"] and peak == pytest.approx(figures["peak_flops"], rel=1e-3)
    roofline = [line for line in next(t for t in tables if "| stage | tokens/s |" in t).splitlines() if line.startswith("| ")]
    assert roofline[0] == (
        "| stage | tokens/s | 512-token examples per GPU-hour | share of the 6N bound "
        "| at 7B: examples per GPU-hour | at 7B: share of the 6N bound |"
    )
    rows = {row[0]: row[1:] for row in (line.strip("| ").split(" | ") for line in roofline[1:])}
    assert list(rows) == ["rollouts (vLLM)", "gradient pass (projected)", "training step (AdamW)", "LoRA warm-up (rank 16)"]
    keys = {"rollouts (vLLM)": "rollouts", "gradient pass (projected)": "gradient_pass"}
    keys |= {"training step (AdamW)": "training_step", "LoRA warm-up (rank 16)": "lora_warm_up"}
    for stage, cells in rows.items():
        tokens, per_hour, share, at_7b, share_7b = (float(cell.replace(",", "").rstrip("%")) for cell in cells)
        assert tokens == pytest.approx(figures[f"{keys[stage]}_tokens_per_s"], abs=0.06) and tokens > 0
        assert per_hour == pytest.approx(tokens * 3600 / 512, rel=1e-3, abs=1)
        assert share / 100 == pytest.approx(tokens * 6 * parameters / peak, rel=2e-3)
        assert at_7b == pytest.approx(per_hour * parameters / 7e9, rel=2e-2, abs=0.06)
        assert share_7b == share
    # The gradient pass and the training step ran over the same batches: their rates compare as their times.
    gradient, training = (float(rows[s][0].replace(",", "")) for s in ("gradient pass (projected)", "training step (AdamW)"))
    assert gradient / training == pytest.approx(figures["gradient_over_training"], rel=1e-3)
    projection = next(line for line in done.stdout.splitlines() if line.startswith("7B projection:"))
    assert f"measured rate × N_measured / 7e9 = rate × {parameters:,} / 7e9" in projection
    bound = float(re.search(r"the bound at 7B: ([\d,]+) examples per GPU-hour", projection)[1].replace(",", ""))
    assert bound == pytest.approx(peak / (6 * 7e9) * 3600 / 512, rel=1e-3, abs=1)
