"""Content hashes: data versions of input files and the model fingerprint.

A file or dataset directory hashes by content. A model directory hashes its config, tokenizer
files and weights; weight files above ``FULL_HASH_LIMIT_BYTES`` hash their size, safetensors header
(names, shapes, dtypes, offsets) and first and last 8 MiB, so that observing a 70B checkpoint
stays cheap while any retraining of the demo-sized model still changes its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
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


# Any one of these holds a tokenizer's vocabulary (fast, SentencePiece, BPE or WordPiece).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


def check_model_directory(model_dir: str | Path) -> None:
    """Fail naming ``model.path`` and the missing piece where transformers' own error would mislead
    (a directory without tokenizer files asks to "install sentencepiece")."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model.path: {model_dir} does not exist or is not a directory")
    if not config_path.exists():
        raise FileNotFoundError(f"model.path: {model_dir} has no config.json; it must be a Hugging Face model directory")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"model.path: {config_path} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"model.path: {config_path} has no 'model_type'; it is not a transformers model config")
    if not any((model_dir / name).exists() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model.path: {model_dir} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer beside the model (tokenizer.save_pretrained)"
        )


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a Hugging Face model directory's config, tokenizer and weights."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; model.path must be a Hugging Face model directory")
    digest = hashlib.sha256()
    for file in sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES):
        _hash_file_into(digest, file, partial=True)
    return digest.hexdigest()[:16]
