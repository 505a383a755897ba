"""audit trail as a hash chain: prev_hash and hash on every audit event

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 21:25:00
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import blake3
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GENESIS = "0" * 64


def _entry_hash(prev: str, row: dict[str, object]) -> str:
    # A frozen copy of registry.catalog.repository.audit_hash as of this revision: a migration
    # must compute what the code of its time computed.
    at = row["at"]
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    assert isinstance(at, datetime)
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    body = json.dumps(
        {
            "id": row["id"],
            "at": at.isoformat(),
            "actor": row["actor"],
            "action": row["action"],
            "subject": row["subject"],
            "details": row["details"],
            "prev": prev,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return str(blake3.blake3(body.encode()).hexdigest())


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(
        sa.text("SELECT id, at, actor, action, subject, details FROM audit_events ORDER BY id")
    ).mappings()
    prev = GENESIS
    for row in list(rows):
        digest = _entry_hash(prev, dict(row))
        connection.execute(
            sa.text("UPDATE audit_events SET prev_hash = :prev, hash = :hash WHERE id = :id"),
            {"prev": prev, "hash": digest, "id": row["id"]},
        )
        prev = digest
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
