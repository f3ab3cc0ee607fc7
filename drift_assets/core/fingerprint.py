"""Content hashes: data versions of input files and the model fingerprint.

A file or dataset directory hashes by content. A model directory hashes its config, tokenizer
files and weights; weight files above ``FULL_HASH_LIMIT_BYTES`` hash their size, safetensors header
(names, shapes, dtypes, offsets) and first and last 8 MiB, so that observing a 70B checkpoint
stays cheap while any retraining of the demo-sized model still changes its fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FULL_HASH_LIMIT_BYTES = 512 * 1024 * 1024
_EDGE_BYTES = 8 * 1024 * 1024
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".py")


def _hash_file_into(digest, path: Path, partial: bool = False) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as handle:
        if not partial or size <= FULL_HASH_LIMIT_BYTES:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
            return
        digest.update(handle.read(_EDGE_BYTES))  # the safetensors header sits at the start
        handle.seek(size - _EDGE_BYTES)
        digest.update(handle.read(_EDGE_BYTES))


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of every file under a directory (sorted relative paths + contents)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path if path.is_dir() else path.parent)).encode())
        _hash_file_into(digest, file)
    return digest.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a Hugging Face model directory's config, tokenizer and weights."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; model.path must be a Hugging Face model directory")
    digest = hashlib.sha256()
    for file in sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES):
        _hash_file_into(digest, file, partial=True)
    return digest.hexdigest()[:16]
