"""BLAKE3 digests: the `blake3:<64 hex>` text form, hashing of files and bytes, keyed object ids.

A digest is always the BLAKE3-256 hash of plaintext content; it is the identity of a blob and (over
the canonical manifest) of a model version.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from os import PathLike

import blake3

PREFIX = "blake3:"
_DIGEST = re.compile(r"blake3:[0-9a-f]{64}")
DIGEST_SIZE = 32


def format_digest(raw: bytes) -> str:
    """`blake3:<hex>` for a 32-byte raw digest."""
    if len(raw) != DIGEST_SIZE:
        raise ValueError(f"a BLAKE3 digest has {DIGEST_SIZE} bytes, got {len(raw)}")
    return PREFIX + raw.hex()


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def digest_bytes(digest: str) -> bytes:
    """The 32 raw bytes of a `blake3:<hex>` digest; ValueError when malformed."""
    if not is_digest(digest):
        raise ValueError(f"not a blake3 digest: {digest!r}")
    return bytes.fromhex(digest[len(PREFIX) :])


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return format_digest(blake3.blake3(data).digest())


HASH_BUFFER = 16 * 1024 * 1024


def hash_file(
    path: str | PathLike[str],
    *,
    on_progress: Callable[[int], None] | None = None,
    starts_with: bytes = b"",
) -> str:
    """Digest of a file's content, hashed on every core (BLAKE3 is a tree).

    Read through one reused 16 MiB buffer rather than memory-mapped: mapped pages count in the
    resident set, so an mmap of a 10 GB shard would show 10 GB of RSS. With `starts_with`, the
    file must begin with those bytes (ValueError otherwise): what was validated is what is hashed.
    """
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buffer = bytearray(HASH_BUFFER)
    view = memoryview(buffer)
    position = 0
    with open(path, "rb", buffering=0) as source:
        while count := source.readinto(buffer):
            if position < len(starts_with):
                expected = starts_with[position : position + count]
                if view[: len(expected)] != expected:
                    raise ValueError(f"{path} changed after it was validated")
            hasher.update(view[:count])
            position += count
            if on_progress is not None:
                on_progress(count)
    if position < len(starts_with):
        raise ValueError(f"{path} changed after it was validated")
    return format_digest(hasher.digest())


class Hasher:
    """Incremental digest; `update` releases the GIL, so it runs beside decryption threads."""

    def __init__(self) -> None:
        self._hasher = blake3.blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)

    def digest(self) -> str:
        return format_digest(self._hasher.digest())


def keyed_id(key: bytes, domain: str, digest: str) -> str:
    """Keyed BLAKE3 of `domain` and a digest: an object id that reveals nothing of the content
    to anyone without the registry's naming key, and differs per domain (blob, manifest)."""
    hasher = blake3.blake3(key=key)
    hasher.update(domain.encode("ascii") + b"\x00" + digest_bytes(digest))
    return str(hasher.hexdigest())
