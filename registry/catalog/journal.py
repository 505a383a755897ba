"""The catalog side of the journal: which tables it carries, each committed transaction's rows
captured into the outbox (`journal_entries`), and rows turned to JSON and back.

Every write transaction of `Catalog` collects the rows it inserted, changed or deleted in the
journaled tables (an `after_flush` listener) and adds one `journal_entries` row holding their final
state before it commits: the journal can never miss a committed change, and a transaction that
rolls back leaves no entry. Copying the entries to the regions' stores is `registry.journal`'s job.

Not journaled: key slots and placements (they describe the stores, and a rebuild reads them from
the stores), API tokens (no secret, not even a hash, leaves the database; a rebuilt catalog has no
tokens), webhook deliveries, leases and sweeps (transient). The audit entries of token events are
journaled as chain links only (id, time, action and hashes), so the chain stays whole.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, LargeBinary, MetaData, Table, event, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from registry.catalog.models import Base, JournalEntry, UTCDateTime, utcnow

# In the order their rows are inserted (what they point at first).
TABLES = (
    "models",
    "blobs",
    "versions",
    "version_files",
    "version_meta",
    "tags",
    "aliases",
    "alias_moves",
    "legal_holds",
    "retention_policies",
    "signer_policies",
    "retired_keys",
    "audit_events",
)
TOKEN_ACTIONS = frozenset({"token-create", "token-revoke"})
# What a token event's audit entry holds once restored from the journal (see verify_audit).
REDACTED_DETAILS = '{"redacted":"token event: its content is not journaled"}'
_KEY = "journal.rows"


def table(name: str) -> Table:
    found = Base.metadata.tables[name]
    assert isinstance(found, Table)
    return found


def encode_value(column_type: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(column_type, UTCDateTime):
        # A migration reads SQLite's stored text back without the type: naive, but UTC.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat()
    if isinstance(column_type, LargeBinary):
        return base64.b64encode(value).decode()
    return value


def decode_value(column_type: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(column_type, UTCDateTime):
        return datetime.fromisoformat(value).astimezone(UTC)
    if isinstance(column_type, LargeBinary):
        return base64.b64decode(value)
    return value


def encode_row(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One row as JSON-ready values (token audit entries reduced to their chain link)."""
    row = {
        column.name: encode_value(column.type, values.get(column.name))
        for column in table(name).columns
    }
    if name == "audit_events" and row["action"] in TOKEN_ACTIONS:
        row.update(actor="", subject="registry", details=REDACTED_DETAILS)
    return row


def decode_row(name: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A journaled row back as column values (only the columns it names: a column a later
    release adds takes its default); ValueError naming what does not fit the table."""
    columns = table(name).columns
    unknown = set(row) - {column.name for column in columns}
    if unknown:
        raise ValueError(f"{name} has no column {sorted(unknown)[0]!r}")
    missing = [c.name for c in table(name).primary_key.columns if c.name not in row]
    if missing:
        raise ValueError(f"a row of {name} lacks its key {missing[0]!r}")
    return {c.name: decode_value(c.type, row[c.name]) for c in columns if c.name in row}


def key_of(name: str, row: Mapping[str, Any]) -> list[Any]:
    return [row[column.name] for column in table(name).primary_key.columns]


def entry_body(rows: Mapping[str, list[dict[str, Any]]], deleted: Mapping[str, list[Any]]) -> str:
    body = {
        "rows": {name: rows[name] for name in TABLES if rows.get(name)},
        "deleted": {name: deleted[name] for name in TABLES if deleted.get(name)},
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def capture_changes(sessions: sessionmaker[Session]) -> None:
    """Make every session of `sessions` remember what it wrote in the journaled tables."""
    event.listen(sessions, "after_flush", _remember)


def capture_session(session: Session) -> None:
    """The same for one session (a rebuild's, which writes outside `Catalog`)."""
    event.listen(session, "after_flush", _remember)


def _remember(session: Session, _context: Any) -> None:
    # Objects, not keys: a new row's identity is only settled once the flush is over.
    changes: dict[int, tuple[Any, bool]] = session.info.setdefault(_KEY, {})
    for obj in (*session.new, *session.dirty):
        if getattr(obj, "__tablename__", None) in TABLES:
            changes.pop(id(obj), None)
            changes[id(obj)] = (obj, False)
    for obj in session.deleted:
        if getattr(obj, "__tablename__", None) in TABLES:
            changes.pop(id(obj), None)
            changes[id(obj)] = (obj, True)


def write_entry(session: Session) -> int | None:
    """Add the outbox entry of what `session` wrote (call last, before the commit); its seq."""
    session.flush()
    changes = session.info.pop(_KEY, None)
    if not changes:
        return None
    final: dict[tuple[str, str], tuple[Any, bool]] = {}
    for obj, removed in changes.values():
        identity = inspect(obj).identity
        if identity is None:
            continue  # added and removed before any flush wrote it
        key = (obj.__tablename__, json.dumps(list(identity), default=str))
        final.pop(key, None)
        final[key] = (obj, removed)
    rows: dict[str, list[dict[str, Any]]] = {}
    deleted: dict[str, list[Any]] = {}
    for (name, _key), (obj, removed) in final.items():
        row = encode_row(name, {c.name: getattr(obj, c.key) for c in obj.__table__.columns})
        if removed:
            deleted.setdefault(name, []).append(key_of(name, row))
        else:
            rows.setdefault(name, []).append(row)
    for name, listed in rows.items():
        listed.sort(key=lambda row, name=name: json.dumps(key_of(name, row)))  # type: ignore[misc]
    if not rows and not deleted:
        return None
    # Every writer holds the catalog's write lock (`_serialise`), so max + 1 is unique and
    # numbers are committed in order, with no hole a rollback could leave.
    seq = (session.scalar(select(func.max(JournalEntry.seq))) or 0) + 1
    entry = JournalEntry(seq=seq, at=utcnow(), body=entry_body(rows, deleted))
    session.add(entry)
    session.flush()
    session.info.pop(_KEY, None)  # what flushing the entry itself noted (nothing journaled)
    return entry.seq


SNAPSHOT_ROWS = 5000


def snapshot(connection: Connection) -> list[str]:
    """Entries holding every row of the journaled tables (the first entries of a catalog that
    had rows before the journal existed), at most SNAPSHOT_ROWS rows each, tables in order."""
    bodies: list[str] = []
    present = set(inspect(connection).get_table_names())
    for name in TABLES:
        if name not in present:
            continue  # added by a later migration: nothing in it yet
        # The tables as they are at this migration, not as a later release defines them.
        stored = Table(name, MetaData(), autoload_with=connection)
        key = [stored.columns[column.name] for column in table(name).primary_key.columns]
        found = [
            encode_row(name, dict(row._mapping))
            for row in connection.execute(select(stored).order_by(*key))
        ]
        for start in range(0, len(found), SNAPSHOT_ROWS):
            bodies.append(entry_body({name: found[start : start + SNAPSHOT_ROWS]}, {}))
    return bodies


def parse_body(text: str) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[Any]]]:
    """An entry's rows and deleted keys; ValueError when it is not a journal entry body."""
    body = json.loads(text)
    if not isinstance(body, dict) or set(body) != {"rows", "deleted"}:
        raise ValueError("not a journal entry")
    rows, deleted = body["rows"], body["deleted"]
    for part in (rows, deleted):
        if not isinstance(part, dict) or not set(part) <= set(TABLES):
            raise ValueError("names a table the journal does not carry")
        if not all(isinstance(items, list) for items in part.values()):
            raise ValueError("malformed entry")
    return rows, deleted
