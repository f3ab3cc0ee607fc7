"""Model directories for tests: a tiny model saved to disk, and a safetensors file padded to any size
without writing the padding (a sparse file)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from drift_assets.tasks.tiny_model import TinyLlamaShape, build_char_tokenizer, build_tiny_llama, save_model

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_padded_safetensors(path: Path, tensors: dict[str, torch.Tensor], pad_bytes: int) -> dict[str, tuple[int, int]]:
    """A valid safetensors file holding ``tensors`` between two unused zero tensors of ``pad_bytes``
    each, ``aaa_pad`` first and ``zzz_pad`` last, written as holes (a sparse file: nothing of the
    padding is written to disk). Returns each real tensor's (start, end) byte range in the file."""
    entries, data, offset = {}, [], 0

    def add(name: str, dtype: str, shape: list[int], size: int) -> None:
        nonlocal offset
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size

    add("aaa_pad", "U8", [pad_bytes], pad_bytes)
    for name, tensor in tensors.items():
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        add(name, _DTYPES[tensor.dtype], list(tensor.shape), len(raw))
        data.append((entries[name]["data_offsets"][0], raw))
    add("zzz_pad", "U8", [pad_bytes], pad_bytes)
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    start = 8 + len(header)
    with path.open("wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        for at, raw in data:
            handle.seek(start + at)
            handle.write(raw)
        handle.truncate(start + offset)
    return {
        name: (start + e["data_offsets"][0], start + e["data_offsets"][1]) for name, e in entries.items() if "pad" not in name
    }


def tiny_model_dir(directory: Path, chat_template: str = "none") -> Path:
    """A one-layer Llama with the character tokenizer (and ``chat_template``) saved in ``directory``."""
    tokenizer = build_char_tokenizer(chat_template)
    shape = TinyLlamaShape(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=96, max_positions=128)
    save_model(build_tiny_llama(tokenizer, shape, seed=5), tokenizer, directory)
    return directory
