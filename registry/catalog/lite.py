"""A SQLite catalog read through the standard library's `sqlite3`, without SQLAlchemy: the open
checks' usual outcome (this registry's catalog, at this release's schema), the reads `ls` and
`show` make (models, versions, a reference resolved, a cached manifest, a version's tags), and
those a load makes before its first tensor (the journal's outbox and marks it compares with the
stores', a file's key slots).

Importing SQLAlchemy takes longer than the whole 0.3 s a listing may take (docs/benchmarks.md,
"CLI start-up"), so a command that only lists opens the catalog through here and SQLAlchemy is
imported only when something needs more; and a serving process's first SQLAlchemy query (the
dialect's import, the engine, the mappers' configuration, each statement's first compilation)
costs it 30-50 ms before the first tensor (docs/benchmarks.md, issue 16).

`open_reads` answers None whenever anything is not as usual (another database, no file, another
schema revision, no or another identity, a file that is not a database): the full open
(`db.open_catalog_engine`) then runs and migrates, claims or refuses with its own errors, so this
path never decides an error case. Each read answers exactly
what the same read of `Catalog` answers (tests/test_catalog_lite.py compares them).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from registry.crypto.keys import WrappedKey
from registry.errors import AmbiguousReferenceError, NotFoundError, StorageError
from registry.records import (
    FileRecord,
    JournalEpochRecord,
    ModelRecord,
    TagRecord,
    VersionRecord,
)
from registry.refs import Reference

# The newest migration of this release. A test checks it against the scripts; comparing with it
# first lets every command skip importing Alembic (a quarter second) when no migration is due.
HEAD_REVISION = "0015"
# Only the plain form (what init writes): anything else (a query, escapes, another driver) is left
# to SQLAlchemy's URL parsing in the full open.
_PLAIN_SQLITE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///([^?%#]+)")
_BUSY_TIMEOUT = 60  # seconds, as the SQLAlchemy engine waits (db.create_catalog_engine)

_VERSION_COLUMNS = (
    "v.id, m.name, v.number, v.digest, v.manifest_object, v.message, v.created_at, "
    "v.created_by, v.signed_by, v.file_count, v.total_size, v.tensor_count, "
    "v.parameter_count, v.dtypes, v.expired_at, v.expired_by, v.expiry_reason"
)


class CatalogReads(Protocol):
    """The reads `Catalog` and `LiteCatalog` both answer, alike."""

    def models(self) -> list[ModelRecord]: ...

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]: ...

    def resolve(self, ref: Reference) -> VersionRecord: ...

    def cached_manifest(self, digest: str) -> bytes | None: ...

    def version_tags(self, name: str, number: int) -> list[TagRecord]: ...

    def key_slots(self, digest: str, purpose: str) -> list[WrappedKey]: ...

    def journal_epoch(self) -> JournalEpochRecord: ...

    def journal_marks(self) -> dict[str, int]: ...

    def journal_head(self) -> int: ...

    def journal_oldest_after(self, seq: int) -> datetime | None: ...

    def journal_after(self, seq: int, *, limit: int) -> list[tuple[int, datetime, str]]: ...


def unavailable(detail: object) -> StorageError:
    """The error of a catalog that failed a read (the same words from either driver)."""
    return StorageError(
        f"catalog unavailable: {detail}",
        hint="check that the catalog database is reachable and has space "
        "(catalog.url in config.toml, or MODEL_REGISTRY_CATALOG_URL)",
    )


def open_reads(url: str, *, registry_id: str) -> LiteCatalog | None:
    """The catalog at `url` for reads, when it is a SQLite file that is registry
    `registry_id`'s catalog at this release's schema; else None (open it in full)."""
    match = _PLAIN_SQLITE_URL.fullmatch(url)
    if match is None or match.group(1) == ":memory:":
        return None
    path = Path(match.group(1))
    try:
        if path.stat().st_size == 0:
            return None
        reads = LiteCatalog(path)
        with reads._read() as connection:
            revision, owner = connection.execute(
                "SELECT (SELECT version_num FROM alembic_version), "
                "(SELECT registry_id FROM catalog_identity)"
            ).fetchone()
    except (OSError, sqlite3.Error, StorageError):
        return None
    if revision != HEAD_REVISION or owner != registry_id:
        return None
    return reads


def _time(value: Any) -> datetime | None:
    # SQLAlchemy keeps SQLite times as naive UTC text ("2026-12-06 22:11:18.123456");
    # the catalog's UTCDateTime gives them back aware.
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class LiteCatalog:
    """Reads of one SQLite catalog file, each in a read transaction of its own connection (so
    any thread may read: nothing is shared but the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._uri = f"file:{quote(str(path))}?mode=rw"  # never creates a file

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = sqlite3.connect(
                self._uri,
                uri=True,
                timeout=_BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise unavailable(_first_line(error)) from None
        try:
            # One snapshot for every statement of a read, as in a SQLAlchemy read transaction.
            connection.execute("BEGIN")
            yield connection
        except sqlite3.Error as error:
            raise unavailable(_first_line(error)) from None
        finally:
            connection.close()

    def models(self) -> list[ModelRecord]:
        with self._read() as connection:
            rows = connection.execute(
                "SELECT m.name, m.created_at, count(v.id), max(v.number), "
                "coalesce(sum(v.total_size), 0), "
                "(SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN ("
                "SELECT f.digest FROM version_files f JOIN versions l ON l.id = f.version_id "
                "WHERE l.model_id = m.id AND l.expired_at IS NULL)) "
                "FROM models m LEFT OUTER JOIN versions v "
                "ON v.model_id = m.id AND v.expired_at IS NULL "
                "GROUP BY m.id ORDER BY m.name"
            ).fetchall()
        return [
            ModelRecord(name, _aware(created), count, latest, int(size), int(stored))
            for name, created, count, latest, size, stored in rows
        ]

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]:
        """The model's live versions, oldest first (with `expired`, the tombstones too)."""
        with self._read() as connection:
            model_id = _model_id(connection, name)
            if model_id is None:
                raise NotFoundError(f"model {name} does not exist")
            live = "" if expired else " AND v.expired_at IS NULL"
            return _versions(
                connection,
                f"v.model_id = :model{live} ORDER BY v.number",
                {"model": model_id},
            )

    def resolve(self, ref: Reference) -> VersionRecord:
        with self._read() as connection:
            model_id = _model_id(connection, ref.name)
            if model_id is None:
                raise NotFoundError(f"model {ref.name} does not exist")
            where = {"model": model_id}
            if ref.alias is not None:
                alias = connection.execute(
                    "SELECT version_id FROM aliases WHERE model_id = :model AND name = :alias",
                    {**where, "alias": ref.alias},
                ).fetchone()
                if alias is None:
                    raise NotFoundError(
                        f"{ref}: model {ref.name} has no alias {ref.alias!r}",
                        hint=f"`model-registry history {ref.name}` lists its aliases",
                    )
                found = _versions(
                    connection, "v.model_id = :model AND v.id = :id", {**where, "id": alias[0]}
                )
                assert found  # a foreign key; expiry never takes an aliased one
                return found[0]
            if ref.number is not None:
                found = _versions(
                    connection,
                    "v.model_id = :model AND v.number = :number",
                    {**where, "number": ref.number},
                )
                if not found:
                    raise NotFoundError(f"{ref} does not exist")
                if found[0].expired_at is not None:
                    raise _expired(found[0])
                return found[0]
            if ref.digest_prefix is not None:
                # LIKE, as SQLAlchemy's startswith() compiles on SQLite.
                found = _versions(
                    connection,
                    "v.model_id = :model AND v.digest LIKE :prefix || '%' ORDER BY v.number",
                    {**where, "prefix": f"blake3:{ref.digest_prefix}"},
                )
                matches = [v for v in found if v.expired_at is None]
                if not matches and found:
                    raise _expired(found[-1])
                if not matches:
                    raise NotFoundError(f"{ref} matches no version")
                if len(matches) > 1:
                    raise AmbiguousReferenceError(f"{ref} matches more than one version")
                return matches[0]
            found = _versions(
                connection,
                "v.model_id = :model AND v.expired_at IS NULL ORDER BY v.number DESC LIMIT 1",
                where,
            )
            if not found:
                raise NotFoundError(f"model {ref.name} has no versions")
            return found[0]

    def version_tags(self, name: str, number: int) -> list[TagRecord]:
        """The tags of version `number` of model `name`, by tag (`show` prints them)."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT t.tag, t.added_at, t.added_by FROM tags t "
                "JOIN versions v ON v.id = t.version_id JOIN models m ON m.id = v.model_id "
                "WHERE m.name = :name AND v.number = :number ORDER BY t.tag",
                {"name": name, "number": number},
            ).fetchall()
        return [TagRecord(name, number, tag, _aware(at), by) for tag, at, by in rows]

    def cached_manifest(self, digest: str) -> bytes | None:
        """A version's signed manifest envelope, if cached (the caller checks it)."""
        with self._read() as connection:
            row = connection.execute(
                "SELECT envelope FROM manifest_cache WHERE digest = :digest", {"digest": digest}
            ).fetchone()
        return None if row is None else bytes(row[0])

    def key_slots(self, digest: str, purpose: str) -> list[WrappedKey]:
        """Every recorded slot of an object (one per key-encryption key)."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT provider, kek_id, wrapped FROM key_slots "
                "WHERE digest = :digest AND purpose = :purpose",
                {"digest": digest, "purpose": purpose},
            ).fetchall()
        return [WrappedKey(provider, kek_id, bytes(wrapped)) for provider, kek_id, wrapped in rows]

    def journal_epoch(self) -> JournalEpochRecord:
        """The current epoch of the journal in the stores."""
        with self._read() as connection:
            return _current_epoch(connection)

    def journal_marks(self) -> dict[str, int]:
        """How far each region's journal goes in the current epoch (never written: absent)."""
        with self._read() as connection:
            current = _current_epoch(connection).epoch
            rows = connection.execute(
                "SELECT region, seq FROM journal_marks WHERE epoch = :epoch", {"epoch": current}
            ).fetchall()
        return {region: int(seq) for region, seq in rows}

    def journal_head(self) -> int:
        """The number of the newest outbox entry (0: none yet)."""
        with self._read() as connection:
            row = connection.execute("SELECT max(seq) FROM journal_entries").fetchone()
        return int(row[0] or 0)

    def journal_oldest_after(self, seq: int) -> datetime | None:
        """When the oldest entry after `seq` was committed (None: nothing after it)."""
        with self._read() as connection:
            row = connection.execute(
                "SELECT at FROM journal_entries WHERE seq > :seq ORDER BY seq LIMIT 1",
                {"seq": seq},
            ).fetchone()
        return None if row is None else _time(row[0])

    def journal_after(self, seq: int, *, limit: int) -> list[tuple[int, datetime, str]]:
        """Up to `limit` outbox entries after `seq`, in order: (seq, time, body)."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT seq, at, body FROM journal_entries WHERE seq > :seq "
                "ORDER BY seq LIMIT :limit",
                {"seq": seq, "limit": limit},
            ).fetchall()
        return [(int(number), _aware(at), body) for number, at, body in rows]


def _current_epoch(connection: sqlite3.Connection) -> JournalEpochRecord:
    row = connection.execute(
        "SELECT epoch, started_at, parent, base FROM journal_epochs "
        "ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        raise StorageError("the catalog has no journal epoch (an incomplete migration)")
    epoch, started_at, parent, base = row
    return JournalEpochRecord(epoch, _aware(started_at), parent, int(base))


def _first_line(error: sqlite3.Error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else str(error)


def _aware(value: Any) -> datetime:
    moment = _time(value)
    assert moment is not None  # a NOT NULL column
    return moment


def _model_id(connection: sqlite3.Connection, name: str) -> int | None:
    row = connection.execute("SELECT id FROM models WHERE name = :name", {"name": name}).fetchone()
    return None if row is None else int(row[0])


def _versions(
    connection: sqlite3.Connection, where: str, parameters: dict[str, Any]
) -> list[VersionRecord]:
    """The records of the versions `where` selects, in its order, with their files (by path)."""
    rows = connection.execute(
        f"SELECT {_VERSION_COLUMNS} FROM versions v JOIN models m ON m.id = v.model_id "  # noqa: S608 - fixed fragments, values bound
        f"WHERE {where}",
        parameters,
    ).fetchall()
    files: dict[int, list[FileRecord]] = {row[0]: [] for row in rows}
    if files:
        marks = ", ".join("?" * len(files))
        for version_id, path, size, digest, tensors in connection.execute(
            "SELECT version_id, path, size, digest, tensor_count FROM version_files "  # noqa: S608 - placeholders only
            f"WHERE version_id IN ({marks}) ORDER BY path",
            list(files),
        ):
            files[version_id].append(FileRecord(path, size, digest, tensors))
    return [
        VersionRecord(
            name=name,
            number=number,
            digest=digest,
            manifest_object=manifest_object,
            message=message,
            created_at=_aware(created_at),
            created_by=created_by,
            signed_by=signed_by,
            file_count=file_count,
            total_size=total_size,
            tensor_count=tensor_count,
            parameter_count=parameter_count,
            dtypes=tuple(filter(None, dtypes.split(","))),
            files=tuple(files[version_id]),
            expired_at=_time(expired_at),
            expired_by=expired_by,
            expiry_reason=expiry_reason,
        )
        for (
            version_id,
            name,
            number,
            digest,
            manifest_object,
            message,
            created_at,
            created_by,
            signed_by,
            file_count,
            total_size,
            tensor_count,
            parameter_count,
            dtypes,
            expired_at,
            expired_by,
            expiry_reason,
        ) in rows
    ]


def _expired(version: VersionRecord) -> NotFoundError:
    assert version.expired_at is not None
    return expired_error(
        version.name, version.number, version.expired_at, version.expired_by, version.expiry_reason
    )


def expired_error(
    name: str, number: int, at: datetime, by: str | None, reason: str | None
) -> NotFoundError:
    """The refusal of a reference to a tombstone (either driver's)."""
    return NotFoundError(
        f"{name}@{number} was {reason or 'expired'} on {at:%Y-%m-%d %H:%M} UTC by {by}",
        hint=f"`model-registry audit {name}` shows why; "
        f"`model-registry ls {name}` lists the versions that remain",
    )
