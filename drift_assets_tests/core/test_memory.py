"""The memory plan against peak memory measured on the CPU, and the early failure it gives."""

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from drift_assets.core.gradients.memory import MemoryPlan, MemoryPlanError, ModelShape, training_plan

DEMO = ["128", "384", "2", "100", "64", "128"]  # the demo model's shape (hidden, MLP, layers, vocab), 64 × 128 tokens
FIFTY_M = ["512", "1376", "8", "32000", "4", "256"]  # a 58M-parameter Llama, 4 × 256 tokens
PROBE_TIMEOUT_S = 300  # one probe's limit


@pytest.fixture(scope="module")
def probes():
    """A memory_probe server: each probe runs in a child forked from it (imports paid once), whose
    lines come back up to its ``exit`` line."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    server = subprocess.Popen(
        [sys.executable, "-m", "drift_assets_tests.helpers.memory_probe", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )

    def probe(argv: list[str]) -> tuple[int, list[str]]:
        server.stdin.write(" ".join(argv) + "\n")
        server.stdin.flush()
        lines = []
        hung = threading.Timer(PROBE_TIMEOUT_S, server.kill)  # a probe that hangs ends the server: the read fails
        hung.start()
        try:
            while not (line := server.stdout.readline()).startswith("exit "):
                assert line, f"the probe server ended (status {server.poll()})"
                lines.append(line)
        finally:
            hung.cancel()
        return int(line.split()[1]), lines

    yield probe
    server.stdin.close()
    server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize(
    "probe",
    [
        ["sft", *DEMO],
        ["grad", *DEMO],
        ["sft", *DEMO, "lora"],
        ["sft", *FIFTY_M],
        ["grad", *FIFTY_M],
        ["sft", *FIFTY_M, "lora"],
        ["sft", *FIFTY_M, "checkpointing"],
        ["grad", *FIFTY_M, "checkpointing"],
    ],
    ids=[
        "demo-sft",
        "demo-gradients",
        "demo-lora-sft",
        "58M-sft",
        "58M-gradients",
        "58M-lora-sft",
        "58M-sft-checkpointing",
        "58M-gradients-checkpointing",
    ],
)
def test_the_plan_is_within_a_quarter_of_the_measured_peak(probes, probe):
    """Each step in a process of its own (drift_assets_tests.helpers.memory_probe says how it is measured);
    none of these shapes was among those the plan's coefficients were fitted on."""
    status, lines = probes(probe)
    assert lines, f"the probe printed nothing (exit status {status})"
    figures = json.loads(lines[-1])
    assert status == 0, figures.get("error", figures)
    assert 0.75 <= figures["planned"] / figures["measured"] <= 1.25, figures


def test_a_plan_over_the_free_memory_fails_naming_the_settings():
    plan = MemoryPlan("SFT step", {"weights": 2 * 2**30, "activations": 3 * 2**30})
    plan.check(3 * 2**30, "cuda:0", "lower benchmark.sft.batch_size")  # the weights are already loaded
    with pytest.raises(MemoryPlanError, match=r"needs 3.00 GiB beside the loaded weights.*lower benchmark.sft.batch_size"):
        plan.check(2**30, "cuda:0", "lower benchmark.sft.batch_size")


def test_a_7b_full_warm_up_needs_more_than_one_gpu_and_a_lora_one_fits_in_80_gb():
    with torch.device("meta"):
        config = LlamaConfig(
            vocab_size=152_064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
        )
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    full = training_plan(ModelShape.of(model), batch_size=4, max_tokens=1024)
    # bf16 weights, float32 master weights, then AdamW: 18 bytes per parameter before activations.
    assert full.total > 18 * ModelShape.of(model).parameters > 120 * 2**30
    # Rank-16 adapters on every projection: 40M trained parameters; the activations dominate.
    lora = replace(ModelShape.of(model), trainable=40_000_000, largest_trainable=18944 * 16)
    planned = training_plan(lora, batch_size=4, max_tokens=1024)
    assert planned.total < 80 * 2**30 and planned.parts["activations"] > planned.parts["weights"]
