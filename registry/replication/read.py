"""Reads of an object across regions: every range from the first region that serves it
intact (fail-over, hedged to the next region past a latency budget where requests can hang),
the copies read around recorded in a `ReadReport`."""

from __future__ import annotations

import functools
import mmap
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from registry.crypto import sealed
from registry.crypto.keys import WrappedKey
from registry.errors import IntegrityError, NotFoundError, StorageError
from registry.replication.health import DEGRADED, outage
from registry.replication.keys import DataKeys
from registry.replication.regions import Region, Regions, fresh_failure
from registry.storage import deadline

MAX_SMALL_OBJECT = 64 * 1024 * 1024

T = TypeVar("T")


@dataclass
class ReadReport:
    """Copies a read found missing, damaged or unreachable (it was served from another)."""

    bad: dict[tuple[str, str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Reads that lost to a hedge: (kind, digest, region, attempt, when it started).
    _outstanding: list[tuple[str, str, str, Future[Any], float]] = field(
        default_factory=list, repr=False
    )

    def add(self, kind: str, digest: str, region: str, detail: str) -> None:
        with self._lock:
            self.bad.setdefault((kind, digest, region), detail)

    def hedged(
        self, kind: str, digest: str, region: str, attempt: Future[Any], started: float
    ) -> None:
        """A region's read lost to a hedge: a failure it ends with is reported (as the
        failure), and one still unanswered when the read settles is reported as hung."""
        with self._lock:
            self._outstanding.append((kind, digest, region, attempt, started))

    def settle(self) -> None:
        """At the end of a pull or load: every hedged-away read that never answered makes its
        region's copy count as hung (pending), like a read that failed mid-way."""
        now = time.monotonic()
        with self._lock:
            outstanding, self._outstanding = self._outstanding, []
        for kind, digest, region, attempt, started in outstanding:
            if not attempt.done():
                self.add(kind, digest, region, f"hung: no answer after {now - started:.1f} s")


class BlobReader(Protocol):
    """Sealed bytes of one stored object, with fail-over between regions."""

    def read_into(self, offset: int, buffer: memoryview, /) -> int: ...

    def view(self, offset: int, length: int, /) -> memoryview | None: ...

    def damaged(self, offset: int, error: IntegrityError, /) -> bool: ...

    def regions_used(self) -> list[str]: ...


class Reads(DataKeys):
    """Reads of a replica set's objects, with fail-over between regions."""

    def open(
        self,
        kind: str,
        digest: str,
        *,
        known: Sequence[WrappedKey],
        size: int,
        what: str,
        report: ReadReport,
        chunks_per_read: int = 4,
        verify_digest: bool = True,
        on_chunk: Callable[[int, memoryview], None] | None = None,
    ) -> Iterator[memoryview]:
        """Authenticated plaintext chunks (see `sealed.unseal`), each range read from the first
        region that serves it intact; the copies that failed are added to `report`."""
        data_key, _slots = self.unwrap_any(kind, digest, known=known, what=what)
        source = _FailoverSource(self, kind, digest, report, what=what)
        return sealed.unseal(
            source.read_range,
            data_key,
            digest,
            read_into=source.read_into,
            on_chunk=on_chunk,
            expected_size=size,
            workers=self.workers,
            chunks_per_read=chunks_per_read,
            verify_digest=verify_digest,
            what=what,
            on_damage=source.damaged,
        )

    def source(self, kind: str, digest: str, report: ReadReport, *, what: str) -> BlobReader:
        """Read functions over every region's copy of one object (fail-over per range)."""
        return _FailoverSource(self, kind, digest, report, what=what)

    def read_ciphertext(
        self, kind: str, digest: str, offset: int, length: int, *, report: ReadReport
    ) -> bytes:
        """Raw sealed bytes of an object, from the first region that serves the range (the REST
        API hands them to clients that decrypt and authenticate them themselves)."""
        source = _FailoverSource(self, kind, digest, report, what=f"{kind} {digest}")
        return source.read_range(offset, length)

    def read_bytes(
        self, kind: str, digest: str, *, known: Sequence[WrappedKey], what: str, report: ReadReport
    ) -> bytes:
        """The whole plaintext of a small object (a manifest), authenticated, with fail-over
        (a damaged header too: it is read inside `unseal`, where a failure moves on)."""
        data_key, _slots = self.unwrap_any(kind, digest, known=known, what=what)
        source = _FailoverSource(self, kind, digest, report, what=what)
        chunks = sealed.unseal(
            source.read_range,
            data_key,
            digest,
            workers=1,
            verify_digest=False,
            what=what,
            on_damage=source.damaged,
        )
        # The digest bound here is not the plaintext's (a manifest is named by the digest of its
        # canonical form), so the caller verifies content; AEAD still authenticates every chunk.
        parts: list[bytes] = []
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > MAX_SMALL_OBJECT:
                raise IntegrityError(f"{what}: implausibly large (over {MAX_SMALL_OBJECT} bytes)")
            parts.append(bytes(chunk))
        return b"".join(parts)


class _FailoverSource:
    """Read functions for `sealed.unseal` over every region's copy of one object: a range comes
    from the first region that serves it; a region that failed is skipped for that range (for
    every range when the object is missing there or the region is unreachable)."""

    def __init__(
        self, replicas: Regions, kind: str, digest: str, report: ReadReport, *, what: str
    ) -> None:
        self.replicas = replicas
        self.regions = replicas.regions
        self.kind = kind
        self.digest = digest
        self.name = replicas.primary.object_name(kind, digest)
        self.report = report
        self.what = what
        self._lock = threading.Lock()
        self._skip: dict[int, set[int]] = {}
        self._gone: set[int] = set()
        self._served: dict[int, int] = {}
        self._maps: dict[int, mmap.mmap | None] = {}  # region -> its copy mapped (None: can't)

    def _candidates(self, offset: int) -> list[int]:
        with self._lock:
            skip = self._skip.get(offset, set()) | self._gone
        healthy = [
            i
            for i in range(len(self.regions))
            if i not in skip and self.replicas.condition(self.regions[i]) is None
        ]
        # A region read last (down, hung, degraded) is still tried: it may be back, and it may
        # be all there is.
        return healthy + [i for i in range(len(self.regions)) if i not in skip and i not in healthy]

    def _failed(self, index: int, offset: int | None, detail: str, *, gone: bool) -> None:
        region = self.regions[index]
        self.report.add(self.kind, self.digest, region.name, detail)
        with self._lock:
            if gone:
                self._gone.add(index)
            elif offset is not None:
                self._skip.setdefault(offset, set()).add(index)

    def _attempt(self, region: Region, read: Callable[[Region], T]) -> T:
        # A region whose registry marker has not been read yet is not used before it is.
        self.replicas.claim(region)
        return read(region)

    def _read(self, offset: int, read: Callable[[Region], T]) -> T:
        """The first good answer for this range: regions in order, each later one asked when
        the one before failed or (with hedging) missed its latency budget."""
        order = self._candidates(offset)
        errors: list[str] = []
        pending = deque(order)
        running: dict[Future[T], tuple[int, float]] = {}
        health = self.replicas.health
        hedged = self.replicas.hedging and len(order) > 1

        def launch() -> None:
            index = pending.popleft()
            region = self.regions[index]
            running[deadline.submit(functools.partial(self._attempt, region, read))] = (
                index,
                time.monotonic(),
            )

        while pending or running:
            if not hedged:
                index = pending.popleft()
                region = self.regions[index]
                started = time.monotonic()
                try:
                    result = self._attempt(region, read)
                except (NotFoundError, StorageError) as error:
                    errors.append(self._refused(index, offset, error))
                    continue
                return self._won(index, offset, started, result)
            if not running:
                launch()
            newest, started = list(running.values())[-1]
            budget = health.budget(self.regions[newest].name)
            timeout = max(0.0, started + budget - time.monotonic()) if pending else None
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                health.missed(self.regions[newest].name, budget)
                launch()
                continue
            for future in done:
                index, started = running.pop(future)
                try:
                    result = future.result()
                except (NotFoundError, StorageError) as error:
                    errors.append(self._refused(index, offset, error))
                    continue
                for other, (late, other_started) in running.items():
                    other.add_done_callback(functools.partial(self._late, late))
                    self.report.hedged(
                        self.kind, self.digest, self.regions[late].name, other, other_started
                    )
                return self._won(index, offset, started, result)
        if errors and all(e.endswith(": missing") for e in errors):
            raise IntegrityError(
                f"{self.what}: stored object {self.name} is missing", path=self.what
            )
        raise StorageError(
            f"{self.what}: no region could serve it ({'; '.join(errors) or 'none left'})",
            hint="check the regions with `model-registry regions status`",
        )

    def _refused(self, index: int, offset: int, error: Exception) -> str:
        region = self.regions[index]
        if isinstance(error, NotFoundError):
            self._failed(index, offset, "missing", gone=True)
            return f"{region.name}: missing"
        assert isinstance(error, StorageError)
        if fresh_failure(error):
            self.replicas.mark_down(region, error)
        self._failed(index, offset, outage(error), gone=True)
        return f"{region.name}: {error}"

    def _late(self, index: int, future: Future[Any]) -> None:
        """An attempt that lost to a hedge: its failure still says the region is down, and is
        reported for this object like a failure on the read itself."""
        error = future.exception()
        if isinstance(error, StorageError) and not isinstance(error, NotFoundError):
            if fresh_failure(error):
                self.replicas.mark_down(self.regions[index], error)
            self.report.add(self.kind, self.digest, self.regions[index].name, outage(error))

    def _won(self, index: int, offset: int, started: float, result: T) -> T:
        """Record who served a range; regions read around because they are known to be down,
        hung or degraded are reported like regions that failed on this read."""
        self.replicas.health.served(self.regions[index].name, time.monotonic() - started)
        with self._lock:
            self._served[offset] = index
        for other, region in enumerate(self.regions):
            if other == index or other in self._gone:
                continue
            condition = self.replicas.condition(region)
            if condition is not None and (other < index or condition.state != DEGRADED):
                self.report.add(self.kind, self.digest, region.name, condition.describe())
        return result

    def read_range(self, offset: int, length: int) -> bytes:
        return self._read(
            offset, lambda region: region.store.driver.get_range(self.name, offset, length)
        )

    def read_into(self, offset: int, buffer: memoryview) -> int:
        if self.replicas.hedging:
            # Two regions may answer one range: each reads into its own bytes, and only the
            # winner's reach the caller's buffer (a loser may still be writing).
            data = self.read_range(offset, len(buffer))
            buffer[: len(data)] = data
            return len(data)
        return self._read(
            offset, lambda region: region.store.driver.read_into(self.name, offset, buffer)
        )

    def view(self, offset: int, length: int) -> memoryview | None:
        """The range in place, from a mapping of the copy of the region it would be read from
        (local stores map their objects), cut at the object's end; None when that region maps
        nothing, when reads are hedged, or when mapping failed: the range is then read, which
        also reports the failure and moves on to the next region."""
        if self.replicas.hedging:
            return None
        order = self._candidates(offset)
        if not order:
            return None
        index = order[0]
        started = time.monotonic()
        with self._lock:
            known = index in self._maps
            mapped = self._maps.get(index)
        if not known:
            try:
                mapped = self._attempt(
                    self.regions[index], lambda region: region.store.driver.mapping(self.name)
                )
            except (NotFoundError, StorageError):
                return None
            with self._lock:
                mapped = self._maps.setdefault(index, mapped)
        if mapped is None:
            return None
        return self._won(index, offset, started, memoryview(mapped)[offset : offset + length])

    def regions_used(self) -> list[str]:
        """The regions that served the ranges read so far, in read preference order."""
        with self._lock:
            served = set(self._served.values())
        return [self.regions[i].name for i in sorted(served)]

    def damaged(self, offset: int, error: IntegrityError) -> bool:
        """A range failed authentication: blame the region that served it and try the next."""
        with self._lock:
            index = self._served.get(offset)
        if index is None:
            return False
        self._failed(index, offset, str(error), gone=False)
        return bool(self._candidates(offset))
