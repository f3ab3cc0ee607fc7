"""Where the demo writes its inputs, without ever overwriting a user's own files.

The demo assets write ``data.training_pool``, ``data.validation_queries``, ``data.test_queries``
and ``model.path``: the same paths a user's settings point at their own data and model. So the demo
only replaces what it wrote itself. Beside each file it leaves a ``<name>.drift-demo`` stamp that
holds the file's sha256, and in the model directory a ``.drift-demo`` stamp (a name the model
fingerprint does not hash). A path that exists without a matching stamp is refused, unless it
already holds exactly what the demo would write.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

STAMP_SUFFIX = ".drift-demo"
MODEL_STAMP = ".drift-demo"


class DemoOverwriteError(RuntimeError):
    """The demo was asked to write over a file or model directory it did not write."""


def _refusal(setting: str, path: Path, what: str) -> DemoOverwriteError:
    return DemoOverwriteError(
        f"{setting}: {path} {what} that the demo did not write; refusing to overwrite it. "
        "To use your own data and model set demo.enabled: false; to rebuild the demo there, move that path away."
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + STAMP_SUFFIX)


def write_demo_jsonl(path: str | Path, rows: list[dict], setting: str) -> bool:
    """Write ``rows`` as JSONL to ``path`` atomically, stamped as the demo's; returns whether it changed.

    Raises :class:`DemoOverwriteError` when ``path`` holds other content that the demo did not write.
    """
    path = Path(path)
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    stamp = _stamp_path(path)
    if path.exists():
        current = _sha256(path.read_bytes())
        if current == _sha256(content):
            stamp.write_text(current)
            return False
        if not stamp.exists() or stamp.read_text().strip() != current:
            raise _refusal(setting, path, "exists and holds content")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    stamp.write_text(_sha256(content))
    temporary.replace(path)  # atomic: a reader never sees half a file
    return True


def check_model_directory(path: str | Path, setting: str = "model.path") -> None:
    """Raise unless ``path`` is absent, empty, or a model directory the demo wrote."""
    path = Path(path)
    if path.is_file():
        raise _refusal(setting, path, "is a file")
    if path.is_dir() and any(path.iterdir()) and not (path / MODEL_STAMP).exists():
        raise _refusal(setting, path, "is a directory with files")


def model_stamp(path: str | Path) -> dict | None:
    """What the demo recorded when it wrote the model directory ``path`` (None: not the demo's)."""
    stamp = Path(path) / MODEL_STAMP
    if not stamp.is_file():
        return None
    try:
        return json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return {}


def replace_model_directory(path: str | Path, save, stamp: dict | None = None) -> None:
    """Call ``save(directory)`` into a fresh sibling directory, stamp it (with ``stamp``), then swap it
    in for ``path``. A run killed half-way leaves the previous model intact.
    """
    path = Path(path)
    check_model_directory(path)
    staging = path.with_name(path.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save(staging)
    (staging / MODEL_STAMP).write_text(json.dumps({"written_by": "drift_assets demo_base_model", **(stamp or {})}))
    retired = path.with_name(path.name + ".previous")
    shutil.rmtree(retired, ignore_errors=True)
    if path.exists():
        path.rename(retired)
    staging.rename(path)
    shutil.rmtree(retired, ignore_errors=True)
