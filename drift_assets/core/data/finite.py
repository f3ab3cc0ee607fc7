"""Non-finite values (NaN, inf) in a model's weights, found and named.

A model with NaN weights samples garbage and gives NaN gradients, and every step after it would
fail on a symptom (degenerate rollouts, NaN vectors) instead of the cause. Loading a model checks its
parameters (:func:`check_finite_weights`); where only a rollout engine read the files, the files are
scanned (:func:`non_finite_tensors`) once its outputs look non-finite.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

# Elements checked at once: a bounded temporary on a device whose memory the step has planned.
_CHUNK = 1 << 24


class NonFiniteWeightsError(ValueError):
    """A model whose weights hold NaN or inf."""


def _non_finite(tensor: torch.Tensor) -> int:
    flat = tensor.detach().reshape(-1)
    if not flat.is_floating_point():
        return 0
    bad = 0
    for chunk in flat.split(_CHUNK):
        finite = torch.isfinite(chunk)
        if not bool(finite.all()):
            bad += int((~finite).sum())
    return bad


def non_finite_counts(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, int, int]]:
    """(name, non-finite values, values) of each tensor that holds any."""
    found = []
    for name, tensor in named:
        bad = _non_finite(tensor)
        if bad:
            found.append((name, bad, tensor.numel()))
    return found


def non_finite_tensors(model_dir: str | Path) -> list[tuple[str, int, int]]:
    """As :func:`non_finite_counts`, for the ``*.safetensors`` files of a model directory (a LoRA
    adapter's too), named ``"<file>: <tensor>"``; read one tensor at a time."""
    from safetensors import safe_open

    found = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            found += non_finite_counts((f"{path.name}: {name}", weights.get_tensor(name)) for name in weights.keys())
    return found


def describe(found: list[tuple[str, int, int]], limit: int = 3) -> str:
    """``model.layers.1.mlp.down_proj.weight (5 of 12288 values)``, for the first ``limit`` tensors."""
    named = ", ".join(f"{name} ({bad} of {total} values)" for name, bad, total in found[:limit])
    return named + (f" and {len(found) - limit} more tensors" if len(found) > limit else "")


def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """Raise :class:`NonFiniteWeightsError`, naming ``where`` (``model.path <dir>``) and the tensors,
    when a parameter of ``model`` holds NaN or inf."""
    found = non_finite_counts(model.named_parameters())
    if found:
        raise NonFiniteWeightsError(
            f"{where}: non-finite weights (NaN or inf) in {describe(found)}; nothing can be sampled, differentiated "
            "or fine-tuned from them: restore the model's weights"
        )
