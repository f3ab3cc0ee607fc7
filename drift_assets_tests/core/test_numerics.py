"""Portable CPU numerics: a gradient's bits do not depend on the machine's instruction set or the
thread count once the package is imported (core/runtime/numerics.py)."""

import os
import platform
import subprocess
import sys

import pytest

# A gradient through the operations of the pipeline's models (matrix products, SiLU, softmax
# attention, RMS norm), hashed: oneMKL's and ATen's kernels, as the gradient passes and fine-tunes
# run them (torch alone: a subprocess that imports no more starts in a few seconds).
GRADIENT_HASH = """
import hashlib, os, sys
if sys.argv[1] == "package":
    import drift_assets  # noqa: F401  (sets the portable numerics)
import torch
torch.set_num_threads(int(os.environ["THREADS"]))
torch.manual_seed(0)
x = torch.randn(160, 128)
w1 = torch.randn(128, 384, requires_grad=True)
w2 = torch.randn(384, 128, requires_grad=True)
h = torch.nn.functional.silu(x @ w1) @ w2
attention = torch.softmax(h @ h.T / 128**0.5, dim=-1) @ h
torch.nn.functional.rms_norm(attention, (128,)).square().mean().backward()
flat = torch.cat([w1.grad.flatten(), w2.grad.flatten()])
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(flat.numpy().tobytes()).hexdigest())
"""


def _hash(mode: str, threads: int, **env: str) -> tuple[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
    environment.update(env, THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, "-c", GRADIENT_HASH, mode], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1]


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the pin is x86's")
def test_a_gradient_has_the_same_bits_on_an_avx2_machine_and_with_any_thread_count():
    here = _hash("package", 1)
    assert here[0] == "AVX2"
    # MKL_ENABLE_INSTRUCTIONS=AVX2 makes oneMKL run as it would on a machine without AVX-512.
    assert _hash("package", 2, MKL_ENABLE_INSTRUCTIONS="AVX2") == here
    # Without the package's settings the kernels follow the machine: on an AVX-512 one the bits differ
    # from an AVX2 machine's (so the comparisons above can fail).
    native = _hash("plain", 2)
    if native[0] == "AVX2":
        pytest.skip("this machine has no AVX-512: nothing to tell apart")
    assert native[1] != _hash("plain", 2, MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2")[1]
