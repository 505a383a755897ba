"""Group commit: what concurrent callers of one catalog handle each write (an audit entry) is
committed together, in one transaction for all that queued while the previous one committed, and
every caller returns only once the transaction holding its own entry has committed.

No thread of its own: the first caller to find no transaction running commits its entry at once
(alone, without waiting for company: an idle registry pays nothing), and whoever queues meanwhile
waits; when that transaction ends, the first of them commits everything queued by then. When a
transaction fails, every caller whose entry it held raises its error: nothing it was to account
for (the keys of a key-broker call) is handed out unrecorded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from registry.errors import StorageError

T = TypeVar("T")

# A bound on one transaction (its time holding the catalog's write lock), not a tuning knob:
# a busier queue commits in several transactions in turn.
MOST_PER_TRANSACTION = 500


class _Waiting(Generic[T]):
    """One caller's entry and what became of it."""

    def __init__(self, entry: T) -> None:
        self.entry = entry
        self.done = threading.Event()
        self.leads = False  # this caller commits the next transaction
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Entries committed in groups by `commit` (one transaction for the entries it is given)."""

    def __init__(
        self, commit: Callable[[Sequence[T]], None], *, most: int = MOST_PER_TRANSACTION
    ) -> None:
        self._commit = commit
        self._most = most
        self._lock = threading.Lock()
        self._queue: list[_Waiting[T]] = []
        self._running = False
        # Transactions committed and entries they held (what `bench/fleet.py` and tests read).
        self.transactions = 0
        self.entries = 0

    @property
    def queued(self) -> int:
        """Entries waiting for a transaction (not the one running)."""
        with self._lock:
            return len(self._queue)

    def write(self, entry: T) -> None:
        """Commit `entry`, alone or with others queued beside it; return once it is committed,
        or raise what the transaction that held it raised (then it was not written)."""
        mine = _Waiting(entry)
        with self._lock:
            self._queue.append(mine)
            if not self._running:
                self._running = mine.leads = True
        if not mine.leads:
            mine.done.wait()
        if mine.leads:
            self._lead()
        if mine.error is not None:
            raise mine.error

    def _lead(self) -> None:
        """Commit the queue's first entries (the leader's own is the first), tell their callers,
        and hand the next transaction to the first caller still waiting."""
        with self._lock:
            batch, self._queue = self._queue[: self._most], self._queue[self._most :]
        error: BaseException | None = None
        try:
            self._commit([waiting.entry for waiting in batch])
        except BaseException as failed:  # noqa: BLE001 - handed to the callers it failed
            error = failed
        finally:
            if error is not None and not isinstance(error, Exception):
                # The leader is being stopped (an interrupt): its own caller sees that; the
                # others learn their entries were not written.
                stopped = StorageError(
                    "the catalog write holding this audit entry was interrupted before it "
                    "committed; nothing was handed out",
                    hint="try again",
                )
                for waiting in batch[1:]:
                    waiting.error = stopped
                batch[0].error = error
            else:
                for waiting in batch:
                    waiting.error = error
            with self._lock:
                if error is None:
                    self.transactions += 1
                    self.entries += len(batch)
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].done.set()
                else:
                    self._running = False
            for waiting in batch:
                waiting.done.set()
