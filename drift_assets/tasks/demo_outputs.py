"""Where the demo writes its inputs, without ever overwriting a user's own files.

The demo assets write ``data.training_pool``, ``data.validation_queries``, ``data.test_queries``
and ``model.path``: the same paths a user's settings point at their own data and model. So the demo
only replaces what it wrote itself. Beside each file it leaves a ``<name>.drift-demo`` stamp that
holds the file's sha256, and in the model directory a ``.drift-demo`` stamp (a name the model
fingerprint does not hash). A path that exists without a matching stamp is refused, unless it
already holds exactly what the demo would write.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from drift_assets.core.data.fingerprint import content_hash
from drift_assets.core.runtime.processes import is_alive

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


def write_demo_files(files: dict[str, tuple[Path, list[dict]]], log: Callable[[str], None]) -> list[dict]:
    """Write each split's rows to its path (:func:`write_demo_jsonl`, as the setting ``data.<split>``)
    and log what was written; returns a record of each file (split, path, rows, sha256)."""
    records, written = [], []
    for split, (path, rows) in files.items():
        changed = write_demo_jsonl(path, rows, f"data.{split}")
        records.append({"split": split, "path": str(path), "rows": len(rows), "sha256": content_hash(path)})
        written.append(f"{split} {len(rows)}" + ("" if changed else " (unchanged)"))
    folders = sorted({str(path.parent) for path, _ in files.values()})
    log(f"rows written to {', '.join(folders)}: {', '.join(written)}")
    return records


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


# The demo's own scratch directories beside model.path: hidden, named by the demo, each holding a
# marker that says which process made it. A user's directory never has one.
_SCRATCH_MARKER = ".drift-demo-scratch"


def _scratch_directory(path: Path, kind: str) -> Path:
    """A fresh, uniquely named directory beside ``path`` that the demo owns (its marker inside)."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.drift-demo-{kind}-", dir=path.parent))
    (scratch / _SCRATCH_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return scratch


def _remove_abandoned_scratch(path: Path) -> None:
    """Delete the scratch directories beside ``path`` that a killed demo run of this machine left
    (named and marked as the demo's, their process gone); nothing else."""
    for scratch in path.parent.glob(glob.escape(f".{path.name}.drift-demo-") + "*-*"):
        try:
            owner = json.loads((scratch / _SCRATCH_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or owner.get("host") != socket.gethostname() or _alive(owner.get("pid")):
            continue
        shutil.rmtree(scratch, ignore_errors=True)


def _alive(pid) -> bool:
    return not isinstance(pid, int) or is_alive(pid)  # an unknown pid: keep it


def replace_model_directory(path: str | Path, save, stamp: dict | None = None) -> None:
    """Call ``save(directory)`` into a fresh sibling directory, stamp it (with ``stamp``), then swap it
    in for ``path``. A run killed half-way leaves the previous model intact. The sibling and the
    retired model take names of the demo's own (never ``<path>.staging`` or ``<path>.previous``, which
    may be a user's): nothing is deleted but the model the demo wrote and its own scratch.
    """
    path = Path(path)
    check_model_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_scratch(path)
    staging, retired = _scratch_directory(path, "staging"), None
    try:
        save(staging)
        (staging / _SCRATCH_MARKER).unlink()
        (staging / MODEL_STAMP).write_text(json.dumps({"written_by": "drift_assets demo_base_model", **(stamp or {})}))
        if path.exists():
            check_model_directory(path)  # still absent, empty or the demo's, just before it is moved
            retired = _scratch_directory(path, "retired")
            path.rename(retired / "model")
        staging.rename(path)
    except BaseException:
        if retired is not None and not path.exists():
            (retired / "model").rename(path)  # the previous model back in place
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
