"""Portable CPU numerics: a gradient's bits do not depend on the machine's instruction set or the
thread count once the package is imported (core/runtime/numerics.py)."""

import os
import subprocess
import sys

import pytest

from drift_assets.core.runtime.numerics import PORTABLE, has_avx2

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
import numpy as np  # and the scores' kind of algebra, numpy's (OpenBLAS)
g = np.random.default_rng(0).standard_normal((300, 128))  # inputs of its own, not the gradient above
scores = np.linalg.solve(g.T @ g + np.eye(128), g.T @ g[:, :16])
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
      hashlib.sha256(scores.tobytes()).hexdigest())
"""


def _hash(mode: str, threads: int, **env: str) -> tuple[str, str, str]:
    """(ATen's kernels, the torch gradient's hash, the numpy scores' hash) in a fresh process."""
    environment = {key: value for key, value in os.environ.items() if key not in PORTABLE}
    # torch's threads as given; OpenBLAS's two (its bits are the same with any count from two up).
    environment.update(env, THREADS=str(threads), OPENBLAS_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", GRADIENT_HASH, mode], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1], out[2]


@pytest.mark.slow
@pytest.mark.skipif(not has_avx2(), reason="the pin is for x86 CPUs with AVX2")
def test_a_gradient_and_a_score_have_the_same_bits_on_an_avx2_machine_and_with_any_thread_count():
    here = _hash("package", 1)
    assert here[0] == "AVX2"
    # MKL_ENABLE_INSTRUCTIONS=AVX2 makes oneMKL run as it would on a machine without AVX-512.
    assert _hash("package", 2, MKL_ENABLE_INSTRUCTIONS="AVX2") == here
    # A machine with AVX2 and no AVX-512, without the package's settings: OpenBLAS picks Haswell's kernels.
    avx2_machine = _hash("plain", 2, MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2", OPENBLAS_CORETYPE="Haswell")
    assert avx2_machine[2] == here[2]
    # Without the package's settings the kernels follow the machine: on an AVX-512 one the bits differ
    # from an AVX2 machine's (so the comparisons above can fail).
    native = _hash("plain", 2)
    if native[0] == "AVX2":
        pytest.skip("this machine has no AVX-512: nothing to tell apart")
    assert native[1] != avx2_machine[1] and native[2] != avx2_machine[2]
