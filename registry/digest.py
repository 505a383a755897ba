"""BLAKE3 digests: the `blake3:<64 hex>` text form, hashing of files and bytes, chunk roots,
keyed object ids.

A digest is always the BLAKE3-256 hash of plaintext content; it is the identity of a blob and (over
the canonical manifest) of a model version. A chunk root (docs/format.md, manifest v2) is the
digest of a file's per-chunk digests: readers that decrypt chunks in parallel hash each chunk in
the thread that decrypted it, while it is in that core's cache, and compare one root at the end.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike

import blake3

from registry.fileio import read_into

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
# Bounds of a chunk size, of sealed chunks and chunk roots alike (docs/format.md). A reader
# allocates a chunk-sized buffer: a hostile header must not make it allocate gigabytes.
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 16 * 1024 * 1024
# Domain separation: a chunk root can never equal the plain digest of any content.
CHUNK_ROOT_CONTEXT = "model-registry 2026-12-06 chunk root v1"


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks of a file of `size` bytes (an empty file is one empty chunk, as sealed)."""
    return max(1, -(-size // chunk_size))


def hash_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """The raw BLAKE3 digest of one chunk (releases the GIL)."""
    return blake3.blake3(data).digest()


def chunk_root(digests: bytes | bytearray | memoryview, *, chunk_size: int, size: int) -> str:
    """The root of a file's chunk digests: BLAKE3 in its own key-derivation context over
    uint64 chunk size || uint64 file size || the raw digest of each chunk, in order. The sizes
    are bound so that no other cut of the same bytes has the same root."""
    if len(digests) != DIGEST_SIZE * chunk_count(size, chunk_size):
        raise ValueError(f"{len(digests)} bytes of chunk digests for a file of {size} bytes")
    hasher = blake3.blake3(derive_key_context=CHUNK_ROOT_CONTEXT)
    hasher.update(struct.pack(">QQ", chunk_size, size))
    hasher.update(digests)
    return format_digest(hasher.digest())


@dataclass(frozen=True)
class FileDigests:
    """A file's digest and the root of its chunk digests at `chunk_size`."""

    digest: str
    chunk_size: int
    chunk_root: str
    # The whole file's SHA-256 (hex), taken in the same read: what OpenSSF model signatures
    # list, since their stock verifier hashes with SHA-256 only (docs/provenance.md).
    sha256: str = ""


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
    _read_file(path, starts_with, HASH_BUFFER, hasher.update, on_progress)
    return format_digest(hasher.digest())


def hash_file_chunks(
    path: str | PathLike[str],
    *,
    chunk_size: int,
    on_progress: Callable[[int], None] | None = None,
    starts_with: bytes = b"",
) -> FileDigests:
    """A file's digest, chunk root and SHA-256 in one read (see `hash_file` and `FileHasher`)."""
    buffer_size = chunk_size * max(1, HASH_BUFFER // chunk_size)
    with FileHasher(chunk_size=chunk_size) as hasher:
        _read_file(path, starts_with, buffer_size, hasher.update, on_progress)
        return hasher.result()


class FileHasher:
    """A file's digest, chunk root and SHA-256, taken from its bytes in order: the chunks of each
    buffer are hashed on a thread per core, and SHA-256 on one more, while the whole-file
    hasher takes the same buffer. Every buffer but the last must hold whole chunks."""

    def __init__(self, *, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self._sha = hashlib.sha256()
        self._digests = bytearray()
        self._pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="hash")

    def __enter__(self) -> FileHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()

    def update(self, view: memoryview) -> None:
        if self.size % self.chunk_size:
            raise ValueError("only the last buffer of a file may end inside a chunk")
        # SHA-256 is serial and releases the GIL: it runs beside the BLAKE3 work, and is
        # waited for before the caller reuses the buffer.
        whole = self._pool.submit(self._sha.update, view)
        size = self.chunk_size
        pieces = [view[at : at + size] for at in range(0, len(view), size)]
        chunks = self._pool.map(hash_chunk, pieces)
        self._hasher.update(view)
        for raw in chunks:
            self._digests.extend(raw)
        whole.result()
        self.size += len(view)

    def result(self) -> FileDigests:
        digests = self._digests if self.size else bytearray(hash_chunk(b""))
        return FileDigests(
            format_digest(self._hasher.digest()),
            self.chunk_size,
            chunk_root(digests, chunk_size=self.chunk_size, size=self.size),
            self._sha.hexdigest(),
        )


def _read_file(
    path: str | PathLike[str],
    starts_with: bytes,
    buffer_size: int,
    take: Callable[[memoryview], object],
    on_progress: Callable[[int], None] | None,
) -> int:
    """Hand a file to `take` in full buffers (the last may be short); its size."""
    buffer = bytearray(buffer_size)
    view = memoryview(buffer)
    position = 0
    with open(path, "rb", buffering=0) as source:
        while count := read_into(source, view):
            if position < len(starts_with):
                expected = starts_with[position : position + count]
                if view[: len(expected)] != expected:
                    raise ValueError(f"{path} changed after it was validated")
            take(view[:count])
            position += count
            if on_progress is not None:
                on_progress(count)
    if position < len(starts_with):
        raise ValueError(f"{path} changed after it was validated")
    return position


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
