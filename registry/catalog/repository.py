"""The catalog, the service's only door to SQL: `Catalog` composed of its parts (one per group of
tables, each in its own module of this package) and the transactions they all run in: reads, and
writes retried on a race, each under the catalog's one write lock and journaled before it commits.

Every name other modules import from here stays importable from here (`add_version`,
`insert_key_slot`, `store_blob_row`, `append_audit`, `audit_hash`, ...); the parts live in:

- `parts`: the base of the parts and the row conversions they share
- `identity`: the registry id and the manifest cache
- `versions`: models, versions and files; the commit of a push
- `aliases`: aliases and their moves
- `audit`: the audit hash chain
- `groupcommit`: concurrent callers' audit entries committed together, each caller returning
  once its own is committed
- `expiry`: retention policies, expiry and deletion (tombstones)
- `gc`: leases, sweeps and unreferenced objects
- `placements`: placements, key slots and retired keys
- `tokens`: API tokens
- `holds`: legal holds
- `outbox`: the journal's entries, marks and epochs
- `deliveries`: webhook event deliveries
- `browse`: the web UI's paged reads (models, versions, alias moves, the audit trail)
- `tags`: tags on versions
- `search`: versions found by names, tags, metadata and messages; a version's metadata
- `uisessions`: web UI sessions
- `policies`: signer policies (who must have signed before an alias moves)
- `objects`: stored objects found by store name (object URLs) and the versions using them

Beside them, `restore` holds what a catalog rebuild writes (outside `Catalog`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from registry.catalog.aliases import AliasesPart
from registry.catalog.audit import AUDIT_LOCK, GENESIS, AuditPart, append_audit, audit_hash
from registry.catalog.browse import BrowsePart
from registry.catalog.deliveries import DeliveriesPart
from registry.catalog.expiry import NO_RULE, ExpiryPart
from registry.catalog.gc import GcPart
from registry.catalog.groupcommit import GroupCommit
from registry.catalog.holds import HoldsPart
from registry.catalog.identity import IdentityPart
from registry.catalog.journal import capture_changes, write_entry
from registry.catalog.lite import unavailable
from registry.catalog.models import AuditEvent
from registry.catalog.objects import ObjectsPart
from registry.catalog.outbox import OutboxPart
from registry.catalog.placements import PlacementsPart, insert_key_slot
from registry.catalog.policies import PoliciesPart
from registry.catalog.search import SearchPart
from registry.catalog.tags import TagsPart
from registry.catalog.tokens import TokensPart
from registry.catalog.uisessions import UiSessionsPart
from registry.catalog.uploads import UploadsPart
from registry.catalog.versions import VersionsPart, add_version, store_blob_row
from registry.errors import ConflictError, StorageError

__all__ = [
    "COMMIT_ATTEMPTS",
    "GENESIS",
    "NO_RULE",
    "Catalog",
    "add_version",
    "append_audit",
    "audit_hash",
    "insert_key_slot",
    "store_blob_row",
    "write_entry",
]

T = TypeVar("T")
COMMIT_ATTEMPTS = 10


def _is_contention(error: OperationalError) -> bool:
    """A lock or serialisation conflict with another writer (worth retrying)."""
    code = getattr(error.orig, "sqlstate", None)
    if code in ("40001", "40P01", "55P03"):
        return True
    return "database is locked" in str(error.orig) or "database table is locked" in str(error.orig)


def _unavailable(error: DBAPIError) -> StorageError:
    return unavailable(str(error.orig).strip().splitlines()[0] if error.orig else error)


class Catalog(
    IdentityPart,
    ExpiryPart,
    HoldsPart,
    VersionsPart,
    AliasesPart,
    AuditPart,
    OutboxPart,
    GcPart,
    TokensPart,
    DeliveriesPart,
    PlacementsPart,
    BrowsePart,
    UiSessionsPart,
    UploadsPart,
    PoliciesPart,
    TagsPart,
    SearchPart,
    ObjectsPart,
):
    """The catalog: every query and write of the registry's database (the methods come from the
    parts it is composed of; the transactions they run in are these)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        capture_changes(self._sessions)
        # Outbox entries this handle wrote: its owner drains the journal when it has some.
        self.journaled = 0
        # Audit entries of concurrent callers (a server's key-broker calls) share transactions.
        self.audit_writes = GroupCommit(self.append_audits)

    def close(self) -> None:
        self.engine.dispose()

    def prepare(self) -> None:
        """Pay SQLAlchemy's first-use costs (the mappers' configuration, a pooled connection)
        now, for a caller about to write whose data is still streaming (a load's audit)."""
        configure_mappers()
        with self._read() as session:
            session.execute(select(AuditEvent.id).limit(1)).all()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except DBAPIError as error:
            raise _unavailable(error) from None

    def _transient(self, work: Callable[[Session], T], *, what: str) -> T:
        return _transient_write(self._sessions, work, what=what)

    def _retrying(self, work: Callable[[Session], T], *, what: str) -> T:
        """Run `work` in a transaction, again on a unique-key race or a lock/serialisation
        conflict; any other database error is the catalog being unavailable, not a race."""

        def serialised(session: Session) -> T:
            _serialise(session)
            result = work(session)
            if write_entry(session) is not None:
                self.journaled += 1
            return result

        return _transient_write(self._sessions, serialised, what=what)


def _transient_write(
    sessions: sessionmaker[Session], work: Callable[[Session], T], *, what: str
) -> T:
    """`work` in a transaction of its own, retried on a unique-key race or contention (any other
    database error is the catalog being unavailable). Alone, without the catalog's write lock
    or a journal entry: for rows no other catalog write depends on and no rebuild needs (upload
    sessions), so that they do not queue behind pushes and promotes; `_retrying` adds both."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            with sessions.begin() as session:
                return work(session)
        except SQLIntegrityError:
            pass
        except OperationalError as error:
            if not _is_contention(error):
                raise _unavailable(error) from None
        except DBAPIError as error:
            raise _unavailable(error) from None
        if attempt < COMMIT_ATTEMPTS - 1:
            time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # noqa: S311
    raise ConflictError(
        f"{what}: too many concurrent changes, nothing was committed",
        hint="run the same command again; stored data is reused",
    )


def _serialise(session: Session) -> None:
    """Every catalog write takes one PostgreSQL transaction-level lock first, so each reads what
    every earlier write committed and decides on it alone: a push's commit, an alias move, an
    expiry and a gc claim can never interleave (SQLite's BEGIN IMMEDIATE gives the same)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
