"""A local cache of sealed ciphertext for loads from a registry server, so that a restarted
serving process does not download its model again.

It holds only what the stores hold, sealed bytes, and only whole objects whose load verified
(every chunk authenticated, the file's BLAKE3 matched): a file is written beside the final name
while it downloads and renamed into place once verified. What it serves is decrypted and
verified again like any other read; an entry that fails is dropped and read from the server. It
is bounded in size, least recently used first out. Entries are named by a keyed hash of the
digest (the key is the cache's own), so a listing does not say which content it holds.

A cache can also be filled ahead of any load (`Cache.fill`: a storage initializer warms one for
a serving container), with the same guarantee: an object is admitted only once its sealed bytes
decrypted and hashed to its digest, in memory. A cache that cannot be written (a read-only
mount, as KServe mounts the model folder into the serving container) still serves its entries:
misses are then read upstream without keeping a copy.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import blake3

from registry.crypto import sealed
from registry.digest import digest_bytes
from registry.errors import IntegrityError, InvalidInputError
from registry.fileio import pread_into

ENV_CACHE_DIR = "MODEL_REGISTRY_CACHE_DIR"
ENV_CACHE_SIZE = "MODEL_REGISTRY_CACHE_SIZE"
DEFAULT_SIZE = 20 * 1024**3
_SUFFIX = ".sealed"
_PARTIAL = ".partial"
STALE_PARTIAL = 3600.0  # seconds: a download left by a process that died


class Upstream(Protocol):
    def read_into(self, offset: int, buffer: memoryview, /) -> int: ...

    def view(self, offset: int, length: int, /) -> memoryview | None: ...

    def damaged(self, offset: int, error: IntegrityError, /) -> bool: ...

    def regions_used(self) -> list[str]: ...


def parse_size(text: str) -> int:
    """`20G`, `512M`, `1T` or a number of bytes."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    if not number.isdigit():
        raise InvalidInputError(f"invalid size {text!r}", hint="e.g. 20G, 512M or 1073741824")
    return int(number) * scale


class Cache:
    """A directory of verified sealed objects, at most `max_bytes` in all."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_SIZE) -> None:
        if max_bytes < 0:
            raise InvalidInputError("the cache size cannot be negative")
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file = root / "naming.key"
        try:
            self._key = key_file.read_bytes()
        except FileNotFoundError:
            pending = root / f".naming.key.{uuid.uuid4().hex}"
            pending.write_bytes(secrets.token_bytes(32))
            pending.chmod(0o600)
            with contextlib.suppress(FileExistsError):
                os.link(pending, key_file)  # first writer wins, racing processes agree
            pending.unlink()
            self._key = key_file.read_bytes()
        if len(self._key) != 32:
            raise InvalidInputError(f"{key_file} is not a cache key", hint=f"remove {root}")
        self._sweep()

    def _sweep(self) -> None:
        """Remove downloads that a process left behind when it died (they count in no bound)."""
        now = time.time()
        for path in self.root.glob(f".*{_PARTIAL}"):
            with contextlib.suppress(OSError):  # gone already, or a read-only cache
                if now - path.stat().st_mtime > STALE_PARTIAL:
                    path.unlink()

    @classmethod
    def default(cls) -> Cache:
        """MODEL_REGISTRY_CACHE_DIR (default XDG_CACHE_HOME/model-registry/blobs), bounded by
        MODEL_REGISTRY_CACHE_SIZE (default 20G)."""
        base = os.environ.get(ENV_CACHE_DIR)
        if base:
            root = Path(base).expanduser()
        else:
            cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
            root = cache_home / "model-registry" / "blobs"
        size = os.environ.get(ENV_CACHE_SIZE)
        return cls(root, max_bytes=parse_size(size) if size else DEFAULT_SIZE)

    def path_of(self, digest: str) -> Path:
        name = blake3.blake3(digest_bytes(digest), key=self._key).hexdigest()
        return self.root / (name + _SUFFIX)

    def reader(self, digest: str, upstream: Upstream) -> CachedReader:
        return CachedReader(self, digest, upstream)

    def entries(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.name.endswith(_SUFFIX)]

    def size(self) -> int:
        total = 0
        for path in self.entries():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def admit(self, partial: Path, final: Path) -> bool:
        """Move a verified download into place, then evict least recently used entries until
        the cache fits its bound (the new entry too, if it alone is larger)."""
        with self._lock:
            os.replace(partial, final)
            aged = []
            for path in self.entries():
                with contextlib.suppress(FileNotFoundError):
                    info = path.stat()
                    aged.append((info.st_mtime, info.st_size, path))
            total = sum(size for _t, size, _p in aged)
            for _mtime, size, path in sorted(aged):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
            return final.exists()

    def drop(self, path: Path) -> None:
        with contextlib.suppress(OSError):  # gone already, or a read-only cache
            path.unlink()

    def fill(
        self,
        digest: str,
        data_key: bytes,
        read_range: Callable[[int, int], bytes],
        *,
        size: int,
        what: str = "blob",
    ) -> bool:
        """Keep a verified copy of one sealed object without loading it (a cache warmed ahead of
        the loads that will read it). `read_range(offset, length)` gives the object's sealed
        bytes (fewer at its end); they are written beside the entry's final name as they arrive
        and decrypted and hashed in memory, chunk by chunk (every chunk authenticated, the whole
        plaintext of `size` bytes hashed against `digest`; no plaintext is written anywhere),
        and the copy is admitted only once all of that passed. An entry the cache holds already
        is checked the same way, from its own bytes: kept (False), or replaced when it fails
        (True). `IntegrityError` when the upstream's bytes fail; nothing is admitted then."""
        final = self.path_of(digest)
        try:
            entry = os.open(final, os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                _check(lambda offset, n: os.pread(entry, n, offset), data_key, digest, size, what)
                with contextlib.suppress(OSError):
                    os.utime(final)
                return False
            except IntegrityError:
                self.drop(final)  # damaged: fetched again below
            finally:
                os.close(entry)
        partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}{_PARTIAL}")
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        spans: list[tuple[int, int]] = []
        lock = threading.Lock()

        def keep(offset: int, length: int) -> bytes:  # on the decrypting threads
            data = read_range(offset, length)
            os.pwrite(fd, data, offset)
            with lock:
                spans.append((offset, offset + len(data)))
            return data

        try:
            _check(keep, data_key, digest, size, what)
            os.close(fd)
            fd = -1
            covered = 0
            for start, end in sorted(spans):
                if start > covered:
                    break
                covered = max(covered, end)
            if covered != os.path.getsize(partial):
                raise IntegrityError(f"{what}: the sealed object was not read whole", path=what)
            if not self.admit(partial, final):
                raise InvalidInputError(
                    f"{what}: the cache's bound ({self.max_bytes} bytes) is smaller than the "
                    "object",
                    hint=f"raise {ENV_CACHE_SIZE}",
                )
            return True
        finally:
            if fd >= 0:
                os.close(fd)
            partial.unlink(missing_ok=True)


class CachedReader:
    """Reads one object from the cache when it holds it, else from upstream while keeping a
    copy; `verified()` admits the copy once the load has verified the whole file. Safe for
    the loader's worker threads: a damaged cache entry switches the reader to upstream once,
    whichever workers notice, and the ranges read from the entry are read again from upstream."""

    def __init__(self, cache: Cache, digest: str, upstream: Upstream) -> None:
        self.cache, self.digest, self.upstream = cache, digest, upstream
        self.final = cache.path_of(digest)
        self.hit = False  # serving from the cache entry
        self.was_hit = False  # it was, when the load started
        self._lock = threading.Lock()
        self._entry_fd: int | None = None  # kept open until close(): workers may still read
        self._partial_fd: int | None = None
        self._partial: Path | None = None
        self._spans: list[tuple[int, int]] = []
        self._from_entry: set[int] = set()
        self._mapped: mmap.mmap | None = None  # the entry, once a range was taken in place
        try:
            self._entry_fd = os.open(self.final, os.O_RDONLY)
            self.hit = self.was_hit = True
            with contextlib.suppress(OSError):  # a read-only cache serves its entries all the same
                os.utime(self.final)  # least recently used goes first
        except FileNotFoundError:
            self._start_copy()

    def _start_copy(self) -> None:
        if self.cache.max_bytes == 0 or self._partial is not None:
            return
        partial = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex}{_PARTIAL}")
        try:
            self._partial_fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return  # a read-only cache: read upstream, keep no copy
        self._partial = partial

    def read_into(self, offset: int, buffer: memoryview, /) -> int:
        with self._lock:
            hit, entry, partial = self.hit, self._entry_fd, self._partial_fd
            if hit:
                self._from_entry.add(offset)
        if hit and entry is not None:
            return pread_into(entry, offset, buffer)
        got = self.upstream.read_into(offset, buffer)
        if partial is not None and got:
            os.pwrite(partial, buffer[:got], offset)
            with self._lock:
                self._spans.append((offset, offset + got))
        return got

    def view(self, offset: int, length: int, /) -> memoryview | None:
        """A range of a cache hit in place (the entry mapped), else None (read it)."""
        with self._lock:
            if not self.hit or self._entry_fd is None:
                return None
            if self._mapped is None:
                try:
                    self._mapped = mmap.mmap(self._entry_fd, 0, prot=mmap.PROT_READ)
                except (OSError, ValueError):
                    return None
            self._from_entry.add(offset)
            return memoryview(self._mapped)[offset : offset + length]

    def damaged(self, offset: int, error: IntegrityError, /) -> bool:
        with self._lock:
            if offset in self._from_entry:
                self._from_entry.discard(offset)
                if self.hit:
                    # A damaged entry: forget it, read from upstream from now on (and copy).
                    self.hit = False
                    self.cache.drop(self.final)
                    self._start_copy()
                return True
        return self.upstream.damaged(offset, error)

    def regions_used(self) -> list[str]:
        if self.hit:
            return ["cache"]
        return (["cache"] if self._from_entry else []) + self.upstream.regions_used()

    def verified(self, sealed_size: int) -> None:
        """The whole file was read and verified: keep the copy if it covers the object."""
        with self._lock:
            partial, spans = self._partial, sorted(self._spans)
            if self.hit or partial is None or self._partial_fd is None:
                return
            os.close(self._partial_fd)
            self._partial_fd = None
        covered = 0
        for start, end in spans:
            if start > covered:
                break
            covered = max(covered, end)
        if covered == sealed_size and os.path.getsize(partial) == sealed_size:
            self.cache.admit(partial, self.final)
        self._discard()

    def _discard(self) -> None:
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)
            self._partial = None

    def close(self) -> None:
        with self._lock:
            for fd in (self._entry_fd, self._partial_fd):
                if fd is not None:
                    os.close(fd)
            self._entry_fd = self._partial_fd = None
            mapped, self._mapped = self._mapped, None
        if mapped is not None:
            with contextlib.suppress(BufferError):  # a view still alive: unmapped when it goes
                mapped.close()
        self._discard()


def _check(
    read_range: Callable[[int, int], bytes], data_key: bytes, digest: str, size: int, what: str
) -> None:
    """Decrypt and hash a whole sealed object in memory, dropping its plaintext chunk by chunk;
    `IntegrityError` unless every chunk authenticates and the plaintext matches `digest`."""
    for _chunk in sealed.unseal(read_range, data_key, digest, expected_size=size, what=what):
        pass
