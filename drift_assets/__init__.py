"""drift_assets: DRIFT data refinement as Dagster assets."""

from drift_assets.core.runtime.numerics import use_portable_cpu_numerics

# Before torch computes anything: the same tables on any x86 CPU (core/runtime/numerics.py).
use_portable_cpu_numerics()
