"""The context an operation runs in: the open registry it works on (`Home`: settings, catalog,
regions, signer, what its handles share) and who acts (`Context`: actor, role, and the count of
the data keys their operations unwrap). A token's request is a context of its own over the same
home, never a copy of the facade.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from registry.config import Settings
from registry.ops import access
from registry.records import TokenRecord

if TYPE_CHECKING:
    from registry.blobstore import BlobStore
    from registry.catalog.lite import CatalogReads
    from registry.catalog.repository import Catalog
    from registry.crypto.keys import KeyProvider
    from registry.crypto.signing import Signer
    from registry.ops.journaling import JournalRound
    from registry.ops.sharedlimits import CounterStore
    from registry.replication import ReplicaSet

T = TypeVar("T")


class UnwrapCount:
    """Data keys unwrapped, counted from whichever thread the unwrap ran on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, count: int = 1) -> None:
        with self._lock:
            self.value += count


# The counts the unwraps of the running operation go to: the operation's own and its context's.
# Worker threads the operation starts run in a copy of its contextvars (`storage.deadline`).
_counting: ContextVar[tuple[UnwrapCount, ...]] = ContextVar("unwrap_counts", default=())


def note_unwrap(_digest: str) -> None:
    """The blob stores' unwrap hook: one more data key for whatever operation runs."""
    for count in _counting.get():
        count.add()


class OnFirstUse(Generic[T]):
    """A part of a home made the first time it is asked for: once, whichever thread asks."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self.value: T | None = None  # None until made
        self._background: threading.Thread | None = None

    def get(self) -> T:
        value = self.value
        if value is None:
            with self._lock:
                value = self.value
                if value is None:
                    value = self.value = self._make()
        return value

    def in_background(self, then: Callable[[T], object] = lambda _value: None) -> None:
        """Make it now on a thread of its own, then call `then` with it, unless it is made or
        being made: for a part a command will need later, made while it does other work. A
        failure there is left for the `get` that needs it (it tries again and raises)."""
        with self._lock:
            if self.value is not None or self._background is not None:
                return

            def make() -> None:
                with contextlib.suppress(Exception):
                    then(self.get())

            self._background = threading.Thread(target=make, name="open-on-first-use", daemon=True)
            self._background.start()

    def settle(self) -> None:
        """Wait for what `in_background` started (before closing what it may have made)."""
        background = self._background
        if background is not None:
            background.join()


@dataclass
class Home:
    """One open registry, shared by every context over it (one per API request).

    Its catalog, regions and signer are opened on first use (`ops.home` says how), so a command
    pays only for what it uses: `ls` and `show` read the catalog through `reads` and load no
    key, open no store and, on SQLite, do not import SQLAlchemy."""

    settings: Settings
    opened_catalog: OnFirstUse[Catalog]
    opened_replicas: OnFirstUse[ReplicaSet]
    opened_signer: OnFirstUse[Signer]
    # Shared by every context over this home (one per API request), so a server compares the
    # journal every ten minutes, not on every request.
    opened_journal_round: OnFirstUse[JournalRound]
    # Where a server fleet shares its limit counts (`[api] shared_state`), on first use.
    opened_counters: OnFirstUse[CounterStore]
    chunks_per_read: int
    # The catalog's reads without SQLAlchemy (a SQLite catalog found as usual at open), else None.
    lite: CatalogReads | None = None
    # Where a stand-in catalog came from (`open_for_recovery`): nothing is journaled or changed.
    provisional: str | None = None
    stand_in: Path | None = None  # the temporary directory of a stand-in catalog
    # How long a writer waits for a gc that is deleting an object it needs.
    sweep_wait: float = 120.0
    # Named points where tests pause a push or a gc to interleave them with another.
    checkpoints: dict[str, Callable[[], None]] = field(default_factory=dict)
    closed: bool = False

    @property
    def catalog(self) -> Catalog:
        return self.opened_catalog.get()

    @property
    def reads(self) -> CatalogReads:
        """Where listings read: the catalog once it is open, else its reads without SQLAlchemy."""
        if self.opened_catalog.value is not None or self.lite is None:
            return self.catalog
        return self.lite

    @property
    def replicas(self) -> ReplicaSet:
        return self.opened_replicas.get()

    @property
    def signer(self) -> Signer:
        return self.opened_signer.get()

    @signer.setter
    def signer(self, signer: Signer) -> None:
        self.opened_signer.value = signer

    @property
    def journal_round(self) -> JournalRound:
        return self.opened_journal_round.get()

    @property
    def store(self) -> BlobStore:
        """The preferred region's store (the only one of a single-store registry)."""
        return self.replicas.primary

    @property
    def keys(self) -> KeyProvider:
        return self.store.keys


class Context:
    """Who acts on a home: every operation takes one and checks its role against it."""

    def __init__(self, home: Home, *, actor: str, role: str) -> None:
        self.home = home
        self.actor = actor
        self.role = access.check_role(role)
        self.unwraps = UnwrapCount()  # every data key this context's operations unwrapped

    def for_token(self, token: TokenRecord) -> Context:
        """The context of a token's request: the token's role (never more than this
        context's: a record made up in-process raises nobody), and the token named as the
        actor of everything it does (the audit trail)."""
        role = access.lower(token.role, self.role)
        return Context(self.home, actor=f"token:{token.name}:{token.id}", role=role)

    def require(self, operation: str) -> None:
        access.check(self.role, operation)

    def allows(self, operation: str) -> bool:
        return access.allows(self.role, operation)

    @contextmanager
    def counting_unwraps(self) -> Iterator[UnwrapCount]:
        """Count the data keys unwrapped until the block ends, for its audit entry (and this
        context's total)."""
        count = UnwrapCount()
        counts = _counting.get()
        # An operation inside another counts once towards the context's total.
        mine = (count,) if self.unwraps in counts else (count, self.unwraps)
        token = _counting.set((*counts, *mine))
        try:
            yield count
        finally:
            _counting.reset(token)

    # The shared state, as the operations read it.
    @property
    def settings(self) -> Settings:
        return self.home.settings

    @property
    def catalog(self) -> Catalog:
        return self.home.catalog

    @property
    def reads(self) -> CatalogReads:
        return self.home.reads

    @property
    def replicas(self) -> ReplicaSet:
        return self.home.replicas

    @property
    def signer(self) -> Signer:
        return self.home.signer

    @property
    def store(self) -> BlobStore:
        return self.home.store

    @property
    def keys(self) -> KeyProvider:
        return self.home.keys

    @property
    def provisional(self) -> str | None:
        return self.home.provisional
