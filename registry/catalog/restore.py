"""What a catalog rebuild writes (`registry.rebuild` decides what, from the stores): a new, empty
catalog made ready, the journal's entries replayed into it, versions restored from version
records, key slots and placements as the regions hold them, and a journal epoch of its own, all in
the one transaction of a `Restore`.

A rebuild writes outside `Catalog` (its transaction is one, not retried, and what it replays is
not journaled again), so these are its only door to SQL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Engine, delete, func, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from registry.catalog.db import create_catalog_engine, migrate
from registry.catalog.journal import (
    REDACTED_DETAILS,
    TABLES,
    TOKEN_ACTIONS,
    capture_session,
    decode_row,
    decode_value,
    parse_body,
    table,
    write_entry,
)
from registry.catalog.models import (
    AuditEvent,
    Blob,
    CachedManifest,
    JournalEntry,
    JournalEpoch,
    Model,
    Version,
    VersionFile,
    utcnow,
)
from registry.catalog.parts import version_record
from registry.catalog.placements import insert_key_slot, placement_row
from registry.catalog.versions import add_version, store_blob_row
from registry.crypto.keys import WrappedKey
from registry.errors import ConflictError, IntegrityError, InvalidInputError, StorageError
from registry.records import (
    BlobRecord,
    NewBlob,
    NewVersion,
    PlacementRecord,
    VersionRecord,
)

EPOCH_STEP = timedelta(microseconds=1)
# Tables whose integer keys come from a sequence on PostgreSQL (moved past the restored rows).
_SERIAL = {"models": "id", "versions": "id", "alias_moves": "id", "audit_events": "id"}


class ReadEntry(Protocol):
    """One entry of a region's journal, as `registry.journal` reads it."""

    @property
    def seq(self) -> int: ...

    @property
    def at(self) -> datetime: ...

    @property
    def body(self) -> str: ...

    @property
    def segment(self) -> str: ...


def safe_url(url: str) -> str:
    """A catalog URL as it may be shown (no password); InvalidInputError when it is none."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        raise InvalidInputError(
            f"{url!r} is not a database URL",
            hint="sqlite:////path/catalog.db or postgresql+psycopg://user@host/database",
        ) from None


class RestoreTarget:
    """The new catalog's engine: refused unless empty; SQLite built beside its final path."""

    def __init__(self, url: str, *, registry_id: str) -> None:
        self.url = make_url(url)
        self.registry_id = registry_id
        self.final: Path | None = None
        self.building: Path | None = None
        if self.url.get_backend_name() == "sqlite" and self.url.database not in (
            None,
            "",
            ":memory:",
        ):
            self.final = Path(str(self.url.database))
            self.building = self.final.with_name(self.final.name + ".rebuilding")

    def __enter__(self) -> Engine:
        if self.final is not None and self.building is not None:
            if self.final.exists() and self.final.stat().st_size > 0:
                raise ConflictError(
                    f"the catalog {self.final} exists; a rebuild never overwrites one",
                    hint="move it aside (keep it: it may hold what the stores lack), or pass "
                    "--catalog with a new database",
                )
            self.building.parent.mkdir(parents=True, exist_ok=True)
            self.building.unlink(missing_ok=True)
            url = self.url.set(database=str(self.building))
        else:
            url = self.url
        shown = self.url.render_as_string(hide_password=True)
        try:
            self.engine = create_catalog_engine(url.render_as_string(hide_password=False))
        except (SQLAlchemyError, ValueError) as error:
            raise InvalidInputError(
                f"cannot use {shown} as a catalog: {error}",
                hint="a SQLAlchemy URL: sqlite:////path/catalog.db or "
                "postgresql+psycopg://user@host/database",
            ) from None
        try:
            _require_empty(self.engine, shown)
            migrate(self.engine, registry_id=self.registry_id)
        except OperationalError as error:
            self.engine.dispose()
            raise StorageError(
                f"cannot reach the catalog database {shown}: {error.orig}",
                hint="create the database first (an empty one), and check the URL",
            ) from None
        except BaseException:
            self.engine.dispose()
            raise
        return self.engine

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.engine.dispose()
        if self.building is None or self.final is None:
            return
        if exc_type is None:
            os.replace(self.building, self.final)
        else:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(self.building) + suffix).unlink(missing_ok=True)


def _require_empty(engine: Engine, shown: str) -> None:
    with engine.connect() as connection:
        present = set(inspect(connection).get_table_names())
        for name in ("models", "audit_events", "journal_entries"):
            if (
                name in present
                and connection.execute(select(func.count()).select_from(table(name))).scalar()
            ):
                raise ConflictError(
                    f"the catalog {shown} is not empty; a rebuild never writes over one",
                    hint="pass --catalog with a new, empty database",
                )


@contextmanager
def restoring(engine: Engine) -> Iterator[Restore]:
    """One transaction over the new catalog: committed when the block ends, else rolled back."""
    with Session(engine) as session, session.begin():
        yield Restore(session)


class Restore:
    """The rebuild's writes and reads of the new catalog, in its one transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def replay(self, entries: Sequence[ReadEntry]) -> None:
        """Apply every entry in order: its rows written over the same keys, its deletions
        done."""
        session = self.session
        for entry in entries:
            try:
                rows, deleted = parse_body(entry.body)
                for name in TABLES:
                    target = table(name)
                    for raw in rows.get(name, []):
                        values = decode_row(name, raw)
                        keys = target.primary_key.columns
                        condition = [column == values[column.name] for column in keys]
                        result = session.execute(update(target).where(*condition).values(**values))
                        done = cast(CursorResult[Any], result).rowcount
                        if not done:
                            session.execute(target.insert().values(**values))
                for name in reversed(TABLES):
                    target = table(name)
                    for key in deleted.get(name, []):
                        columns = list(target.primary_key.columns)
                        if len(key) != len(columns):
                            raise ValueError(f"a key of {name} has {len(key)} parts")
                        session.execute(
                            target.delete().where(
                                *[
                                    column == decode_value(column.type, value)
                                    for column, value in zip(columns, key, strict=True)
                                ]
                            )
                        )
                session.add(JournalEntry(seq=entry.seq, at=entry.at, body=entry.body))
                session.flush()
            except (ValueError, KeyError, TypeError, SQLAlchemyError) as error:
                raise IntegrityError(
                    f"journal entry {entry.seq} (in {entry.segment}) cannot be applied: {error}",
                    path=entry.segment,
                ) from None

    def fix_sequences(self) -> None:
        """PostgreSQL: each serial key's sequence moved past the rows written so far."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        for name, column in _SERIAL.items():
            self.session.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "  # noqa: S608
                    f"COALESCE((SELECT MAX({column}) FROM {name}), 0) + 1, false)"
                )
            )

    def capture(self) -> None:
        """From now on, what this transaction writes in the journaled tables is journaled (in
        one entry: `write_entry`)."""
        capture_session(self.session)

    def write_entry(self) -> None:
        """The journal entry of what was written since `capture`."""
        write_entry(self.session)

    # -- versions restored from version records ---------------------------------------------

    def has_version(self, name: str, digest: str, *, pushed_at: datetime) -> bool:
        """Whether the catalog has a version of model `name` with content `digest` created at
        or after `pushed_at`, or one that was live then (a push then made no new version)."""
        session = self.session
        model = session.scalar(select(Model).where(Model.name == name))
        if model is None:
            return False
        same = session.scalars(
            select(Version).where(Version.model_id == model.id, Version.digest == digest)
        ).all()
        return any(
            v.created_at >= pushed_at or v.expired_at is None or v.expired_at > pushed_at
            for v in same
        )

    def ensure_model(self, name: str, *, at: datetime, by: str) -> None:
        """Model `name`, created (at `at`, by `by`) unless it exists."""
        session = self.session
        if session.scalar(select(Model).where(Model.name == name)) is None:
            session.add(Model(name=name, created_at=at, created_by=by))
            session.flush()

    def needs_blob(self, digest: str) -> bool:
        """Whether blob `digest` has no row, or one swept by gc (to be stored as new)."""
        blob = self.session.get(Blob, digest)
        return blob is None or blob.swept_at is not None

    def store_blob(self, blob: NewBlob, at: datetime) -> None:
        store_blob_row(self.session, blob, at)

    def add_version(self, new: NewVersion, *, at: datetime, **audit: Any) -> int:
        """The next version of the (existing) model `new.name`, with its files and its `push`
        audit entry (`audit` adds to its details); its number."""
        session = self.session
        model = session.scalar(select(Model).where(Model.name == new.name))
        assert model is not None
        return add_version(session, model, new, at=at, **audit).number

    # -- what the stores hold -----------------------------------------------------------------

    def versions(self, *, by_id: bool = False) -> list[VersionRecord]:
        """Every version, expired ones too: by model and number (`by_id`: in the order their
        rows were made). Files in the order the database lists them."""
        session = self.session
        order = (Version.id,) if by_id else (Version.model_id, Version.number)
        found = []
        for version in session.scalars(select(Version).order_by(*order)).all():
            model = session.get(Model, version.model_id)
            assert model is not None
            files = session.scalars(select(VersionFile).where(VersionFile.version_id == version.id))
            found.append(version_record(version, model=model.name, files=files))
        return found

    def blob(self, digest: str) -> BlobRecord | None:
        row = self.session.get(Blob, digest)
        if row is None:
            return None
        return BlobRecord(
            row.digest, row.size, row.object_name, row.sealed_size, row.chunk_size, row.swept_at
        )

    def cache_manifest(self, digest: str, envelope: bytes) -> None:
        """A version's signed manifest envelope cached, unless it is."""
        if self.session.get(CachedManifest, digest) is None:
            self.session.add(CachedManifest(digest=digest, envelope=envelope))

    def insert_key_slot(self, digest: str, purpose: str, slot: WrappedKey, at: datetime) -> None:
        insert_key_slot(self.session, digest, purpose, slot, at)

    def add_placements(self, placements: Sequence[PlacementRecord], at: datetime) -> None:
        """New placement rows (updated `at`)."""
        for placement in placements:
            self.session.add(placement_row(placement, at))
        self.session.flush()

    # -- the rebuilt catalog's own journal ----------------------------------------------------

    def start_epoch(self, *, after: Sequence[datetime], parent: str | None, reason: str) -> None:
        """The catalog's only journal epoch: begun now, or later than every time in `after`
        (readers follow the newest epoch, whatever this host's clock says), based on its last
        entry."""
        session = self.session
        session.execute(delete(JournalEpoch))
        session.add(
            JournalEpoch(
                epoch=uuid.uuid4().hex,
                started_at=max([utcnow(), *(t + EPOCH_STEP for t in after)]),
                parent=parent,
                reason=reason,
                base=session.scalar(select(func.max(JournalEntry.seq))) or 0,
            )
        )

    def counts(self) -> dict[str, int]:
        """The number of rows of each journaled table, and of key slots and placements."""
        return {
            name: self.session.scalar(select(func.count()).select_from(table(name))) or 0
            for name in (*TABLES, "key_slots", "placements")
        }

    def token_links(self) -> list[tuple[int, str]]:
        """(id, hash) of every token event's audit entry restored as a chain link only."""
        return [
            (row.id, row.hash)
            for row in self.session.execute(
                select(AuditEvent.id, AuditEvent.hash)
                .where(
                    AuditEvent.action.in_(sorted(TOKEN_ACTIONS)),
                    AuditEvent.details == REDACTED_DETAILS,
                )
                .order_by(AuditEvent.id)
            )
        ]
