"""journal of catalog changes: the outbox of entries and how far each region's journal goes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 01:40:00

A catalog that already holds rows gets them all as its first entries (a snapshot, in pieces of at
most SNAPSHOT_ROWS rows), so a journal started late still rebuilds everything.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from registry.catalog.journal import snapshot

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


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
