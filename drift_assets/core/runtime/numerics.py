"""The same floating point on any x86 CPU.

oneMKL (torch's BLAS on x86) and ATen pick their kernels by the instruction set: an AVX-512 machine
sums in another order than an AVX2 one, so the same inputs, settings and seed gave gradients, scores
and selections that differed in the last bits from machine to machine, and then in which rows a
selection keeps. Pinned to the AVX2 code path (which every x86 CPU of the last decade has) with
oneMKL's conditional numerical reproducibility in STRICT mode (the same bits whatever the thread
count), torch computes the same bits everywhere, at some speed on AVX-512 machines (numpy's
OpenBLAS, which the scores use, is not pinned yet: docs/developing.md, Determinism). Both libraries
read the settings at their first call, so they are set when the package is imported; a value already
in the environment wins (``MKL_CBWR=AUTO ATEN_CPU_CAPABILITY=avx512`` gives the speed back).
"""

from __future__ import annotations

import os
import platform

PORTABLE = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}


def use_portable_cpu_numerics() -> dict[str, str]:
    """Set :data:`PORTABLE` where the environment does not say otherwise (x86 only: ARM has one code
    path); the values in force."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    for name, value in PORTABLE.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in PORTABLE}
