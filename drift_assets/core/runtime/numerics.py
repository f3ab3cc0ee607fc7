"""The same floating point on any x86 CPU.

oneMKL (torch's BLAS on x86), ATen and OpenBLAS (numpy's, which the scores are computed with) pick
their kernels by the instruction set: an AVX-512 machine sums in another order than an AVX2 one, so
the same inputs, settings and seed gave gradients, scores and selections that differed in the last
bits from machine to machine, and then in which rows a selection keeps. Pinned to the AVX2 code path
(which every x86 CPU of the last decade has), with oneMKL's conditional numerical reproducibility in
STRICT mode (the same bits whatever the thread count; OpenBLAS gives the same bits with any count
from two up), they compute the same tables everywhere, at some speed on AVX-512 machines. oneMKL and
ATen read the settings at their first call, OpenBLAS when numpy is imported: they are set when this
package is imported (a process that imported numpy first sets ``OPENBLAS_CORETYPE`` itself). A value
already in the environment wins (``MKL_CBWR=AUTO ATEN_CPU_CAPABILITY=avx512 OPENBLAS_CORETYPE=SkylakeX``
gives an AVX-512 machine its speed back); a CPU without AVX2 keeps its own kernels.
"""

from __future__ import annotations

import os
import platform

PORTABLE = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell"}


def has_avx2() -> bool:
    """Whether this is an x86 CPU with AVX2 (read from /proc/cpuinfo; elsewhere: assumed of an x86 machine)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and " avx2" in line for line in cpuinfo)
    except OSError:
        return True


def use_portable_cpu_numerics() -> dict[str, str]:
    """Set :data:`PORTABLE` where the environment does not say otherwise (x86 CPUs with AVX2 only: ARM
    has one code path, and OpenBLAS forced onto AVX2 kernels would stop on a CPU without them); the
    values in force."""
    if not has_avx2():
        return {}
    for name, value in PORTABLE.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in PORTABLE}
