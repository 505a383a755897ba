"""Deadlines for calls into a store: a call runs on a daemon worker thread and the caller waits at
most its deadline, then gets `StoreTimeoutError` while the call is abandoned.

A hung server (TCP accepted, nothing answered) or a trickle of bytes never trips a socket
timeout reliably, and a thread blocked in `recv` cannot be interrupted, so the only bound a
caller can count on is not waiting for it. Abandoned calls get a `cancelled` event they may
check between pieces of work (a body read in pieces stops at the next piece), and run on daemon
threads so that a process never waits for a hung store at exit. The same pool serves the
hedged reads and the fan-out of writes across regions, which need the same property.
"""

from __future__ import annotations

import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TypeVar

from registry.errors import InvalidInputError, StoreTimeoutError

T = TypeVar("T")
# An idle worker waits this long for new work before it exits.
_IDLE_SECONDS = 30.0


# Upper bounds that keep every deadline a finite, representable time (no `inf`).
_LARGEST = {
    "request_seconds": 3600.0,
    "transfer_bytes_per_second": 1e12,
    "hedge_after_seconds": 3600.0,
    "degraded_seconds": 86400.0,
}


@dataclass(frozen=True)
class DeadlineSettings:
    """How long a store may take before a region counts as hung (`[deadlines]` in config.toml;
    docs/operations.md, "Hung and slow regions"). Every request to a store has a deadline; a read
    not answered within the region's latency budget is asked of the next region as well."""

    request_seconds: float = 10.0  # one request without a body to speak of (HEAD, LIST, lock)
    # The slowest transfer still taken for a working region: a body of N bytes gets
    # request_seconds + N / this.
    transfer_bytes_per_second: float = 1024.0 * 1024.0
    # The floor of a region's latency budget: a read unanswered after max(this, 3 x the
    # region's recent p95) is hedged to the next region.
    hedge_after_seconds: float = 0.5
    degraded_seconds: float = 30.0  # a region that keeps missing its budget is read last this long

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= _LARGEST[name]
            ):
                raise InvalidInputError(
                    f"deadlines.{name} must be a positive number up to {_LARGEST[name]:g}, "
                    f"not {value!r}"
                )
        if self.hedge_after_seconds > self.request_seconds:
            raise InvalidInputError(
                "deadlines.hedge_after_seconds must not exceed request_seconds",
                hint="a read is hedged before its request can time out",
            )

    def transfer_seconds(self, size: int) -> float:
        """The deadline of a request moving `size` bytes."""
        return self.request_seconds + max(0, size) / self.transfer_bytes_per_second

    @classmethod
    def from_config(cls, section: object) -> DeadlineSettings:
        if not isinstance(section, dict):
            raise InvalidInputError("[deadlines] must be a table")
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise InvalidInputError(
                f"unknown [deadlines] settings {sorted(unknown)}", hint=f"known: {sorted(known)}"
            )
        return cls(**section)

    def config_lines(self) -> list[str]:
        """The `[deadlines]` section, with only what differs from the defaults."""
        default = DeadlineSettings()
        lines = [
            f"{name} = {getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(default, name)
        ]
        return ["", "[deadlines]", *lines] if lines else []


class DaemonPool:
    """Threads that never hold a process open: grown on demand (a worker stuck in a hung call
    must not starve the next caller), shrunk when idle."""

    def __init__(self, *, name: str = "store") -> None:
        self._name = name
        self._work: queue.SimpleQueue[tuple[Future[object], Callable[[], object]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0
        self._started = 0

    def submit(self, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._idle:
                self._idle -= 1  # that worker is spoken for
            else:
                self._started += 1
                threading.Thread(
                    target=self._worker, name=f"{self._name}-{self._started}", daemon=True
                ).start()
        self._work.put((future, call))  # type: ignore[arg-type]
        return future

    def _worker(self) -> None:
        while True:
            try:
                future, call = self._work.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle and self._work.empty():
                        self._idle -= 1
                        return
                continue  # claimed by a submitter just now: its work is on the way
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as error:  # noqa: BLE001 - handed to the waiter
                    future.set_exception(error)
            del future, call
            with self._lock:
                self._idle += 1


_pool = DaemonPool()


def submit(call: Callable[[], T]) -> Future[T]:
    """Run `call` on a daemon worker; the future holds its result or error."""
    return _pool.submit(carried(call))


def carried(call: Callable[[], T]) -> Callable[[], T]:
    """`call`, to run on another thread in a copy of the caller's contextvars (the operation
    it works for, whose key unwraps it counts)."""
    context = contextvars.copy_context()
    return functools.partial(context.run, call)


class Budget:
    """What a call under a deadline sees: whether it was abandoned, and where it reports the
    bytes it moved (each extends the deadline at the slowest acceptable rate)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.bytes = 0
        self._lock = threading.Lock()

    def moved(self, nbytes: int) -> None:
        self.bytes += nbytes  # one writer (the call's thread); the waiter only reads

    def cancel(self) -> None:
        """Abandon the call: once this returns, `deliver` writes nothing more."""
        with self._lock:
            self.cancelled.set()

    def deliver(self, write: Callable[[], object], what: str) -> None:
        """Run `write` (bytes copied into the caller's memory) unless the call was abandoned:
        a caller that gave up may already use that memory for something else."""
        with self._lock:
            if self.cancelled.is_set():
                raise StoreTimeoutError(f"{what} abandoned")
            write()


def call_with_deadline(
    work: Callable[[Budget], T], *, seconds: float, what: str, rate: float | None = None
) -> T:
    """`work(budget)` on a daemon worker: its result or error, or `StoreTimeoutError` once
    `seconds` pass (plus, with `rate`, the bytes it reported moving at that rate). The call is
    then abandoned: `budget.cancelled` is set and its result, whenever it comes, is dropped."""
    budget = Budget()
    future = submit(lambda: work(budget))
    started = time.monotonic()
    while True:
        allowed = seconds + (budget.bytes / rate if rate else 0.0)
        remaining = started + allowed - time.monotonic()
        # Waiting on the future, not on its result: a TimeoutError the call raises itself is
        # its answer, not the deadline passing.
        wait([future], timeout=max(0.0, remaining))
        if future.done():
            return future.result()
        if remaining > 0:
            continue  # bytes may have moved meanwhile: the allowance is computed again
        budget.cancel()
        if budget.bytes:
            raise StoreTimeoutError(
                f"{what}: too slow ({budget.bytes} bytes in {allowed:.1f} s, under "
                f"{rate or 0:.0f} bytes/s)"
            )
        raise StoreTimeoutError(f"{what}: no answer within {seconds:.1f} s")
