"""One stream of chunks written to several regions at once: a writer that fails drops out without
holding the others, one that stops taking data (a stalled write) is dropped and its region marked
down, and a failing stream fails them all."""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import blake3

from registry.errors import IntegrityError, KeyAccessError, StorageError, StoreTimeoutError
from registry.replication.regions import Region
from registry.storage import deadline
from registry.storage.deadline import DeadlineSettings

Chunks = Iterable[bytes | bytearray | memoryview]


class Delivery(NamedTuple):
    """What one target got: its error (None: written), the written bytes' checksum (when asked
    for and these bytes are the object), and whether these very bytes are now the object (False
    when another writer's copy was there first)."""

    error: Exception | None
    checksum: str | None = None
    ours: bool = False


class _Fanout:
    """One stream of chunks fed to several writers, each consuming in its own thread; a writer
    that fails drops out without stalling the others, one that falls below the slowest
    acceptable rate is dropped as stalled, and a failing source fails them all."""

    _END = object()

    def __init__(self, count: int, *, depth: int = 8, deadlines: DeadlineSettings) -> None:
        self._queues: list[queue.Queue[object]] = [queue.Queue(depth) for _ in range(count)]
        self._alive = [True] * count
        self._stalled = [False] * count
        self._taken = [0] * count
        self._deadlines = deadlines
        self._started = time.monotonic()

    def stalled(self, index: int) -> bool:
        return self._stalled[index]

    def consume(self, index: int, writer: Callable[[Chunks], bool]) -> bool:
        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    item = self._queues[index].get(timeout=0.2)
                except queue.Empty:
                    if self._stalled[index]:
                        raise StoreTimeoutError("dropped: it stopped taking data") from None
                    continue
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                self._taken[index] += len(item)
                yield item

        try:
            return writer(chunks())
        finally:
            self._alive[index] = False
            # Drain, so that the feeder never blocks on a writer that is gone.
            while True:
                try:
                    self._queues[index].get_nowait()
                except queue.Empty:
                    break

    def _too_slow(self, index: int) -> bool:
        allowed = self._deadlines.transfer_seconds(self._taken[index])
        return time.monotonic() - self._started > allowed

    def _put(self, item: object) -> None:
        for index, pipe in enumerate(self._queues):
            while self._alive[index]:
                try:
                    pipe.put(item, timeout=0.05)
                    break
                except queue.Full:
                    if self._too_slow(index):
                        self._stalled[index] = True
                        self._alive[index] = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self._put(bytes(chunk))

    def finish(self) -> None:
        self._put(self._END)

    def fail(self, error: BaseException) -> None:
        self._put(error)


def _hex(hasher: blake3.blake3 | None) -> str | None:
    return None if hasher is None else "blake3:" + hasher.hexdigest()


def fan_out(
    targets: Sequence[Region],
    stream: Callable[[], Chunks],
    write: Callable[[Region, Chunks], bool],
    *,
    checksum: bool = True,
    deadlines: DeadlineSettings,
    mark_down: Callable[[Region, Exception], None],
) -> dict[str, Delivery]:
    """`write` every target from one pass over `stream`; the stream's own errors are
    raised, a target's errors are its result (with the written bytes' checksum when
    `checksum`: hashing costs a push about a tenth of its speed when nothing reads back). A
    target that stalled is marked down with `mark_down`."""
    results: dict[str, Delivery] = {}
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if checksum else None
    source_failed: list[BaseException] = []

    def hashed() -> Iterator[bytes | bytearray | memoryview]:
        try:
            for chunk in stream():
                if hasher is not None:
                    hasher.update(chunk)
                yield chunk
        except BaseException as error:
            source_failed.append(error)
            raise

    if len(targets) == 1:
        region = targets[0]
        try:
            ours = write(region, hashed())
            results[region.name] = Delivery(None, _hex(hasher) if ours else None, ours)
        except (StorageError, KeyAccessError, IntegrityError) as error:
            if source_failed:
                raise
            results[region.name] = Delivery(error)
        return results
    # A region whose writer falls below the slowest acceptable rate (a request's deadline,
    # plus what it took so far at that rate) is dropped, so that one hung region does not
    # hold the others' writes; a writer that takes data in bursts (parts) is not.
    fanout = _Fanout(len(targets), deadlines=deadlines)
    futures = [
        deadline.submit(functools.partial(fanout.consume, index, functools.partial(write, r)))
        for index, r in enumerate(targets)
    ]
    try:
        for chunk in hashed():
            fanout.feed(chunk)
        fanout.finish()
    except BaseException as error:
        fanout.fail(error)
        for index, future in enumerate(futures):
            if not fanout.stalled(index):
                future.exception()
        raise
    for index, (region, future) in enumerate(zip(targets, futures, strict=True)):
        if fanout.stalled(index):
            stalled = StoreTimeoutError(f"{region.name} stopped taking data (a stalled write)")
            # The next objects of this push skip it instead of waiting on it again.
            mark_down(region, stalled)
            results[region.name] = Delivery(stalled)
            continue
        failure = future.exception()
        if failure is None:
            ours = future.result()
            results[region.name] = Delivery(None, _hex(hasher) if ours else None, ours)
        elif isinstance(failure, (StorageError, KeyAccessError, IntegrityError)):
            results[region.name] = Delivery(failure)
        else:
            raise failure
    return results
