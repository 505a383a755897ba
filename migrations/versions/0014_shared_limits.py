"""the server fleet's shared limit counts and raised signals

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 07:10:00

Server processes on one catalog share their rate-limit and threat-signal counts through
`limit_counts` (one row per kind, key, item and time slot) and raise each signal once per
window across them through `limit_signals`. Both are transient and not journaled.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_counts",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("item", sa.String(length=256), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", "item", "slot"),
    )
    op.create_index("ix_limit_counts_kind_slot", "limit_counts", ["kind", "slot"])
    op.create_table(
        "limit_signals",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("raised_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key"),
    )


def downgrade() -> None:
    op.drop_table("limit_signals")
    op.drop_index("ix_limit_counts_kind_slot", table_name="limit_counts")
    op.drop_table("limit_counts")
