"""Bounded fan-out: a function over items on a few threads, stopping at the first failure,
for work that waits on many store round trips (lock checks, legal holds, sizes).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from registry.storage.deadline import carried

R = TypeVar("R")
T = TypeVar("T")


# Lock requests (legal holds, lock checks) in flight per region: each is a few S3 round trips,
# so a version's objects are changed together rather than one after another; S3 clients keep
# at least 10 connections per region.
LOCK_REQUESTS = 8


class _NotStartedError(Exception):
    """A call `bounded_map` did not start because an earlier one had failed."""


def bounded_map(
    function: Callable[[T], R], items: Sequence[T], *, limit: int, name: str
) -> list[R]:
    """`function` over `items` on at most `limit` threads, results in the items' order. Once a
    call fails no further call starts; the calls already running finish, and then the failure
    of the earliest item is raised (so a failure leaves nothing running behind the caller)."""
    if len(items) <= 1 or limit <= 1:
        return [function(item) for item in items]
    failed = threading.Event()

    def guarded(item: T) -> R:
        if failed.is_set():
            raise _NotStartedError
        try:
            return function(item)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(max_workers=min(limit, len(items)), thread_name_prefix=name)
    try:
        # Each call runs in the operation's context (its key unwraps are the operation's).
        futures = [pool.submit(carried(functools.partial(guarded, item))) for item in items]
        wait(futures)
    except BaseException:
        failed.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, _NotStartedError):
            raise error
    return [future.result() for future in futures]
