"""journal of catalog changes: the outbox of entries and how far each region's journal goes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 01:40:00

A catalog that already holds rows gets them all as its first entries (a snapshot, in pieces of at
most SNAPSHOT_ROWS rows), so a journal started late still rebuilds everything.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# A frozen copy of registry.catalog.journal.snapshot (and of what it used: the journaled tables,
# their keys and time columns, and how a row is encoded) as of this revision: a migration must
# write what the code of its time wrote, whatever later releases change in the live code.
# No journaled table had a binary column at this revision.
SNAPSHOT_ROWS = 5000
TOKEN_ACTIONS = frozenset({"token-create", "token-revoke"})
REDACTED_DETAILS = '{"redacted":"token event: its content is not journaled"}'
# In the order their rows are inserted: (key columns, columns, UTC time columns).
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]] = {
    "models": (("id",), ("id", "name", "created_at", "created_by"), frozenset({"created_at"})),
    "blobs": (
        ("digest",),
        ("digest", "size", "object_name", "sealed_size", "chunk_size", "created_at", "swept_at"),
        frozenset({"created_at", "swept_at"}),
    ),
    "versions": (
        ("id",),
        (
            "id",
            "model_id",
            "number",
            "digest",
            "manifest_object",
            "message",
            "created_at",
            "created_by",
            "signed_by",
            "file_count",
            "total_size",
            "tensor_count",
            "parameter_count",
            "dtypes",
            "expired_at",
            "expired_by",
            "expiry_reason",
        ),
        frozenset({"created_at", "expired_at"}),
    ),
    "version_files": (
        ("version_id", "path"),
        ("version_id", "path", "size", "digest", "tensor_count"),
        frozenset(),
    ),
    "aliases": (
        ("model_id", "name"),
        ("model_id", "name", "version_id", "protected", "updated_at", "updated_by"),
        frozenset({"updated_at"}),
    ),
    "alias_moves": (
        ("id",),
        (
            "id",
            "model_id",
            "alias",
            "kind",
            "version_id",
            "previous_version_id",
            "moved_at",
            "moved_by",
            "reason",
        ),
        frozenset({"moved_at"}),
    ),
    "legal_holds": (
        ("version_id",),
        ("version_id", "reason", "placed_by", "placed_at"),
        frozenset({"placed_at"}),
    ),
    "retention_policies": (
        ("model",),
        (
            "model",
            "keep_last",
            "keep_within_seconds",
            "keep_demoted_for_seconds",
            "updated_at",
            "updated_by",
        ),
        frozenset({"updated_at"}),
    ),
    "retired_keys": (
        ("kek_id",),
        ("kek_id", "retired_at", "retired_by"),
        frozenset({"retired_at"}),
    ),
    "audit_events": (
        ("id",),
        ("id", "at", "actor", "action", "subject", "details", "prev_hash", "hash"),
        frozenset({"at"}),
    ),
}


def _encode_row(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One row as JSON-ready values (token audit entries reduced to their chain link)."""
    _key, columns, times = TABLES[name]
    row: dict[str, Any] = {}
    for column in columns:
        value = values.get(column)
        if value is not None and column in times:
            # A migration reads SQLite's stored text back without the type: naive, but UTC.
            aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            value = aware.astimezone(UTC).isoformat()
        row[column] = value
    if name == "audit_events" and row["action"] in TOKEN_ACTIONS:
        row.update(actor="", subject="registry", details=REDACTED_DETAILS)
    return row


def _entry_body(rows: Mapping[str, list[dict[str, Any]]]) -> str:
    body = {"rows": {name: rows[name] for name in TABLES if rows.get(name)}, "deleted": {}}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def snapshot(connection: sa.Connection) -> list[str]:
    """Entries holding every row of the journaled tables (the first entries of a catalog that
    had rows before the journal existed), at most SNAPSHOT_ROWS rows each, tables in order."""
    bodies: list[str] = []
    present = set(sa.inspect(connection).get_table_names())
    for name, (key_columns, _columns, _times) in TABLES.items():
        if name not in present:
            continue  # added by a later migration: nothing in it yet
        # The tables as they are at this migration.
        stored = sa.Table(name, sa.MetaData(), autoload_with=connection)
        key = [stored.columns[column] for column in key_columns]
        found = [
            _encode_row(name, dict(row._mapping))
            for row in connection.execute(sa.select(stored).order_by(*key))
        ]
        for start in range(0, len(found), SNAPSHOT_ROWS):
            bodies.append(_entry_body({name: found[start : start + SNAPSHOT_ROWS]}))
    return bodies


def upgrade() -> None:
    entries = op.create_table(
        "journal_entries",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    epochs = op.create_table(
        "journal_epochs",
        sa.Column("epoch", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parent", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("base", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("epoch"),
    )
    op.create_table(
        "journal_marks",
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("region"),
    )
    op.create_table(
        "retired_keys",
        sa.Column("kek_id", sa.String(length=256), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_by", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("kek_id"),
    )
    now = datetime.now(UTC)
    bodies = snapshot(op.get_bind())
    op.bulk_insert(
        epochs,
        [
            {
                "epoch": uuid.uuid4().hex,
                "started_at": now,
                "parent": None,
                "reason": "new",
                "base": 0,
            }
        ],
    )
    op.bulk_insert(
        entries, [{"seq": seq, "at": now, "body": body} for seq, body in enumerate(bodies, 1)]
    )


def downgrade() -> None:
    op.drop_table("retired_keys")
    op.drop_table("journal_marks")
    op.drop_table("journal_epochs")
    op.drop_table("journal_entries")
