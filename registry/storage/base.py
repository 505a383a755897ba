"""The storage `Driver` contract: write-once named objects, ranged reads, listing, delete.

Drivers know nothing of digests, encryption or the catalog: they store opaque bytes under names that
the blob store (`registry.blobstore`) chooses. Every driver must pass the conformance suite in
`registry.testing.driver_suite`.

Object names are relative, '/'-separated paths of segments matching `[a-z0-9][a-z0-9._-]*`
(at most 512 characters): no empty segment, no `.` or `..`, no absolute path, no upper case.
"""

from __future__ import annotations

import mmap
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from registry.errors import InvalidInputError

_SEGMENT = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_NAME_LENGTH = 512


@dataclass(frozen=True)
class ObjectInfo:
    """What a driver knows of one stored object.

    `size` is in bytes; `modified` is a timezone-aware UTC datetime (when the object was written).
    """

    name: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do beyond the base contract."""

    object_lock: bool = False
    legal_hold: bool = False
    versioned: bool = False


@dataclass(frozen=True)
class S3Location:
    """Where an S3 driver's objects live: a bucket (and key prefix) at an endpoint. Here, not in
    `storage.s3`, so that reading settings never imports boto3."""

    bucket: str
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    prefix: str = ""


def validate_object_name(name: str) -> str:
    """Return `name` if it is a valid object name, else raise `InvalidInputError`."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"invalid object name {name!r}: empty or too long")
    for segment in name.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise InvalidInputError(f"invalid object name {name!r}: bad segment {segment!r}")
    return name


def validate_prefix(prefix: str) -> str:
    """A listing prefix is empty or a valid object name optionally ending with '/'."""
    if prefix:
        validate_object_name(prefix.rstrip("/"))
    return prefix


class Driver(ABC):
    """A flat namespace of write-once objects.

    Contracts, per method, that every implementation keeps (and the conformance suite checks):
    names are validated with `validate_object_name` before any I/O; a failed or interrupted write
    leaves no object visible under its name; an object, once visible, changes only through
    `replace` (repair of a damaged copy).
    """

    capabilities = Capabilities()
    # Requests cross a network and may hang: they run under deadlines, and reads of several
    # regions are hedged. A local directory's requests are system calls that answer or fail.
    latency_bound = False

    @abstractmethod
    def put_if_absent(self, name: str, chunks: Iterable[bytes | bytearray | memoryview]) -> bool:
        """Store the concatenation of `chunks` under `name` unless an object of that name exists.

        Returns True when this call created the object, False when one already existed (its
        content is left untouched). The object becomes visible atomically, complete and durable
        (fsync or the store's own guarantee) or not at all: if `chunks` raises, the exception
        propagates and nothing is stored. Concurrent calls for one name: exactly one returns True.
        """

    @abstractmethod
    def replace(self, name: str, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Store the concatenation of `chunks` under `name`, whether or not it exists: the one
        way to change an object, kept for repairing a damaged copy from a good replica.

        Atomic and durable like `put_if_absent`: readers see the old object or the new one, and
        if `chunks` raises nothing changes. A versioned store keeps the old version (and its
        lock) and makes the new one the object.
        """

    @abstractmethod
    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes from `offset` (to the end when `length` is None).

        A range that runs past the end is cut at the end; an offset past the end gives b"".
        Raises `InvalidInputError` for a negative `offset` or `length` (checked before any I/O)
        and `NotFoundError` when the object does not exist.
        """

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """Return the object's info, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose name starts with `prefix`, in name order.

        `prefix` is a plain string prefix ("a/b" matches "a/b/c" and "a/bc"), checked with
        `validate_prefix` when `list` is called, not when iteration starts. "Name order" is
        Python's `str` ordering of the full names, so "a-b" comes before "a/b".
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete one object. Raises `NotFoundError` when it does not exist."""

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        """Fill `buffer` with the object's bytes from `offset`; return how many were read (fewer
        at the end of the object). Raises `NotFoundError` when the object does not exist.

        The default copies from `get_range`; drivers that can read into caller memory (the local
        driver with `preadv`) override it so hot paths allocate nothing per read.
        """
        data = self.get_range(name, offset, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def mapping(self, name: str) -> mmap.mmap | None:
        """A read-only memory mapping of the object, for readers that take its bytes in place,
        or None when this driver has none (the default: only local files map). Raises
        `NotFoundError` when the object does not exist."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections or handles; the driver is not used afterwards."""
