"""journal of catalog changes: the outbox of entries and how far each region's journal goes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 01:40:00

A catalog that already holds rows gets them all as its first entry (a snapshot), so a journal
started late still rebuilds everything.
"""

from __future__ import annotations

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
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "journal_marks",
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("region"),
    )
    body = snapshot(op.get_bind())
    if body is not None:
        op.bulk_insert(entries, [{"seq": 1, "at": datetime.now(UTC), "body": body}])


def downgrade() -> None:
    op.drop_table("journal_marks")
    op.drop_table("journal_entries")
