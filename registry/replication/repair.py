"""A region's copy read back and verified (its ciphertext checksum, else every chunk
authenticated), and a good copy's bytes streamed out authenticated, to be copied to a region that
lacks the object or holds a damaged copy."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import blake3

from registry.crypto import sealed
from registry.crypto.keys import WrappedKey
from registry.digest import Hasher
from registry.errors import (
    IntegrityError,
    KeyAccessError,
    KmsUnreachableError,
    NotFoundError,
    StorageError,
)
from registry.replication.keys import DataKeys
from registry.replication.regions import BAD, PENDING, VERIFIED, Outcome, Region

_RANGE = 8 * 1024 * 1024


class Repairs(DataKeys):
    """Read-back checks of copies, and the authenticated bytes a repair copies."""

    def _check(
        self,
        region: Region,
        kind: str,
        digest: str,
        data_key: bytes | Callable[[], bytes],
        expected: str | None,
        *,
        what: str,
    ) -> Outcome:
        """Read a region's copy back: its ciphertext checksum against `expected` (the fast
        path), else, when none is known or it differs, every chunk authenticated (which gives
        the copy's own checksum). A copy that authenticates is good even when its bytes differ
        from the expected ones (a concurrent first push sealed it, or a push sealed anew while
        the other copies were damaged); only one that does not is bad."""
        if expected is not None:
            try:
                actual = self.checksum(region, kind, digest)
            except NotFoundError:
                return Outcome(region.name, BAD, detail="missing")
            except IntegrityError as error:
                return Outcome(region.name, BAD, detail=str(error))
            except StorageError as error:
                self.mark_down(region, error)
                return Outcome(region.name, PENDING, detail=f"unreachable: {error}")
            if actual == expected:
                return Outcome(region.name, VERIFIED, actual)
        # A key that cannot be had says nothing about the copy: that error is the caller's.
        key = data_key() if callable(data_key) else data_key
        try:
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            for chunk in self._authenticated(region, kind, digest, key, what=what):
                hasher.update(chunk)
            return Outcome(region.name, VERIFIED, "blake3:" + hasher.hexdigest())
        except NotFoundError:
            return Outcome(region.name, BAD, detail="missing")
        except IntegrityError as error:
            return Outcome(region.name, BAD, detail=str(error))
        except KmsUnreachableError as error:
            return Outcome(region.name, PENDING, detail=f"key unavailable: {error}")
        except (StorageError, KeyAccessError) as error:
            self.mark_down(region, error)
            return Outcome(region.name, PENDING, detail=f"unreachable: {error}")

    def check(
        self,
        region: Region,
        kind: str,
        digest: str,
        *,
        known: Sequence[WrappedKey],
        checksum: str | None,
        what: str,
    ) -> Outcome:
        """Read one region's copy back (see `_check`); its data key from any region, fetched
        only when the copy has to be authenticated in full."""

        def data_key() -> bytes:
            return self.unwrap_any(kind, digest, known=known, what=what)[0]

        return self._check(region, kind, digest, data_key, checksum, what=what)

    def checksum(self, region: Region, kind: str, digest: str) -> str:
        """BLAKE3 of the copy's stored bytes, read back in parallel ranges."""
        driver = region.store.driver
        name = region.store.object_name(kind, digest)
        info = driver.stat(name)
        if info is None:
            raise NotFoundError(f"{name} is missing in {region.name}")
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for data in _ranges(lambda o, n: driver.get_range(name, o, n), info.size, self.workers):
            hasher.update(data)
        return "blake3:" + hasher.hexdigest()

    def _authenticated(
        self, region: Region, kind: str, digest: str, data_key: bytes, *, what: str
    ) -> Iterator[bytes]:
        """A region's copy as stored bytes, every chunk authenticated (and, for blobs, the whole
        plaintext re-hashed) before the last bytes are released: a damaged copy never spreads."""
        store = region.store
        name = store.object_name(kind, digest)
        driver = store.driver
        header_bytes = driver.get_range(name, 0, sealed.HEADER_SIZE)
        opener = sealed.Opener(data_key, digest, header_bytes, what=what)
        header = opener.header
        info = driver.stat(name)
        if info is None or info.size != header.sealed_size:
            raise IntegrityError(
                f"{what}: the copy in {region.name} has {info.size if info else 0} bytes, "
                f"its header says {header.sealed_size}",
                path=what,
            )
        step = header.chunk_size + sealed.TAG_SIZE
        per_range = max(1, _RANGE // step)
        hasher = Hasher() if kind == "blob" else None

        def fetch(first: int) -> tuple[bytes, list[bytearray]]:
            last = min(first + per_range, header.chunk_count) - 1
            offset, length = header.chunk_range(first, last)
            data = driver.get_range(name, offset, length)
            if len(data) != length:
                raise IntegrityError(f"{what}: the copy in {region.name} is truncated", path=what)
            plain: list[bytearray] = []
            position = 0
            for index in range(first, last + 1):
                size = header.chunk_plain_size(index)
                out = bytearray(size)
                opener.open_chunk(
                    index, memoryview(data)[position : position + size + sealed.TAG_SIZE], out
                )
                position += size + sealed.TAG_SIZE
                plain.append(out)
            return data, plain

        starts = list(range(0, header.chunk_count, per_range))
        pending: deque[Future[tuple[bytes, list[bytearray]]]] = deque()
        held = bytes(header_bytes)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="copy") as pool:
            feed = iter(starts)
            for first in feed:
                pending.append(pool.submit(fetch, first))
                if len(pending) > self.workers:
                    break
            while pending:
                data, plain = pending.popleft().result()
                following = next(feed, None)
                if following is not None:
                    pending.append(pool.submit(fetch, following))
                if hasher is not None:
                    for part in plain:
                        hasher.update(part)
                # One range is always held back, so the last bytes leave only once all checked.
                yield held
                held = data
        if hasher is not None and hasher.digest() != digest:
            raise IntegrityError(f"{what}: the copy in {region.name} has another digest", path=what)
        yield held


def _ranges(
    read: Callable[[int, int], bytes], size: int, workers: int, *, step: int = _RANGE
) -> Iterator[bytes]:
    """The bytes 0..size in order, `workers` ranges read ahead in parallel."""
    if size == 0:
        yield read(0, 0)
        return
    offsets = iter(range(0, size, step))
    pending: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="readback") as pool:
        for offset in offsets:
            pending.append(pool.submit(read, offset, min(step, size - offset)))
            if len(pending) >= workers:
                break
        while pending:
            data = pending.popleft().result()
            following = next(offsets, None)
            if following is not None:
                pending.append(pool.submit(read, following, min(step, size - following)))
            yield data
