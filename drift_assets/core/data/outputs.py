"""Where the pipeline writes files a user reads: never over an input, never over a file it did not write.

The export folder (``selection.export_dir``) is the user's: it may hold their own files, even the
pool a previous export came from. So an export target may not be, lie inside, or be the same file
as (through symlinks or hard links) any input, and the settings naming both are refused when they
load. In the folder a manifest (``MANIFEST_NAME``) records each file the export wrote and the sha256
of its content; an existing file at a target path is replaced only when the manifest records it
with the content it still has. Anything else is refused, naming the path and the setting, before
any file is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from drift_assets.core.data.fingerprint import content_hash, file_sha256

MANIFEST_NAME = ".drift-export.json"
SETTING = "selection.export_dir"  # the setting every refusal names
_WRITTEN_BY = "drift_assets refined_dataset_export"


class ExportPathError(ValueError):
    """An export would write over an input, or over a file the export did not write."""


def export_conflicts(directory: str | Path, names: Sequence[str], inputs: Mapping[str, str | None]) -> list[str]:
    """Each way the files ``names`` (and the manifest) written into ``directory`` would land on an
    input: the same path once symlinks are resolved, a path inside an input directory, or the same
    file under another name (a hard link). ``inputs``: setting → path (None: not set)."""
    directory = Path(directory)
    problems = []
    for input_setting, path in inputs.items():
        if not path or "://" in str(path):  # unset, or not a local path
            continue
        given = Path(path)
        source = given.resolve()
        if directory.resolve() == source:
            problems.append(f"{SETTING}: {directory} is {input_setting} ({given}): the export would write into an input")
            continue
        for name in (*names, MANIFEST_NAME):
            target = directory / name
            resolved = target.resolve()
            if resolved == source:
                relation = "is"
            elif source.is_dir() and resolved.is_relative_to(source):
                relation = "is inside"
            elif target.exists() and source.exists() and os.path.samefile(target, source):
                relation = "is the same file as"
            else:
                continue
            problems.append(
                f"{SETTING}: the export would write {target}, which {relation} {input_setting} ({given}) and would "
                f"overwrite that input; set {SETTING} to a folder apart from the inputs"
            )
    return problems


def check_export_dir(directory: str | Path) -> None:
    """Refuse a ``selection.export_dir`` that names an existing file (or a path under one) instead of a folder."""
    directory = Path(directory)
    for path in (directory, *directory.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise ExportPathError(
                    f"{SETTING}: {path} exists and is not a folder; the export writes its files into a folder "
                    f"there. Set {SETTING} to a folder (the file is left as it is)"
                )
            return


def _read_manifest(directory: Path) -> dict[str, list[str]]:
    path = directory / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return {}
    try:
        manifest = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, ValueError):
        manifest = None
    files = manifest.get("files") if isinstance(manifest, dict) and manifest.get("written_by") == _WRITTEN_BY else None
    if not isinstance(files, dict):
        raise ExportPathError(
            f"{SETTING}: {path} is not the manifest the export writes (it records what the export wrote); "
            "refusing to replace it or anything beside it: move it away"
        )
    return {name: [h for h in hashes if isinstance(h, str)] for name, hashes in files.items() if isinstance(hashes, list)}


def _write_manifest(directory: Path, files: Mapping[str, Sequence[str]]) -> None:
    staged = directory / f"{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp"
    staged.write_text(json.dumps({"written_by": _WRITTEN_BY, "files": {name: list(h) for name, h in files.items()}}))
    os.replace(staged, directory / MANIFEST_NAME)


def write_export(
    directory: str | Path,
    writers: Mapping[str, Callable[[Path], None]],
    inputs: Mapping[str, str | None] | None = None,
    previously_exported: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Write each file ``name`` of ``writers`` into ``directory`` (``writer(path)`` writes it at a
    temporary path, then all are renamed into place); returns name → path.

    Refused (:class:`ExportPathError`, naming the path and the setting) before anything is written
    where a target would land on one of ``inputs`` (setting → path), or where a file exists at a
    target that the manifest does not record with its present content. ``previously_exported``
    (path → :func:`content_hash`, what the export's table recorded) also counts as written by the
    export: the files of exports made before the manifest existed.
    """
    directory = Path(directory)
    check_export_dir(directory)
    problems = export_conflicts(directory, list(writers), inputs or {})
    if problems:
        raise ExportPathError("\n".join(problems))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportPathError(f"{SETTING}: cannot create the folder {directory} ({error.strerror})") from None
    manifest = _read_manifest(directory)
    for name in writers:
        target = directory / name
        if not target.exists() and not target.is_symlink():
            continue
        owned = (
            target.is_file()
            and not target.is_symlink()
            and (
                file_sha256(target) in manifest.get(name, [])
                or (previously_exported or {}).get(str(target)) == content_hash(target)
            )
        )
        if not owned:
            raise ExportPathError(
                f"{SETTING}: {target} exists and was not written by the export (or was changed since it was); "
                f"refusing to replace it: move it away, or set {SETTING} to another folder"
            )
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            # A name no one else uses, created by the writer (so with the user's umask, as before).
            staged[name] = directory / f".{name}.{uuid.uuid4().hex}.tmp"
            write(staged[name])
        written = {name: file_sha256(path) for name, path in staged.items()}
        # Until every file is renamed into place, the manifest accepts each target's old content and
        # its new one: a run stopped in between leaves files the next export may still replace.
        accepted = {name: list(hashes) for name, hashes in manifest.items()}
        for name, digest in written.items():
            accepted.setdefault(name, []).append(digest)
        _write_manifest(directory, accepted)
        for name, path in staged.items():
            os.replace(path, directory / name)
        staged.clear()
        _write_manifest(directory, {**manifest, **{name: [digest] for name, digest in written.items()}})
    finally:
        for path in staged.values():
            with contextlib.suppress(OSError):
                path.unlink()
    return {name: str(directory / name) for name in writers}
