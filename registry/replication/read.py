"""Reads of an object across regions: every range from the first region that serves it
intact (fail-over, hedged to the next region past a latency budget where requests can hang),
the copies read around recorded in a `ReadReport`; and the read-ahead of a pull, which fetches
the ranges of the objects it reads next before they are asked for."""

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
# A small object (a manifest) is asked for in one request this large: its header, first chunk
# and the first range `unseal` reads are then one round trip instead of three.
SMALL_FIRST_SPAN = 8 * 1024 * 1024

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
        ahead: ReadAhead | None = None,
    ) -> Iterator[memoryview]:
        """Authenticated plaintext chunks (see `sealed.unseal`), each range read from the first
        region that serves it intact; the copies that failed are added to `report`. With
        `ahead`, the ranges it fetched for this object are used (and it moves on to the next)."""
        data_key, _slots = self.unwrap_any(kind, digest, known=known, what=what)
        source = ahead.take(kind, digest) if ahead is not None else None
        if source is None:
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
        self,
        kind: str,
        digest: str,
        offset: int,
        length: int,
        *,
        report: ReadReport,
        size: int | None = None,
    ) -> bytes:
        """Raw sealed bytes of an object, from the first region that serves the range (the REST
        API hands them to clients that decrypt and authenticate them themselves). With `size`
        (the sealed size the catalog recorded), a range that ends the object is read one byte
        further, and a copy longer or shorter than `size` is refused (IntegrityError) and the
        next region asked, as local reads do: bytes appended to a copy are never served."""
        what = f"{kind} {digest}"
        source = _FailoverSource(self, kind, digest, report, what=what)
        if size is None or offset + length < size:
            return source.read_range(offset, length)
        while True:
            data = source.read_range(offset, length + 1)
            if len(data) == length:
                return data
            error = IntegrityError(
                f"{what}: the stored copy is {'longer' if len(data) > length else 'shorter'} "
                f"than its {size} sealed bytes",
                hint="`model-registry verify --all` finds the damaged copy; "
                "`replicate --repair` replaces it",
            )
            if not source.damaged(offset, error):
                raise error

    def read_bytes(
        self, kind: str, digest: str, *, known: Sequence[WrappedKey], what: str, report: ReadReport
    ) -> bytes:
        """The whole plaintext of a small object (a manifest), authenticated, with fail-over
        (a damaged header too: it is read inside `unseal`, where a failure moves on)."""
        data_key, _slots = self.unwrap_any(kind, digest, known=known, what=what)
        source = _FailoverSource(self, kind, digest, report, what=what)
        # Header, first chunk and first range in one round trip (the rest, if any, as usual).
        source.prefetch(0, SMALL_FIRST_SPAN)
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
        try:
            for chunk in chunks:
                total += len(chunk)
                if total > MAX_SMALL_OBJECT:
                    raise IntegrityError(
                        f"{what}: implausibly large (over {MAX_SMALL_OBJECT} bytes)"
                    )
                parts.append(bytes(chunk))
        finally:
            source.release()
        return b"".join(parts)

    def read_ahead(self, report: ReadReport, *, budget: int, requests: int) -> ReadAhead:
        """A read-ahead for objects read one after another (see `ReadAhead`)."""
        return ReadAhead(self, report, budget=budget, requests=requests)


@dataclass(eq=False)
class _Span:
    """Bytes of an object fetched before they were asked for: `length` from `start` (fewer at
    the object's end), arriving in `fetch` (into `buffer` when one was lent), read by `readers`
    at the moment; `dropped` once no read may take it any more."""

    start: int
    length: int
    fetch: Future[memoryview]
    buffer: bytearray | None
    readers: int = 0
    dropped: bool = False

    def holds(self, offset: int, length: int) -> bool:
        return self.start <= offset and offset + length <= self.start + self.length


# Told of every span given up, once no read uses it any more: its length and the buffer it
# was lent (a read-ahead's budget and buffers).
OnRelease = Callable[[int, bytearray | None], None]


class _FailoverSource:
    """Read functions for `sealed.unseal` over every region's copy of one object: a range comes
    from the first region that serves it; a region that failed is skipped for that range (for
    every range when the object is missing there or the region is unreachable).

    Spans of the object may be fetched ahead (`prefetch`, through the same fail-over); a read
    inside one is served from it, as if from the region that served the span. A span that
    failed is dropped and the read asks the regions itself; once a range failed authentication
    no span serves anything any more (a retry must reach another copy)."""

    def __init__(
        self,
        replicas: Regions,
        kind: str,
        digest: str,
        report: ReadReport,
        *,
        what: str,
        on_release: OnRelease | None = None,
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
        self._spans: list[_Span] = []
        self._spans_trusted = True
        self._on_release = on_release
        # Asked, when no span holds a read, to start the planned span that does (a reader
        # ahead of the read-ahead): True when it did. Set by the read-ahead.
        self.on_miss: Callable[[int, int], bool] | None = None

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

    def prefetch(
        self, start: int, length: int, *, buffer: bytearray | None = None
    ) -> Future[memoryview]:
        """Fetch `length` bytes from `start` in the background (cut at the object's end), for
        the reads that fall inside them; into `buffer` (at least `length` bytes) when one is
        lent and a single region answers at a time (hedged attempts each need their own)."""
        lent = None if self.replicas.hedging else buffer
        fetch = deadline.submit(functools.partial(self._fetch_span, start, length, lent))
        with self._lock:
            self._spans.append(_Span(start, length, fetch, buffer))
        return fetch

    def _fetch_span(self, start: int, length: int, buffer: bytearray | None) -> memoryview:
        if buffer is None:
            return memoryview(self._fetch(start, length))
        view = memoryview(buffer)[:length]
        got = self._read(
            start, lambda region: region.store.driver.read_into(self.name, start, view)
        )
        return view[:got]

    def _fetch(self, start: int, length: int) -> bytes:
        return self._read(
            start, lambda region: region.store.driver.get_range(self.name, start, length)
        )

    def _from_span(self, offset: int, length: int, sink: memoryview | None) -> bytes | int | None:
        """A read served from a span that holds it: its bytes (`sink` None) or the count copied
        into `sink`; None when no span holds it or the span failed (the read then asks the
        regions itself). A read that takes a whole span drops it."""
        span = self._span_holding(offset, length)
        if span is None and self.on_miss is not None and self.on_miss(offset, length):
            span = self._span_holding(offset, length)
        if span is None:
            return None
        try:
            try:
                data = span.fetch.result()
            except (NotFoundError, StorageError, IntegrityError):
                # The read asks the regions itself, range by range, and reports what failed
                # (a store's checksum of a whole object may have refused a span holding it).
                self._drop(span)
                return None
            with self._lock:
                if not self._spans_trusted:
                    return None
                index = self._served.get(span.start)
                if index is not None:
                    self._served[offset] = index
            part = data[offset - span.start : offset - span.start + length]
            if sink is None:
                served: bytes | int = bytes(part)
            else:
                sink[: len(part)] = part
                served = len(part)
            if offset == span.start and offset + length >= span.start + len(data):
                self._drop(span)
            return served
        finally:
            self._done_reading(span)

    def _span_holding(self, offset: int, length: int) -> _Span | None:
        """The span that holds a read, counted as read from (None: none, or spans are no
        longer trusted)."""
        with self._lock:
            span = next((s for s in self._spans if s.holds(offset, length)), None)
            if span is None or not self._spans_trusted:
                return None
            span.readers += 1
            return span

    @property
    def spans_trusted(self) -> bool:
        return self._spans_trusted

    def _drop(self, span: _Span) -> None:
        with self._lock:
            if span.dropped:
                return
            span.dropped = True
            self._spans.remove(span)
            idle = span.readers == 0
        if idle:
            self._released(span)

    def _done_reading(self, span: _Span) -> None:
        with self._lock:
            span.readers -= 1
            idle = span.dropped and span.readers == 0
        if idle:
            self._released(span)

    def _released(self, span: _Span) -> None:
        """A dropped span no read uses: its buffer may hold other bytes now, unless its fetch
        is still running or failed (a read abandoned to its deadline might yet write: the
        buffer is then simply not lent again)."""
        if self._on_release is not None:
            fetched = span.fetch.done() and span.fetch.exception() is None
            self._on_release(span.length, span.buffer if fetched else None)

    def release(self) -> None:
        """Drop every span (the object is read, or failed)."""
        with self._lock:
            spans = list(self._spans)
        for span in spans:
            self._drop(span)

    def read_range(self, offset: int, length: int) -> bytes:
        cached = self._from_span(offset, length, None)
        if isinstance(cached, bytes):
            return cached
        return self._fetch(offset, length)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        cached = self._from_span(offset, len(buffer), buffer)
        if isinstance(cached, int):
            return cached
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
            # The spans came from regions this one may now skip: the retry reads for itself.
            self._spans_trusted = False
        self.release()
        if index is None:
            return False
        self._failed(index, offset, str(error), gone=False)
        return bool(self._candidates(offset))


@dataclass
class _Planned:
    """An object a read-ahead will fetch: its source and the spans still to fetch."""

    kind: str
    digest: str
    source: _FailoverSource
    spans: deque[tuple[int, int]]


class ReadAhead:
    """The objects a pull reads, in the order it reads them, fetched ahead of the reader.

    Each object is cut into the spans `sealed.unseal` reads (its header with the first range of
    chunks, then one range after another), and those are fetched in order, across object
    boundaries, with at most `requests` in flight and `budget` bytes fetched and not yet read:
    when a file's reading starts, its first ranges are there, and a small file costs no round
    trip of its own (its header, first chunk and ranges being one span). Every span is read
    through the object's fail-over source, so hedging, outage marks and the report work as for
    any read; a span that fails is simply read again by the reader. Ranges that fall outside
    the spans (another chunk size than the one planned with) are read as usual. The spans'
    buffers are lent again once read (fresh memory for every span costs page faults), except
    one whose fetch was abandoned and may still be written."""

    def __init__(self, reads: Reads, report: ReadReport, *, budget: int, requests: int) -> None:
        if budget < 1 or requests < 1:
            raise ValueError("a read-ahead needs a positive budget and request count")
        self._reads = reads
        self._report = report
        self._budget = budget
        self._requests = requests
        self._lock = threading.Lock()
        self._planned: deque[_Planned] = deque()
        self._current: _Planned | None = None
        self._held = 0
        self._in_flight = 0
        self._closed = False
        self._free: list[bytearray] = []

    def add(
        self,
        kind: str,
        digest: str,
        *,
        sealed_size: int,
        chunk_size: int,
        chunks_per_read: int,
        what: str,
    ) -> None:
        """Plan the next object the reader will open (`Reads.open(..., ahead=self)`)."""
        source = _FailoverSource(
            self._reads, kind, digest, self._report, what=what, on_release=self._released
        )
        step = max(1, chunks_per_read) * (chunk_size + sealed.TAG_SIZE)
        spans: deque[tuple[int, int]] = deque()
        start, end = 0, sealed.HEADER_SIZE + step
        while True:
            if end >= sealed_size:
                # The last range asks for one byte past the end (trailing bytes are refused).
                spans.append((start, sealed_size + 1 - start))
                break
            spans.append((start, end - start))
            start, end = end, end + step
        planned = _Planned(kind, digest, source, spans)
        source.on_miss = functools.partial(self._claim, planned)
        with self._lock:
            self._planned.append(planned)
        self._pump()

    def take(self, kind: str, digest: str) -> _FailoverSource | None:
        """The source of the next planned object, when it is this one; the one taken before is
        released (its spans the reader did not use are dropped)."""
        skipped: list[_Planned] = []
        with self._lock:
            previous, self._current = self._current, None
            planned = next(
                (p for p in self._planned if p.kind == kind and p.digest == digest), None
            )
            if planned is not None:
                # Objects planned before it and not taken will not be read.
                while self._planned[0] is not planned:
                    skipped.append(self._planned.popleft())
                self._planned.popleft()
                self._current = planned
        for done in [previous, *skipped]:
            if done is not None:
                done.spans.clear()
                done.source.release()
        self._pump()
        return None if planned is None else planned.source

    def close(self) -> None:
        """Fetch nothing more and drop what was fetched (fetches in flight finish unread)."""
        with self._lock:
            self._closed = True
            dropped = [*self._planned, *([self._current] if self._current else [])]
            self._planned.clear()
            self._current = None
            self._free.clear()
        for planned in dropped:
            planned.spans.clear()
            planned.source.release()

    def _released(self, nbytes: int, buffer: bytearray | None) -> None:
        with self._lock:
            self._held -= nbytes
            if buffer is not None and not self._closed:
                self._free.append(buffer)
        self._pump()

    def _lend(self, length: int) -> bytearray:
        """A buffer of at least `length` bytes (lock held)."""
        while self._free:
            buffer = self._free.pop()
            if len(buffer) >= length:
                return buffer
        return bytearray(length)

    def _claim(self, planned: _Planned, offset: int, length: int) -> bool:
        """A read came before its span was fetched: the span is fetched now, for it (once:
        the read-ahead will not fetch it again), whatever the budget and request count."""
        with self._lock:
            if self._closed:
                return False
            span = next(
                (s for s in planned.spans if s[0] <= offset and offset + length <= s[0] + s[1]),
                None,
            )
            if span is None:
                return False
            planned.spans.remove(span)
            self._held += span[1]
            self._in_flight += 1
            buffer = self._lend(span[1])
        planned.source.prefetch(*span, buffer=buffer).add_done_callback(self._landed)
        return True

    def _landed(self, _fetch: Future[memoryview]) -> None:
        with self._lock:
            self._in_flight -= 1
        self._pump()

    def _pump(self) -> None:
        """Start fetching the next spans while the budget and the request count allow (the
        next span always, when nothing is held: a span larger than the budget must not stall
        the reader)."""
        while True:
            with self._lock:
                if self._closed or self._in_flight >= self._requests:
                    return
                planned = self._next_to_fetch()
                if planned is None:
                    return
                start, length = planned.spans[0]
                if self._held and self._held + length > self._budget:
                    return
                planned.spans.popleft()
                self._held += length
                self._in_flight += 1
                buffer = self._lend(length)
            planned.source.prefetch(start, length, buffer=buffer).add_done_callback(self._landed)

    def _next_to_fetch(self) -> _Planned | None:
        """The first object, in reading order (the one being read first), with a span left to
        fetch and no damage found in what was fetched for it (lock held)."""
        for planned in [*([self._current] if self._current else []), *self._planned]:
            if planned.spans and planned.source.spans_trusted:
                return planned
        return None
