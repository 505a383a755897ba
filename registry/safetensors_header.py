"""Parse and validate safetensors headers and sharded index files, trusting nothing in them.

This module's one job: turn the untrusted bytes of a `.safetensors` header (or of a
`*.safetensors.index.json` file, or of a manifest entry read back from storage) into a validated
`SafetensorsHeader`, or refuse with an `InvalidModelError` whose message names the file and says
what is wrong. It never reads tensor data.

The format: an 8-byte little-endian unsigned header length N, then N bytes of UTF-8 JSON, then the
data region. The JSON maps tensor names to `{"dtype", "shape", "data_offsets"}` (offsets relative to
the data region) plus an optional `"__metadata__"` object of string to string.

Where this is stricter than the safetensors 0.8 loader, on purpose (a registry must not store a
file that some reader could interpret differently from another):

* The header must start with `{` and may only be padded with trailing spaces (0x20), as the format
  specification says; safetensors 0.8 also accepts leading whitespace.
* Duplicate JSON keys are refused at every level; serde silently keeps the last tensor of a name.
* Tensor entries with keys other than dtype/shape/data_offsets are refused; serde ignores them.
* Tensor names that are empty or contain NUL, or any string with lone surrogates, are refused.
* Rank is capped at `MAX_RANK`, the number of tensors at `MAX_TENSORS`, and every integer must fit
  in an unsigned 64-bit integer (safetensors' `usize`).

Where it follows safetensors 0.8:

* The dtypes are exactly the 22 of the Rust `Dtype` enum (`DTYPE_BITS`), including the sub-byte
  F4/F6 types; a tensor's bit size must be a whole number of bytes.
* A header with no tensors and an empty data region (`{}`, or `{"__metadata__": {...}}`) is valid:
  `safetensors.torch.save({})` writes exactly that and safetensors loads it. A header length of 0 is
  refused (empty JSON), as safetensors refuses it.
* `"__metadata__": null` is accepted and means no metadata.
* Zero-sized tensors may share an offset (safetensors writes them so); other ranges must tile the
  data region exactly: starting at 0, no overlap, no hole, no trailing bytes.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from registry.errors import InvalidInputError, InvalidModelError
from registry.refs import validate_relative_path

MAX_HEADER_SIZE = 100 * 1024 * 1024
"""Same limit as safetensors' MAX_HEADER_SIZE."""
MAX_INDEX_SIZE = MAX_HEADER_SIZE
MAX_TENSORS = 1_000_000
MAX_RANK = 64
_U64_MAX = 2**64 - 1
_LENGTH_PREFIX = 8
_METADATA_KEY = "__metadata__"
_TENSOR_KEYS = ("dtype", "shape", "data_offsets")
_MANIFEST_KEYS = ("header_size", "metadata", "tensors")
_MANIFEST_TENSOR_KEYS = ("name", "dtype", "shape", "offsets")

# The variants of safetensors' Rust `Dtype` enum (0.8), with their size in bits. Packed sub-byte
# types store numel * bits / 8 bytes, so shapes are logical element counts.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header: its dtype, logical shape and byte range in the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header. Build it with `parse_header`, `read_header` or
    `from_manifest`; constructing it directly skips every check."""

    header_size: int
    data_offset: int
    data_size: int
    # A dict cannot be hashed; excluding it keeps the frozen dataclass hashable.
    metadata: dict[str, str] | None = field(hash=False)
    tensors: tuple[TensorEntry, ...]

    @property
    def parameter_count(self) -> int:
        return sum(tensor.numel for tensor in self.tensors)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({tensor.dtype for tensor in self.tensors}))

    def to_manifest(self) -> dict[str, Any]:
        """A JSON-able description (ints and strings only) that `from_manifest` reads back."""
        return {
            "header_size": self.header_size,
            "metadata": None if self.metadata is None else dict(self.metadata),
            "tensors": [
                {
                    "name": tensor.name,
                    "dtype": tensor.dtype,
                    "shape": list(tensor.shape),
                    "offsets": [tensor.begin, tensor.end],
                }
                for tensor in self.tensors
            ],
        }

    @classmethod
    def from_manifest(cls, data: object, *, display_name: str) -> SafetensorsHeader:
        """Rebuild a header from `to_manifest()` output, re-checking every invariant: a stored
        manifest is only as trustworthy as the storage it came from."""
        fail = _Failer(display_name)
        where = "manifest entry"
        if not isinstance(data, dict):
            fail(f"{where} is {_kind(data)}, not an object")
        _check_keys(data, _MANIFEST_KEYS, what=where, fail=fail)
        header_size = data["header_size"]
        # 2 bytes is the smallest header that can hold a JSON object: "{}".
        if not _is_uint(header_size) or not 2 <= header_size <= MAX_HEADER_SIZE:
            fail(f"{where} has header_size {_show(header_size)}; expected 2 to {MAX_HEADER_SIZE}")
        metadata = _metadata(data["metadata"], fail=fail)
        raw_tensors = data["tensors"]
        if not isinstance(raw_tensors, list):
            fail(f"{where} tensors is {_kind(raw_tensors)}, not a list")
        if len(raw_tensors) > MAX_TENSORS:
            fail(f"{where} lists {len(raw_tensors)} tensors; the limit is {MAX_TENSORS}")
        entries: list[TensorEntry] = []
        seen: set[str] = set()
        for position, raw in enumerate(raw_tensors):
            if not isinstance(raw, dict):
                fail(f"{where} tensors[{position}] is {_kind(raw)}, not an object")
            _check_keys(raw, _MANIFEST_TENSOR_KEYS, what=f"{where} tensors[{position}]", fail=fail)
            name = raw["name"]
            if not isinstance(name, str):
                fail(f"{where} tensors[{position}] name is {_kind(name)}, not a string")
            _check_tensor_name(name, fail=fail)
            if name == _METADATA_KEY:
                fail(f"tensor name {_METADATA_KEY!r} is reserved for metadata")
            if name in seen:
                fail(f"tensor {_show(name)} is listed twice")
            seen.add(name)
            entries.append(
                _entry(name, raw["dtype"], raw["shape"], raw["offsets"], "offsets", fail=fail)
            )
        # The data region is exactly what the tensors cover: _check_layout proves they tile it.
        data_size = max((entry.end for entry in entries), default=0)
        return cls(
            header_size=header_size,
            data_offset=_LENGTH_PREFIX + header_size,
            data_size=data_size,
            metadata=metadata,
            tensors=_check_layout(entries, data_size, fail=fail),
        )


def parse_header(header_bytes: bytes, *, file_size: int, display_name: str) -> SafetensorsHeader:
    """Validate the N JSON bytes after the 8-byte length of a file of `file_size` bytes."""
    fail = _Failer(display_name)
    header_size = len(header_bytes)
    _check_header_length(header_size, file_size, fail=fail)
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"header is not valid UTF-8 (bad byte at header offset {exc.start})")
    if not text.startswith("{"):
        fail("header does not start with '{'")
    # Trailing spaces are the format's only padding; json.loads would also let \n, \t, \r pass.
    body = text.rstrip(" ")
    parsed = _load_json(body, what="header", fail=fail)
    if not isinstance(parsed, dict) or not body.endswith("}"):
        fail("header is not a JSON object padded only with trailing spaces")
    metadata = _metadata(parsed.pop(_METADATA_KEY, None), fail=fail)
    if len(parsed) > MAX_TENSORS:
        fail(f"header lists {len(parsed)} tensors; the limit is {MAX_TENSORS}")
    entries: list[TensorEntry] = []
    for name, raw in parsed.items():
        _check_tensor_name(name, fail=fail)
        if not isinstance(raw, dict):
            fail(f"tensor {_show(name)} is {_kind(raw)}, not an object")
        _check_keys(raw, _TENSOR_KEYS, what=f"tensor {_show(name)}", fail=fail)
        entries.append(
            _entry(name, raw["dtype"], raw["shape"], raw["data_offsets"], "data_offsets", fail=fail)
        )
    data_size = file_size - _LENGTH_PREFIX - header_size
    return SafetensorsHeader(
        header_size=header_size,
        data_offset=_LENGTH_PREFIX + header_size,
        data_size=data_size,
        metadata=metadata,
        tensors=_check_layout(entries, data_size, fail=fail),
    )


def read_header(path: Path, *, display_name: str) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at `path`.

    The claimed length is checked against `MAX_HEADER_SIZE` and the file size before it is read, so
    a hostile length never allocates. OSError (missing or unreadable file) propagates unchanged.
    """
    fail = _Failer(display_name)
    # O_NONBLOCK: opening a FIFO planted in a model directory must not hang waiting for a writer.
    nonblock = getattr(os, "O_NONBLOCK", 0)
    with open(path, "rb", opener=lambda name, flags: os.open(name, flags | nonblock)) as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            fail("not a regular file")
        # fstat of the open file, not of the path: the size belongs to the bytes we read.
        file_size = status.st_size
        if file_size < _LENGTH_PREFIX:
            _check_header_length(0, file_size, fail=fail)
        prefix = handle.read(_LENGTH_PREFIX)
        if len(prefix) != _LENGTH_PREFIX:
            fail("file shrank while its header was being read")
        header_size = int.from_bytes(prefix, "little")
        _check_header_length(header_size, file_size, fail=fail)
        header_bytes = handle.read(header_size)
    if len(header_bytes) != header_size:
        fail("file shrank while its header was being read")
    return parse_header(header_bytes, file_size=file_size, display_name=display_name)


def validate_index(
    data: bytes,
    *,
    display_name: str,
    headers: Mapping[str, SafetensorsHeader],
    base_dir: str = "",
) -> dict[str, str]:
    """Validate a `*.safetensors.index.json` file and return its weight_map as written.

    `headers` holds the validated headers of the version's safetensors files, keyed by their path
    relative to the version root; `base_dir` is the index file's directory in the same terms. Every
    weight_map file must be a safe relative path naming one of those files, and every tensor must
    exist in the shard it is mapped to. Top-level keys other than weight_map and metadata are
    allowed (they are not interpreted), metadata's content is not checked (its total_size is
    advisory and often wrong in the wild).
    """
    fail = _Failer(display_name)
    if len(data) > MAX_INDEX_SIZE:
        fail(f"index is {len(data)} bytes; the limit is {MAX_INDEX_SIZE}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"index is not valid UTF-8 (bad byte at offset {exc.start})")
    parsed = _load_json(text, what="index", fail=fail)
    if not isinstance(parsed, dict):
        fail(f"index is {_kind(parsed)}, not a JSON object")
    if "weight_map" not in parsed:
        fail("index has no 'weight_map'")
    weight_map = parsed["weight_map"]
    if not isinstance(weight_map, dict):
        fail(f"index weight_map is {_kind(weight_map)}, not an object")
    if "metadata" in parsed and not isinstance(parsed["metadata"], dict):
        fail(f"index metadata is {_kind(parsed['metadata'])}, not an object")
    if len(weight_map) > MAX_TENSORS:
        fail(f"index weight_map lists {len(weight_map)} tensors; the limit is {MAX_TENSORS}")
    if base_dir:
        try:
            validate_relative_path(base_dir, what="index directory")
        except InvalidInputError as exc:
            fail(exc.message)
    names_by_file: dict[str, frozenset[str]] = {}
    result: dict[str, str] = {}
    for tensor_name, file_name in weight_map.items():
        _check_tensor_name(tensor_name, fail=fail)
        if not isinstance(file_name, str):
            fail(f"weight_map maps tensor {_show(tensor_name)} to {_kind(file_name)}, not a string")
        try:
            validate_relative_path(file_name, what="weight_map file name")
        except InvalidInputError as exc:
            fail(exc.message)
        key = posixpath.join(base_dir, file_name) if base_dir else file_name
        header = headers.get(key)
        if header is None:
            fail(
                f"weight_map maps tensor {_show(tensor_name)} to {_show(file_name)}, "
                "which is not a safetensors file of this version"
            )
        names = names_by_file.get(key)
        if names is None:
            names = names_by_file[key] = frozenset(tensor.name for tensor in header.tensors)
        if tensor_name not in names:
            fail(
                f"weight_map maps tensor {_show(tensor_name)} to {_show(file_name)}, "
                "which has no such tensor"
            )
        result[tensor_name] = file_name
    return result


class _Failer:
    """Raises InvalidModelError prefixed with the file's name, so no message can forget it."""

    def __init__(self, display_name: str) -> None:
        self.display_name = display_name

    def __call__(self, problem: str) -> NoReturn:
        raise InvalidModelError(f"{self.display_name}: {problem}")


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> NoReturn:
    # Python's json accepts NaN/Infinity, which are not JSON and which serde refuses.
    raise ValueError(f"{name} is not valid JSON")


def _load_json(text: str, *, what: str, fail: _Failer) -> object:
    try:
        return json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant
        )
    except _DuplicateKeyError as exc:
        fail(f"{what} has the key {_show(exc.key)} twice")
    # ValueError covers JSONDecodeError and ints over Python's digit limit; RecursionError covers
    # deeply nested arrays, which a 100 MiB header can easily hold.
    except (ValueError, RecursionError) as exc:
        fail(f"{what} is not valid JSON: {_truncate(str(exc))}")


def _check_header_length(header_size: int, file_size: int, *, fail: _Failer) -> None:
    if file_size < _LENGTH_PREFIX:
        fail(f"file is {file_size} bytes, shorter than the 8-byte header length")
    if header_size == 0:
        fail("header length is 0")
    if header_size > MAX_HEADER_SIZE:
        fail(f"header length {header_size} exceeds the limit of {MAX_HEADER_SIZE} bytes")
    if _LENGTH_PREFIX + header_size > file_size:
        fail(f"header length {header_size} runs past the end of the file ({file_size} bytes)")


def _check_keys(
    raw: Mapping[str, object], expected: tuple[str, ...], *, what: str, fail: _Failer
) -> None:
    missing = [key for key in expected if key not in raw]
    if missing:
        fail(f"{what} is missing {', '.join(map(repr, missing))}")
    extra = [key for key in raw if key not in expected]
    if extra:
        fail(f"{what} has unexpected key(s) {', '.join(_show(key) for key in extra[:5])}")


def _check_text(value: str, *, what: str, fail: _Failer) -> None:
    # A JSON "\ud800" escape yields a lone surrogate that cannot be written back as UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{what} {_show(value)} contains a lone surrogate")


def _check_tensor_name(name: str, *, fail: _Failer) -> None:
    if not name:
        fail("a tensor name is empty")
    if "\x00" in name:
        fail(f"tensor name {_show(name)} contains NUL")
    _check_text(name, what="tensor name", fail=fail)


def _metadata(raw: object, *, fail: _Failer) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        fail(f"{_METADATA_KEY} is {_kind(raw)}, not an object of strings")
    for key, value in raw.items():
        if not isinstance(key, str):
            fail(f"{_METADATA_KEY} has a key that is {_kind(key)}, not a string")
        if not isinstance(value, str):
            fail(f"{_METADATA_KEY} value of {_show(key)} is {_kind(value)}, not a string")
        _check_text(key, what=f"{_METADATA_KEY} key", fail=fail)
        _check_text(value, what=f"{_METADATA_KEY} value of {_show(key)}", fail=fail)
    return dict(raw)


def _entry(
    name: str, dtype: object, shape: object, offsets: object, offsets_key: str, *, fail: _Failer
) -> TensorEntry:
    what = f"tensor {_show(name)}"
    if not isinstance(dtype, str):
        fail(f"{what} dtype is {_kind(dtype)}, not a string")
    bits = DTYPE_BITS.get(dtype)
    if bits is None:
        fail(f"{what} has unknown dtype {_show(dtype)}")
    if not isinstance(shape, list):
        fail(f"{what} shape is {_kind(shape)}, not a list")
    if len(shape) > MAX_RANK:
        fail(f"{what} has {len(shape)} dimensions; the limit is {MAX_RANK}")
    for dim in shape:
        if not _is_uint(dim):
            fail(f"{what} shape has {_show(dim)}, not an unsigned 64-bit integer")
    if not isinstance(offsets, list) or len(offsets) != 2:
        fail(f"{what} {offsets_key} is {_show(offsets)}, not [begin, end]")
    begin, end = offsets
    if not _is_uint(begin) or not _is_uint(end):
        fail(f"{what} {offsets_key} {_show(offsets)} are not unsigned 64-bit integers")
    if begin > end:
        fail(f"{what} {offsets_key} [{begin}, {end}] end before they begin")
    shape_text = f"shape {list(shape)} of {dtype}"
    total_bits = math.prod(shape) * bits
    if total_bits % 8:
        fail(f"{what} has {shape_text} = {total_bits} bits, not a whole number of bytes")
    if total_bits // 8 != end - begin:
        fail(
            f"{what} has {shape_text} = {total_bits // 8} bytes "
            f"but its {offsets_key} span {end - begin}"
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(
    entries: Iterable[TensorEntry], data_size: int, *, fail: _Failer
) -> tuple[TensorEntry, ...]:
    """Prove the tensors tile [0, data_size) exactly and return them in offset order."""
    ordered = sorted(entries, key=lambda tensor: (tensor.begin, tensor.end, tensor.name))
    for tensor in ordered:
        if tensor.end > data_size:
            fail(
                f"tensor {_show(tensor.name)} data_offsets [{tensor.begin}, {tensor.end}] run past "
                f"the end of the data region ({data_size} bytes)"
            )
    cursor = 0
    previous: TensorEntry | None = None
    for tensor in ordered:
        if tensor.begin < cursor:
            assert previous is not None  # cursor > 0 only after a tensor
            fail(
                f"tensor {_show(tensor.name)} data_offsets [{tensor.begin}, {tensor.end}] overlap "
                f"tensor {_show(previous.name)} [{previous.begin}, {previous.end}]"
            )
        if tensor.begin > cursor:
            fail(
                f"data region bytes [{cursor}, {tensor.begin}) before tensor {_show(tensor.name)} "
                "belong to no tensor"
            )
        cursor = tensor.end
        previous = tensor
    if cursor != data_size:
        fail(f"{data_size - cursor} trailing bytes after the last tensor belong to no tensor")
    return tuple(ordered)


def _is_uint(value: object) -> bool:
    # type() rather than isinstance(): bool is an int subclass and True must not pass as 1.
    return type(value) is int and 0 <= value <= _U64_MAX


def _kind(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def _truncate(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _show(value: object) -> str:
    """A short repr() of a value from the file: names can be megabytes long, lists millions of
    items deep, and repr() of an int over 4300 digits raises ValueError."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
    if type(value) is int and value.bit_length() > 64:
        return "an integer over 64 bits"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, list) and len(value) <= 8:
        return _truncate("[" + ", ".join(_show(item) for item in value) + "]")
    return _kind(value)
