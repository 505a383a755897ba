"""Tests of registry.safetensors_header: real files agree with safetensors, hostile ones fail."""

from __future__ import annotations

import json
import os
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import deserialize, safe_open
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save as torch_save
from safetensors.torch import save_file as torch_save_file

from registry.errors import InvalidModelError
from registry.safetensors_header import (
    DTYPE_BITS,
    MAX_HEADER_SIZE,
    SafetensorsHeader,
    TensorEntry,
    parse_header,
    read_header,
    validate_index,
)

NAME = "model-00001.safetensors"

# ---------------------------------------------------------------------------------------------
# Helpers that write the format by hand, so hostile files can say anything.


def raw_file(header: bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Length prefix (the true one unless `length` lies) + header bytes + data region."""
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def json_file(header: object, data: bytes = b"") -> bytes:
    return raw_file(json.dumps(header).encode(), data)


def build(
    table: list[tuple[str, str, list[int]]],
    metadata: dict[str, str] | None = None,
    *,
    padding: int = 0,
    key_order: list[int] | None = None,
) -> tuple[bytes, list[TensorEntry]]:
    """Write a valid file for (name, dtype, shape) rows laid out in row order; return the bytes
    and the entries a parser should report (sorted as the parser sorts)."""
    entries: list[TensorEntry] = []
    cursor = 0
    for name, dtype, shape in table:
        nbytes = int(np.prod(shape, dtype=object)) * DTYPE_BITS[dtype] // 8
        entries.append(TensorEntry(name, dtype, tuple(shape), cursor, cursor + nbytes))
        cursor += nbytes
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    order = key_order if key_order is not None else list(range(len(entries)))
    for index in order:
        entry = entries[index]
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [entry.begin, entry.end],
        }
    data = bytes(i % 251 for i in range(cursor))
    blob = raw_file(json.dumps(header).encode() + b" " * padding, data)
    expected = sorted(entries, key=lambda entry: (entry.begin, entry.end, entry.name))
    return blob, expected


def parse_blob(blob: bytes, name: str = NAME) -> SafetensorsHeader:
    """parse_header on an in-memory file whose length prefix is honest."""
    length = int.from_bytes(blob[:8], "little")
    return parse_header(blob[8 : 8 + length], file_size=len(blob), display_name=name)


def write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


def refused(excinfo: pytest.ExceptionInfo[InvalidModelError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert message.startswith(f"{NAME}: "), message
    for fragment in fragments:
        assert fragment in message, message


def tensor(dtype: str = "F32", shape: list[int] | None = None, offsets: list[int] | None = None):
    return {
        "dtype": dtype,
        "shape": [2, 3] if shape is None else shape,
        "data_offsets": [0, 24] if offsets is None else offsets,
    }


# ---------------------------------------------------------------------------------------------
# Real files written by safetensors parse to exactly what safetensors reports.

TORCH_DTYPES = [
    name
    for name in (
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
        "complex64",
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn_x2",
    )
    if hasattr(torch, name)
]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    # Random bytes viewed as the dtype: works for float8/float4, which cannot be cast to.
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape, itemsize), dtype=torch.uint8)
    if dtype == torch.bool:
        raw %= 2
    return raw.view(dtype).reshape(shape)


def assert_matches_safetensors(path: Path, header: SafetensorsHeader) -> None:
    blob = path.read_bytes()
    with safe_open(str(path), framework="numpy") as handle:
        assert {t.name for t in header.tensors} == set(handle.keys())
        for entry in header.tensors:
            view = handle.get_slice(entry.name)
            assert entry.dtype == view.get_dtype()
            assert list(entry.shape) == view.get_shape()
        assert header.metadata == handle.metadata()
    # safe_open does not expose offsets: the bytes each range selects must be the tensor's bytes.
    data = {name: bytes(info["data"]) for name, info in deserialize(blob)}
    for entry in header.tensors:
        start = header.data_offset + entry.begin
        assert blob[start : header.data_offset + entry.end] == data[entry.name]
    assert header.data_offset + header.data_size == len(blob)
    assert header.header_size == int.from_bytes(blob[:8], "little")


@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
def test_torch_file_matches_safe_open(tmp_path: Path, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    shapes: dict[str, tuple[int, ...]] = {"matrix": (3, 4), "empty": (0, 3), "vector": (5,)}
    if dtype_name != "float4_e2m1fn_x2":  # safetensors cannot write a scalar of a packed dtype
        shapes["scalar"] = ()
    tensors = {name: random_tensor(dtype, shape) for name, shape in shapes.items()}
    tensors["anchor.f32"] = random_tensor(torch.float32, (2, 2))
    path = tmp_path / "model.safetensors"
    torch_save_file(tensors, str(path), metadata={"format": "pt"})

    header = read_header(path, display_name=NAME)

    assert_matches_safetensors(path, header)
    assert header.metadata == {"format": "pt"}
    assert header.parameter_count == sum(t.numel for t in header.tensors)
    assert "F32" in header.dtypes
    assert list(header.dtypes) == sorted(set(header.dtypes))


def test_torch_packed_f4_reports_logical_shape(tmp_path: Path) -> None:
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("torch without float4_e2m1fn_x2")
    path = tmp_path / "f4.safetensors"
    torch_save_file({"w": random_tensor(torch.float4_e2m1fn_x2, (3, 4))}, str(path))
    (entry,) = read_header(path, display_name=NAME).tensors
    assert (entry.dtype, entry.shape, entry.nbytes, entry.numel) == ("F4", (3, 8), 12, 24)


NUMPY_DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.bool_,
    np.complex64,
]


def test_numpy_file_of_every_dtype_matches_safe_open(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        f"layer.{index}.{np.dtype(dtype).name}": (rng.integers(0, 2, size=(index + 1, 3))).astype(
            dtype
        )
        for index, dtype in enumerate(NUMPY_DTYPES)
    }
    tensors["zero"] = np.zeros((0,), dtype=np.float32)
    tensors["scalar"] = np.array(1.5, dtype=np.float64)
    path = tmp_path / "model.safetensors"
    np_save_file(tensors, str(path), metadata={"a": "b", "empty": ""})

    header = read_header(path, display_name=NAME)

    assert_matches_safetensors(path, header)
    assert len(header.dtypes) == len(NUMPY_DTYPES)


def test_empty_file_as_safetensors_writes_it_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.safetensors", torch_save({}))
    header = read_header(path, display_name=NAME)
    assert header.tensors == ()
    assert header.data_size == 0
    assert header.metadata is None
    assert header.parameter_count == 0
    assert header.dtypes == ()


def test_metadata_only_and_null_metadata_are_valid() -> None:
    assert parse_blob(json_file({"__metadata__": {"k": "v"}})).metadata == {"k": "v"}
    assert parse_blob(json_file({"__metadata__": None})).metadata is None


def test_trailing_space_padding_and_zero_sized_tensors_sharing_an_offset() -> None:
    header = {
        "b": tensor("U8", [0], [0, 0]),
        "a": tensor("U8", [0, 4], [0, 0]),
        "c": tensor("U8", [2], [0, 2]),
        "d": tensor("F4", [0], [2, 2]),
    }
    parsed = parse_blob(raw_file(json.dumps(header).encode() + b"       ", b"xy"))
    assert [t.name for t in parsed.tensors] == ["a", "b", "c", "d"]
    assert parsed.data_size == 2


def test_sub_byte_dtypes_count_bits() -> None:
    header = {
        "f4": tensor("F4", [2, 3], [0, 3]),
        "f6a": tensor("F6_E2M3", [4], [3, 6]),
        "f6b": tensor("F6_E3M2", [8], [6, 12]),
        "e8m0": tensor("F8_E8M0", [2], [12, 14]),
    }
    parsed = parse_blob(json_file(header, bytes(14)))
    assert [(t.name, t.nbytes, t.numel) for t in parsed.tensors] == [
        ("f4", 3, 6),
        ("f6a", 3, 4),
        ("f6b", 6, 8),
        ("e8m0", 2, 2),
    ]


def test_dtype_table_is_the_safetensors_enum() -> None:
    # The 0.8 serde error lists every variant; an unknown dtype makes safetensors print them all.
    blob = json_file({"w": tensor("NOPE", [1], [0, 1])}, b"x")
    with pytest.raises(Exception) as excinfo:  # noqa: PT011 - SafetensorError has no public base
        deserialize(blob)
    listed = str(excinfo.value).split("expected one of ")[1]
    variants = {part.strip(" `") for part in listed.split(" at line")[0].split(",")}
    assert variants == set(DTYPE_BITS)


# ---------------------------------------------------------------------------------------------
# Manifest round trip.


def walk(value: object) -> Iterator[object]:
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def test_manifest_round_trip_of_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    torch_save_file(
        {"w": torch.ones(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16), "e": torch.ones(0)},
        str(path),
        metadata={"format": "pt"},
    )
    header = read_header(path, display_name=NAME)
    manifest = header.to_manifest()

    assert set(manifest) == {"header_size", "metadata", "tensors"}
    assert all(type(item) in (dict, list, str, int) or item is None for item in walk(manifest))
    stored = json.loads(json.dumps(manifest))
    assert SafetensorsHeader.from_manifest(stored, display_name=NAME) == header
    assert stored["tensors"][0] == {
        "name": header.tensors[0].name,
        "dtype": header.tensors[0].dtype,
        "shape": list(header.tensors[0].shape),
        "offsets": [header.tensors[0].begin, header.tensors[0].end],
    }


def test_manifest_round_trip_of_empty_header() -> None:
    header = parse_blob(torch_save({}))
    again = SafetensorsHeader.from_manifest(header.to_manifest(), display_name=NAME)
    assert again == header


def good_manifest() -> dict[str, Any]:
    blob, _ = build([("a", "F32", [2, 3]), ("b", "U8", [4])], {"k": "v"})
    return parse_blob(blob).to_manifest()


def _set(path: tuple[object, ...], value: object) -> dict[str, Any]:
    manifest = good_manifest()
    target: Any = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return manifest


BAD_MANIFESTS: dict[str, tuple[object, str]] = {
    "not an object": ([1, 2], "not an object"),
    "missing key": ({"header_size": 10, "metadata": None}, "missing 'tensors'"),
    "extra key": ({**good_manifest(), "x": 1}, "unexpected key(s) 'x'"),
    "bool header_size": (_set(("header_size",), True), "header_size True"),
    "zero header_size": (_set(("header_size",), 0), "header_size 0"),
    "huge header_size": (_set(("header_size",), 10**5000), "an integer over 64 bits"),
    "too large header_size": (_set(("header_size",), MAX_HEADER_SIZE + 1), "header_size"),
    "metadata int value": (_set(("metadata", "k"), 1), "not a string"),
    "metadata list": (_set(("metadata",), ["k"]), "__metadata__ is a list"),
    "tensors not list": (_set(("tensors",), {}), "tensors is an object"),
    "tensor not object": (_set(("tensors", 0), "a"), "tensors[0] is a string"),
    "tensor extra key": (_set(("tensors", 0, "x"), 1), "unexpected key(s) 'x'"),
    "tensor missing key": ({**good_manifest(), "tensors": [{"name": "a"}]}, "missing 'dtype'"),
    "name not str": (_set(("tensors", 0, "name"), 5), "name is an integer"),
    "reserved name": (_set(("tensors", 0, "name"), "__metadata__"), "reserved"),
    "duplicate name": (_set(("tensors", 1, "name"), "a"), "listed twice"),
    "bool in shape": (_set(("tensors", 0, "shape"), [2, True]), "shape has True"),
    "float in shape": (_set(("tensors", 0, "shape"), [2.0, 3]), "shape has 2.0"),
    "size mismatch": (_set(("tensors", 0, "shape"), [2, 2]), "= 16 bytes but its offsets span 24"),
    "offsets overlap": (_set(("tensors", 1, "offsets"), [20, 24]), "overlap tensor 'a'"),
    "offsets hole": (_set(("tensors", 1, "offsets"), [25, 29]), "belong to no tensor"),
    "offsets negative": (_set(("tensors", 0, "offsets"), [-1, 23]), "not unsigned"),
    "unknown dtype": (_set(("tensors", 0, "dtype"), "F31"), "unknown dtype 'F31'"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_from_manifest_refuses(case: str) -> None:
    data, fragment = BAD_MANIFESTS[case]
    with pytest.raises(InvalidModelError) as excinfo:
        SafetensorsHeader.from_manifest(data, display_name=NAME)
    refused(excinfo, fragment)


# ---------------------------------------------------------------------------------------------
# Hostile headers.

F32_2X3 = {"w": tensor()}  # a valid table needing 24 data bytes

BAD_HEADERS: dict[str, tuple[bytes, str]] = {
    "length zero": (raw_file(b"", b"x" * 10), "header length is 0"),
    "invalid json": (raw_file(b'{"w": {', bytes(24)), "not valid JSON"),
    "non utf8": (raw_file(b'{"\xff": 1}'), "not valid UTF-8"),
    "json not object": (raw_file(b"[1, 2]"), "does not start with '{'"),
    "leading whitespace": (raw_file(b" {}"), "does not start with '{'"),
    "trailing newline": (raw_file(b"{}\n"), "padded only with trailing spaces"),
    "trailing garbage": (raw_file(b"{}  x"), "not valid JSON"),
    "two objects": (raw_file(b"{} {}"), "not valid JSON"),
    "NaN": (raw_file(b'{"__metadata__": {"a": NaN}}'), "not valid JSON"),
    "huge int": (raw_file(b'{"w": {"shape": [' + b"9" * 5000 + b"]}}"), "not valid JSON"),
    "deep nesting": (raw_file(b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "JSON"),
    "duplicate tensor": (
        raw_file(
            b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
            b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
            b"x",
        ),
        "key 'w' twice",
    ),
    "duplicate field": (
        raw_file(b'{"w": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'),
        "key 'dtype' twice",
    ),
    "duplicate metadata key": (raw_file(b'{"__metadata__": {"a": "1", "a": "2"}}'), "twice"),
    "tensor not object": (json_file({"w": [1]}), "tensor 'w' is a list, not an object"),
    "missing key": (json_file({"w": {"dtype": "U8", "shape": [1]}}), "missing 'data_offsets'"),
    "extra key": (json_file({"w": {**tensor(), "extra": 1}}, bytes(24)), "unexpected key"),
    "unknown dtype": (json_file({"w": tensor("F33")}, bytes(24)), "unknown dtype 'F33'"),
    "lower-case dtype": (json_file({"w": tensor("f32")}, bytes(24)), "unknown dtype 'f32'"),
    "dtype not str": (json_file({"w": tensor(32)}, bytes(24)), "dtype is an integer"),  # type: ignore[arg-type]
    "shape not list": (
        json_file({"w": {**tensor(), "shape": 6}}, bytes(24)),
        "shape is an integer, not a list",
    ),
    "bool in shape": (json_file({"w": tensor(shape=[True, 24])}, bytes(24)), "shape has True"),
    "negative dim": (json_file({"w": tensor(shape=[-2, -3])}, bytes(24)), "shape has -2"),
    "float dim": (json_file({"w": tensor(shape=[2.0, 3])}, bytes(24)), "shape has 2.0"),  # type: ignore[list-item]
    "dim over u64": (json_file({"w": tensor(shape=[2**64, 0])}), "not an unsigned 64-bit"),
    "rank too high": (json_file({"w": tensor(shape=[1] * 65, offsets=[0, 4])}, bytes(4)), "65"),
    "shape size mismatch": (
        json_file({"w": tensor(offsets=[0, 20])}, bytes(20)),
        "tensor 'w' has shape [2, 3] of F32 = 24 bytes but its data_offsets span 20",
    ),
    "sub-byte not whole bytes": (
        json_file({"w": tensor("F4", [3], [0, 2])}, bytes(2)),
        "12 bits, not a whole number of bytes",
    ),
    "offsets three": (json_file({"w": tensor(offsets=[0, 12, 24])}, bytes(24)), "[begin, end]"),
    "offsets not list": (json_file({"w": {**tensor(), "data_offsets": 0}}), "[begin, end]"),
    "offsets bool": (json_file({"w": tensor("U8", [1], [False, True])}, b"x"), "not unsigned"),
    "offsets reversed": (json_file({"w": tensor("U8", [0], [4, 0])}, bytes(4)), "end before"),
    "offsets out of range": (
        json_file({"w": tensor(offsets=[8, 32])}, bytes(24)),
        "run past the end of the data region (24 bytes)",
    ),
    "offsets overlap": (
        json_file({"a": tensor("U8", [4], [0, 4]), "b": tensor("U8", [4], [2, 6])}, bytes(6)),
        "tensor 'b' data_offsets [2, 6] overlap tensor 'a' [0, 4]",
    ),
    "same range twice": (
        json_file({"a": tensor("U8", [4], [0, 4]), "b": tensor("U8", [4], [0, 4])}, bytes(4)),
        "overlap",
    ),
    "zero-size inside another": (
        json_file({"a": tensor("U8", [4], [0, 4]), "z": tensor("U8", [0], [2, 2])}, bytes(4)),
        "overlap",
    ),
    "hole": (
        json_file({"a": tensor("U8", [4], [0, 4]), "b": tensor("U8", [4], [6, 10])}, bytes(10)),
        "bytes [4, 6) before tensor 'b' belong to no tensor",
    ),
    "not starting at zero": (
        json_file({"a": tensor("U8", [4], [2, 6])}, bytes(6)),
        "bytes [0, 2) before tensor 'a'",
    ),
    "trailing bytes": (json_file(F32_2X3, bytes(30)), "6 trailing bytes after the last tensor"),
    "data but no tensors": (json_file({}, b"xx"), "2 trailing bytes"),
    "metadata not object": (json_file({"__metadata__": "x"}), "__metadata__ is a string"),
    "metadata int value": (json_file({"__metadata__": {"a": 1}}), "value of 'a' is an integer"),
    "metadata nested": (json_file({"__metadata__": {"a": {}}}), "value of 'a' is an object"),
    "lone surrogate": (json_file({"__metadata__": {"a": "\ud800"}}), "lone surrogate"),
    "empty name": (json_file({"": tensor("U8", [1], [0, 1])}, b"x"), "tensor name is empty"),
    "NUL in name": (json_file({"a\x00b": tensor("U8", [1], [0, 1])}, b"x"), "contains NUL"),
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_parse_refuses_hostile_header(case: str, tmp_path: Path) -> None:
    blob, fragment = BAD_HEADERS[case]
    with pytest.raises(InvalidModelError) as excinfo:
        parse_blob(blob)
    refused(excinfo, fragment)
    # read_header must give the same answer from a file.
    with pytest.raises(InvalidModelError) as excinfo:
        read_header(write(tmp_path / "f", blob), display_name=NAME)
    refused(excinfo, fragment)


def test_too_many_tensors_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("registry.safetensors_header.MAX_TENSORS", 3)
    blob, _ = build([(f"t{i}", "U8", [1]) for i in range(4)])
    with pytest.raises(InvalidModelError) as excinfo:
        parse_blob(blob)
    refused(excinfo, "4 tensors; the limit is 3")


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (b"", "0 bytes, shorter than the 8-byte header length"),
        (b"\x02\x00\x00", "3 bytes, shorter than"),
        (raw_file(b"{}", length=3), "header length 3 runs past the end of the file (10 bytes)"),
        (raw_file(b"{}", length=MAX_HEADER_SIZE + 1), f"exceeds the limit of {MAX_HEADER_SIZE}"),
        (raw_file(b"{}", length=2**63), f"header length {2**63} exceeds"),
        (raw_file(b"{}", length=2**64 - 1), "exceeds the limit"),
    ],
    ids=["empty", "short", "past-end", "over-limit", "2**63", "u64-max"],
)
def test_read_header_refuses_bad_length_without_allocating(
    tmp_path: Path, blob: bytes, fragment: str
) -> None:
    path = write(tmp_path / "m.safetensors", blob)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InvalidModelError) as excinfo:
            read_header(path, display_name=NAME)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refused(excinfo, fragment)
    assert peak < 1024 * 1024
    assert time.perf_counter() - started < 1


def test_header_length_past_a_large_file_is_refused_before_reading(tmp_path: Path) -> None:
    # A sparse 64 MiB file: the claimed header (64 MiB - 7) is under the limit but past the end.
    path = tmp_path / "big.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", 64 * 1024 * 1024 - 7))
        handle.truncate(64 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidModelError) as excinfo:
            read_header(path, display_name=NAME)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refused(excinfo, "runs past the end of the file")
    assert peak < 1024 * 1024


def test_parse_header_checks_lengths_too() -> None:
    with pytest.raises(InvalidModelError) as excinfo:
        parse_header(b"{}", file_size=9, display_name=NAME)
    refused(excinfo, "runs past the end of the file (9 bytes)")
    with pytest.raises(InvalidModelError) as excinfo:
        parse_header(b"", file_size=9, display_name=NAME)
    refused(excinfo, "header length is 0")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_read_header_refuses_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo.safetensors"
    os.mkfifo(path)
    with pytest.raises(InvalidModelError) as excinfo:
        read_header(path, display_name=NAME)
    refused(excinfo, "not a regular file")


def test_read_header_lets_missing_file_errors_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "absent.safetensors", display_name=NAME)


# ---------------------------------------------------------------------------------------------
# Index files.


def shard_headers() -> dict[str, SafetensorsHeader]:
    one, _ = build([("a.weight", "F32", [2, 2]), ("a.bias", "F32", [2])])
    two, _ = build([("b.weight", "BF16", [4])])
    return {
        "model-00001-of-00002.safetensors": parse_blob(one),
        "model-00002-of-00002.safetensors": parse_blob(two),
    }


GOOD_INDEX = {
    "metadata": {"total_size": 32},
    "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "a.bias": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
    },
}


def index_bytes(index: object) -> bytes:
    return json.dumps(index).encode()


def test_valid_index_returns_weight_map() -> None:
    result = validate_index(index_bytes(GOOD_INDEX), display_name=NAME, headers=shard_headers())
    assert result == GOOD_INDEX["weight_map"]


def test_index_without_metadata_and_with_unknown_keys_is_valid() -> None:
    index = {"weight_map": GOOD_INDEX["weight_map"], "format": "x"}
    assert validate_index(index_bytes(index), display_name=NAME, headers=shard_headers())


def test_index_names_resolve_against_its_directory() -> None:
    headers = {f"sub/dir/{key}": value for key, value in shard_headers().items()}
    result = validate_index(
        index_bytes(GOOD_INDEX), display_name=NAME, headers=headers, base_dir="sub/dir"
    )
    assert result == GOOD_INDEX["weight_map"]
    with pytest.raises(InvalidModelError) as excinfo:
        validate_index(index_bytes(GOOD_INDEX), display_name=NAME, headers=headers)
    refused(excinfo, "not a safetensors file of this version")


def test_real_sharded_model_index(tmp_path: Path) -> None:
    shards = {
        "model-00001-of-00002.safetensors": {"x": torch.ones(3), "y": torch.ones(2, 2)},
        "model-00002-of-00002.safetensors": {"z": torch.zeros(4, dtype=torch.int64)},
    }
    headers = {}
    weight_map = {}
    for file_name, tensors in shards.items():
        torch_save_file(tensors, str(tmp_path / file_name))
        headers[file_name] = read_header(tmp_path / file_name, display_name=file_name)
        weight_map.update(dict.fromkeys(tensors, file_name))
    index = index_bytes({"metadata": {"total_size": 60}, "weight_map": weight_map})
    assert validate_index(index, display_name=NAME, headers=headers) == weight_map


def _with_map(**changes: object) -> bytes:
    return index_bytes({"weight_map": {**GOOD_INDEX["weight_map"], **changes}})


BAD_INDEXES: dict[str, tuple[bytes, str]] = {
    "parent path": (_with_map(**{"a.weight": "../x.safetensors"}), "'..' segment"),
    "absolute path": (_with_map(**{"a.weight": "/abs.safetensors"}), "must be relative"),
    "backslash": (_with_map(**{"a.weight": "sub\\x.safetensors"}), "must be relative"),
    "not among headers": (
        _with_map(**{"a.weight": "other.safetensors"}),
        "maps tensor 'a.weight' to 'other.safetensors', which is not a safetensors file",
    ),
    "tensor missing from shard": (
        _with_map(**{"a.weight": "model-00002-of-00002.safetensors"}),
        "which has no such tensor",
    ),
    "unknown tensor": (_with_map(ghost="model-00001-of-00002.safetensors"), "'ghost'"),
    "file name not str": (_with_map(**{"a.weight": 1}), "to an integer, not a string"),
    "empty tensor name": (_with_map(**{"": "model-00001-of-00002.safetensors"}), "empty"),
    "weight_map list": (index_bytes({"weight_map": ["a"]}), "weight_map is a list"),
    "weight_map null": (index_bytes({"weight_map": None}), "weight_map is null"),
    "no weight_map": (index_bytes({"metadata": {}}), "no 'weight_map'"),
    "metadata list": (
        index_bytes({"metadata": [], "weight_map": {}}),
        "metadata is a list, not an object",
    ),
    "not an object": (index_bytes([GOOD_INDEX]), "index is a list"),
    "invalid json": (b'{"weight_map": ', "not valid JSON"),
    "non utf8": (b'{"weight_map": {"\xff": "x"}}', "not valid UTF-8"),
    "duplicate key": (
        b'{"weight_map": {"a.bias": "model-00001-of-00002.safetensors", '
        b'"a.bias": "model-00002-of-00002.safetensors"}}',
        "key 'a.bias' twice",
    ),
}


@pytest.mark.parametrize("case", BAD_INDEXES)
def test_validate_index_refuses(case: str) -> None:
    data, fragment = BAD_INDEXES[case]
    with pytest.raises(InvalidModelError) as excinfo:
        validate_index(data, display_name=NAME, headers=shard_headers())
    refused(excinfo, fragment)


# ---------------------------------------------------------------------------------------------
# Properties.

names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=12,
).filter(lambda name: name != "__metadata__")
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)


@st.composite
def tensor_rows(draw: st.DrawFn) -> tuple[str, list[int]]:
    dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
    shape = draw(st.lists(st.integers(0, 6), max_size=4))
    bits = DTYPE_BITS[dtype]
    # Sub-byte dtypes need numel * bits to be whole bytes: pad the last axis until it is.
    while int(np.prod(shape, dtype=object)) * bits % 8:
        shape = [*shape[:-1], shape[-1] + 1] if shape else [1]
    return dtype, shape


@st.composite
def valid_files(draw: st.DrawFn) -> tuple[bytes, list[TensorEntry], dict[str, str] | None]:
    table = draw(st.dictionaries(names, tensor_rows(), max_size=8))
    rows = [(name, dtype, shape) for name, (dtype, shape) in table.items()]
    metadata = draw(st.none() | st.dictionaries(texts, texts, max_size=3))
    order = draw(st.permutations(range(len(rows))))
    padding = draw(st.integers(0, 8))
    blob, expected = build(rows, metadata, padding=padding, key_order=order)
    return blob, expected, metadata


@settings(max_examples=150, deadline=None)
@given(valid_files())
def test_built_files_parse_back_to_their_table(
    case: tuple[bytes, list[TensorEntry], dict[str, str] | None],
) -> None:
    blob, expected, metadata = case
    header = parse_blob(blob)
    assert list(header.tensors) == expected
    assert header.metadata == metadata
    assert header.data_offset + header.data_size == len(blob)
    assert SafetensorsHeader.from_manifest(header.to_manifest(), display_name=NAME) == header


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mutations") / "m.safetensors"


def refusal(call: Callable[[], object]) -> str | None:
    """Run `call`; return the InvalidModelError message, None on success. Any other exception
    propagates and fails the test."""
    try:
        call()
    except InvalidModelError as exc:
        return str(exc)
    return None


def expect_only_invalid_model(blob: bytes, path: Path) -> None:
    for message in (
        refusal(lambda: parse_blob(blob)),
        refusal(lambda: read_header(write(path, blob), display_name=NAME)),
    ):
        assert message is None or message.startswith(f"{NAME}: "), message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    valid_files(),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "insert", "delete"]),
            st.integers(0),
            st.binary(max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(-2, 2),
)
def test_mutated_bytes_raise_only_invalid_model(
    scratch: Path,
    case: tuple[bytes, list[TensorEntry], dict[str, str] | None],
    mutations: list[tuple[str, int, bytes]],
    truncate: int,
) -> None:
    blob = bytearray(case[0])
    length = int.from_bytes(blob[:8], "little")
    for kind, where, payload in mutations:
        # Aim mostly inside the header (prefix + JSON), where the parser looks.
        position = where % (8 + length + 1)
        if kind == "flip" and position < len(blob):
            blob[position] ^= 1 << (where % 8)
        elif kind == "set" and position < len(blob):
            blob[position] = payload[0] if payload else 0
        elif kind == "insert":
            blob[position:position] = payload
        elif kind == "delete":
            del blob[position : position + len(payload) + 1]
    if truncate < 0:
        blob = blob[:truncate]
    elif truncate > 0:
        blob += bytes(truncate)
    expect_only_invalid_model(bytes(blob), scratch)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    valid_files(),
    st.sampled_from(["dtype", "shape", "data_offsets", "extra", "__metadata__", "entry"]),
    json_values,
    st.data(),
)
def test_structurally_mutated_headers_raise_only_invalid_model(
    case: tuple[bytes, list[TensorEntry], dict[str, str] | None],
    field: str,
    value: object,
    data: st.DataObject,
) -> None:
    blob = case[0]
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + length])
    tensors = [name for name in header if name != "__metadata__"]
    if field == "__metadata__":
        header["__metadata__"] = value
    elif tensors:
        name = data.draw(st.sampled_from(tensors))
        if field == "entry":
            header[name] = value
        else:
            header[name][field] = value
    rebuilt = raw_file(json.dumps(header).encode(), blob[8 + length :])
    message = refusal(lambda: parse_blob(rebuilt))
    assert message is None or message.startswith(f"{NAME}: "), message


@settings(max_examples=200, deadline=None)
@given(json_values, st.data())
def test_hostile_manifests_raise_only_invalid_model(value: object, data: st.DataObject) -> None:
    manifest = good_manifest()
    target = data.draw(st.sampled_from(["root", "header_size", "metadata", "tensors", "t0", "t0f"]))
    if target == "root":
        candidate: object = value
    elif target == "t0":
        manifest["tensors"][0] = value
        candidate = manifest
    elif target == "t0f":
        key = data.draw(st.sampled_from(["name", "dtype", "shape", "offsets", "x"]))
        manifest["tensors"][0][key] = value
        candidate = manifest
    else:
        manifest[target] = value
        candidate = manifest
    message = refusal(lambda: SafetensorsHeader.from_manifest(candidate, display_name=NAME))
    assert message is None or message.startswith(f"{NAME}: "), message
