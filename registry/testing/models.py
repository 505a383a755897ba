"""Generated models for tests, the demo and benchmarks: real safetensors files, written by hand.

Writing the format directly (8-byte header length, JSON header, data) keeps the generator free of
numpy and torch, and lets tests build exactly the header they want, hostile ones included.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}


def safetensors_bytes(
    tensors: dict[str, tuple[str, list[int], bytes]],
    *,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """A safetensors file holding `tensors` (name -> (dtype, shape, raw bytes)) in name order."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape, data) in sorted(tensors.items()):
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data region to 8 bytes
    body = b"".join(data for _, (_, _, data) in sorted(tensors.items()))
    return struct.pack("<Q", len(encoded)) + encoded + body


def write_safetensors(
    path: Path,
    tensors: dict[str, tuple[str, list[int], bytes]],
    *,
    metadata: dict[str, str] | None = None,
) -> None:
    path.write_bytes(safetensors_bytes(tensors, metadata=metadata))


def make_model(
    directory: Path,
    *,
    shards: int = 2,
    shard_size: int = 1 << 20,
    tensors_per_shard: int = 4,
    dtype: str = "F16",
    seed: int = 0,
) -> Path:
    """Write a sharded model like a Hugging Face checkpoint: shards, index, config, tokenizer.

    Each shard holds `tensors_per_shard` 2-D tensors of about `shard_size` bytes in total, filled
    with seeded random bytes (so two calls with one seed give identical files).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    itemsize = DTYPE_SIZES[dtype]
    weight_map: dict[str, str] = {}
    for shard in range(shards):
        filename = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors: dict[str, tuple[str, list[int], bytes]] = {}
        columns = 256
        rows = max(1, shard_size // tensors_per_shard // (columns * itemsize))
        for position in range(tensors_per_shard):
            name = f"model.layers.{shard * tensors_per_shard + position}.weight"
            size = rows * columns * itemsize
            tensors[name] = (dtype, [rows, columns], rng.randbytes(size))
            weight_map[name] = filename
        write_safetensors(directory / filename, tensors, metadata={"format": "pt"})
    index: dict[str, object] = {
        "metadata": {"total_size": 0},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = {"architectures": ["DemoForCausalLM"], "hidden_size": 256, "seed": seed}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer.json").write_text(
        json.dumps({"version": "1.0", "model": {"vocab": {}}})
    )
    return directory


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data
