"""`MemoryDriver`: the storage `Driver` contract in a thread-safe in-process dict.

For tests, and later as a cache layer in front of a slower driver. Nothing survives the process.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from registry.errors import InvalidInputError, NotFoundError
from registry.storage.base import Driver, ObjectInfo, validate_object_name, validate_prefix


class MemoryDriver(Driver):
    """Objects as immutable `bytes` in a dict guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, datetime]] = {}

    def __repr__(self) -> str:
        with self._lock:
            count = len(self._objects)
        return f"<MemoryDriver with {count} objects>"

    def put_if_absent(self, name: str, chunks: Iterable[bytes | bytearray | memoryview]) -> bool:
        validate_object_name(name)
        with self._lock:
            # Skip gathering a large object that is already stored; the check below decides.
            if name in self._objects:
                return False
        # Gathered outside the lock (the iterable may be slow) and joined into new `bytes`, so
        # a caller mutating its bytearray afterwards cannot change the stored object, and an
        # iterable that raises midway leaves nothing behind.
        data = b"".join(chunks)
        with self._lock:
            if name in self._objects:
                return False
            self._objects[name] = (data, datetime.now(UTC))
            return True

    def replace(self, name: str, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        validate_object_name(name)
        data = b"".join(chunks)
        with self._lock:
            self._objects[name] = (data, datetime.now(UTC))

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        validate_object_name(name)
        if offset < 0:
            raise InvalidInputError(f"negative offset {offset}")
        if length is not None and length < 0:
            raise InvalidInputError(f"negative length {length}")
        with self._lock:
            entry = self._objects.get(name)
        if entry is None:
            raise NotFoundError(f"object {name!r} not found")
        data = entry[0]
        return data[offset:] if length is None else data[offset : offset + length]

    def stat(self, name: str) -> ObjectInfo | None:
        validate_object_name(name)
        with self._lock:
            entry = self._objects.get(name)
        if entry is None:
            return None
        return ObjectInfo(name, len(entry[0]), entry[1])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # A snapshot, so callers may delete or put while iterating.
        with self._lock:
            matching: builtins.list[ObjectInfo] = [
                ObjectInfo(name, len(data), modified)
                for name, (data, modified) in self._objects.items()
                if name.startswith(prefix)
            ]
        matching.sort(key=lambda info: info.name)
        return iter(matching)

    def delete(self, name: str) -> None:
        validate_object_name(name)
        with self._lock:
            if self._objects.pop(name, None) is None:
                raise NotFoundError(f"object {name!r} not found")
