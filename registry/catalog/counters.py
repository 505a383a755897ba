"""The server fleet's shared limit counts in the catalog's database (`limit_counts`,
`limit_signals`): add one process's counts and read back the fleet's, in one transaction per
swap; claim a signal for one window; prune what has aged out.

Outside `Catalog`'s write path on purpose: these rows are transient, so a swap takes neither the
catalog's one write lock (it would queue behind pushes and serialise every server process) nor
a journal entry. Rows are written in key order, so two processes' swaps never deadlock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from registry.catalog.lite import unavailable
from registry.catalog.models import LimitCount, LimitSignal
from registry.records import CountCell, CountSpan

_BATCH = 500  # rows per statement: far below every driver's limit on parameters
PRUNE_EVERY = 10.0  # seconds between one process's prunes


class CatalogCounters:
    """The fleet's counts in the catalog's database (PostgreSQL, or SQLite for processes on
    one host)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._next_prune = 0.0

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except DBAPIError as error:
            detail = str(error.orig).strip().splitlines()[0] if error.orig else error
            raise unavailable(f"shared limits: {detail}") from None

    def exchange(
        self, deltas: Mapping[CountCell, int], wanted: Mapping[str, CountSpan]
    ) -> dict[CountCell, int]:
        """Add `deltas` to the fleet's counts, then read the fleet's counts of every wanted
        key from its oldest slot on (what this process just added included). Every
        PRUNE_EVERY seconds the same transaction drops what aged out of every wanted kind."""
        rows = [
            {"kind": kind, "key": key, "item": item, "slot": slot, "count": count}
            for (kind, key, item, slot), count in sorted(deltas.items())
            if count
        ]
        found: dict[CountCell, int] = {}
        with self._transaction() as connection:
            for start in range(0, len(rows), _BATCH):
                statement: Any = self._dialect.insert(LimitCount).values(
                    rows[start : start + _BATCH]
                )
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["kind", "key", "item", "slot"],
                        set_={"count": LimitCount.count + statement.excluded.count},
                    )
                )
            for kind, span in wanted.items():
                ordered = sorted(span.keys)
                for start in range(0, len(ordered), _BATCH):
                    query = select(
                        LimitCount.key, LimitCount.item, LimitCount.slot, LimitCount.count
                    ).where(
                        LimitCount.kind == kind,
                        LimitCount.key.in_(ordered[start : start + _BATCH]),
                        LimitCount.slot >= span.oldest,
                    )
                    for key, item, slot, count in connection.execute(query):
                        found[(kind, key, item, slot)] = count
            if wanted and time.monotonic() >= self._next_prune:
                self._prune(connection, wanted)
        return found

    def claim(self, kind: str, key: str, *, now: float, window: float) -> bool:
        """Whether this process raises signal `kind` for `key` now: no process has raised it
        within the last `window` seconds (then it is recorded as raised now)."""
        statement: Any = self._dialect.insert(LimitSignal).values(kind=kind, key=key, raised_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=["kind", "key"],
            set_={"raised_at": statement.excluded.raised_at},
            where=LimitSignal.raised_at <= now - window,
        ).returning(LimitSignal.kind)
        with self._transaction() as connection:
            return connection.execute(statement).first() is not None

    def _prune(self, connection: Connection, wanted: Mapping[str, CountSpan]) -> None:
        """Drop the counts of slots older than their kind's oldest that matters, and signals
        raised longer ago than any count matters (they no longer silence anything)."""
        self._next_prune = time.monotonic() + PRUNE_EVERY
        connection.execute(
            delete(LimitCount).where(
                or_(
                    *(
                        and_(LimitCount.kind == kind, LimitCount.slot < span.oldest)
                        for kind, span in wanted.items()
                    )
                )
            )
        )
        longest = max(span.lifetime for span in wanted.values())
        connection.execute(delete(LimitSignal).where(LimitSignal.raised_at < time.time() - longest))
