"""Content hashes: data versions of input files and the model fingerprint, and the model checks.

A file or dataset directory hashes by content, and so does a model directory (its config,
tokenizer files and weights): every byte, so that no change to a weight file can go unseen. A file
of ``CACHED_HASH_MIN_BYTES`` or more enters the hash as its own sha256, which is read once and
kept in a cache (``file_sha256``), so that observing an unchanged 70B checkpoint again reads none
of its weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

# Smaller files are hashed as they are read (cheaper than a cache entry, and their hashes stay what
# they were before the cache); larger ones through the cache.
CACHED_HASH_MIN_BYTES = 64 * 1024 * 1024
HASH_CACHE_ENV_VAR = "DRIFT_ASSETS_HASH_CACHE"
# A file changed within this long of its last change may keep the same timestamps (file systems
# stamp times at a coarse tick): its hash is not cached until it is older (git's "racy" files).
_RACY_NANOSECONDS = 2_000_000_000
_CACHE_FORMAT = "sha256-v1"
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".py")


# This process's entries, in front of the folder (which may be unwritable, or a pod's own).
_IN_MEMORY: dict[str, str] = {}


def hash_cache_dir() -> Path:
    """Where :func:`file_sha256` keeps its entries: $DRIFT_ASSETS_HASH_CACHE, else the user's cache."""
    if os.environ.get(HASH_CACHE_ENV_VAR):
        return Path(os.environ[HASH_CACHE_ENV_VAR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "drift_assets" / "file-hashes"


def _cache_key(stat: os.stat_result) -> str:
    # ctime, unlike mtime, cannot be set back by a user (os.utime): a write in place always moves it.
    return f"{_CACHE_FORMAT}:{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def _cache_entry(key: str) -> Path:
    return hash_cache_dir() / hashlib.sha256(key.encode()).hexdigest()[:40]


def _cached(key: str) -> str | None:
    """The sha256 an entry holds for ``key``; None where there is none or it is not a valid one."""
    try:
        entry = json.loads(_cache_entry(key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    digest = entry.get("sha256")
    return digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) else None


def _store(key: str, digest: str) -> None:
    """Write one entry atomically (processes side by side write whole entries, each under its own
    key); a cache that cannot be written only costs the next reader a read of the file."""
    entry = _cache_entry(key)
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        handle, staged = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as staged_file:
                json.dump({"key": key, "sha256": digest}, staged_file)
            os.replace(staged, entry)
        except OSError:
            Path(staged).unlink(missing_ok=True)
            raise


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content (what ``sha256sum`` prints). A file of ``CACHED_HASH_MIN_BYTES`` or
    more is cached by (device, inode, size, mtime, ctime): unchanged, it is not read again; changed in
    any way, it is read once."""
    path = Path(path)
    before = path.stat()
    if before.st_size < CACHED_HASH_MIN_BYTES:  # cheaper to read than to look up
        return hashlib.sha256(path.read_bytes()).hexdigest()
    key = _cache_key(before)
    cached = _IN_MEMORY.get(key) or _cached(key)
    if cached is not None:
        _IN_MEMORY[key] = cached
        return cached
    started = time.time_ns()
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if _cache_key(path.stat()) == key and before.st_ctime_ns < started - _RACY_NANOSECONDS:
        _IN_MEMORY[key] = digest
        _store(key, digest)
    return digest


def _hash_file_into(digest, path: Path) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    digest.update(f"sha256={file_sha256(path)}".encode() if size >= CACHED_HASH_MIN_BYTES else path.read_bytes())


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
# The weight formats transformers and vLLM load from a model directory.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_SAFETENSORS_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit


def _json_file(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"model.path: {path} is not valid JSON ({error})") from None
    return loaded if isinstance(loaded, dict) else {}


def safetensors_problem(path: str | Path) -> str | None:
    """What makes a safetensors file unloadable from its header and size alone (truncated, or a header
    that does not parse or does not match the file), or None; reads only the header."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"is truncated ({size} bytes, shorter than a safetensors header)"
        header_bytes = int.from_bytes(prefix, "little")
        if header_bytes > _SAFETENSORS_MAX_HEADER_BYTES:
            return f"is not a safetensors file (its first 8 bytes give a header of {header_bytes} bytes)"
        if 8 + header_bytes > size:
            return f"is truncated ({size} bytes, less than its {header_bytes}-byte header)"
        try:
            header = json.loads(handle.read(header_bytes))
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            return f"has a corrupt safetensors header ({type(error).__name__}: {error})"
    expected = 8 + header_bytes + max(ends, default=0)
    if expected > size:
        return f"is truncated ({size} bytes; its header describes {expected})"
    if expected < size:
        return f"is corrupt ({size} bytes; its header describes {expected})"
    return None


def check_model_directory(model_dir: str | Path) -> None:
    """Fail naming ``model.path`` and the file at fault where loading would fail later or mislead
    (a directory without tokenizer files asks to "install sentencepiece"; a truncated weight file
    fails inside vLLM's engine), or where loading would run code from the directory (``auto_map``).
    Reads the config, the tokenizer config and each safetensors header, never the weights."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model.path: {model_dir} does not exist or is not a directory")
    if not config_path.exists():
        raise FileNotFoundError(f"model.path: {model_dir} has no config.json; it must be a Hugging Face model directory")
    config = _json_file(config_path)
    if "model_type" not in config:
        raise ValueError(f"model.path: {config_path} has no 'model_type'; it is not a transformers model config")
    for path in (config_path, model_dir / "tokenizer_config.json"):
        named = _json_file(path).get("auto_map") if path.exists() else None
        if named:
            raise ValueError(
                f"model.path: {path} names custom code (auto_map: {json.dumps(named)}); drift_assets never imports "
                "code from a model directory (trust_remote_code stays off): use a model whose architecture "
                "transformers ships, or remove auto_map where that model_type is one transformers ships"
            )
    if not any((model_dir / name).exists() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model.path: {model_dir} has no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer beside the model (tokenizer.save_pretrained)"
        )
    weights = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not weights:
        raise FileNotFoundError(
            f"model.path: {model_dir} has no weight file (*.safetensors or pytorch_model*.bin); save the model "
            "there with save_pretrained"
        )
    for index in sorted(model_dir.glob("*.index.json")):
        shards = set(_json_file(index).get("weight_map", {}).values())
        missing = sorted(name for name in shards if not (model_dir / str(name)).is_file())
        if missing:
            raise FileNotFoundError(f"model.path: {index} names weight files that are missing: {', '.join(missing)}")
    for path in weights:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
        if problem:
            raise ValueError(f"model.path: {path} {problem}; save the model again (save_pretrained) or copy it whole")


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a Hugging Face model directory's config, tokenizer and weights (every byte)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; model.path must be a Hugging Face model directory")
    digest = hashlib.sha256()
    for file in sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES):
        _hash_file_into(digest, file)
    return digest.hexdigest()[:16]
