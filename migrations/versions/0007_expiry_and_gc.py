"""tombstones for expired versions, swept blobs, push leases and gc sweeps

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 23:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("expired_by", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("expiry_reason", sa.Text(), nullable=True))
        batch_op.drop_constraint("uq_versions_model_digest", type_="unique")
        batch_op.create_index("ix_versions_model_digest", ["model_id", "digest"], unique=False)
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("swept_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "push_leases",
        sa.Column("lease", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("lease", "digest", "purpose"),
    )
    with op.batch_alter_table("push_leases", schema=None) as batch_op:
        batch_op.create_index("ix_push_leases_object", ["digest", "purpose"], unique=False)
    op.create_table(
        "sweeps",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("object_name", sa.String(length=512), nullable=False),
        sa.Column("run", sa.String(length=36), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest", "purpose"),
    )


def downgrade() -> None:
    # Before 0007 nothing could expire: a tombstone would come back as a live version (its
    # objects perhaps swept), and a re-pushed digest would break the unique constraint.
    connection = op.get_bind()
    tombstones = connection.execute(
        sa.text("SELECT COUNT(*) FROM versions WHERE expired_at IS NOT NULL")
    ).scalar()
    swept = connection.execute(
        sa.text("SELECT COUNT(*) FROM blobs WHERE swept_at IS NOT NULL")
    ).scalar()
    if tombstones or swept:
        raise RuntimeError(
            f"cannot downgrade below 0007: the catalog holds {tombstones} expired or deleted "
            f"versions and {swept} swept blobs, which older releases would take for live"
        )
    op.drop_table("sweeps")
    with op.batch_alter_table("push_leases", schema=None) as batch_op:
        batch_op.drop_index("ix_push_leases_object")
    op.drop_table("push_leases")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_column("swept_at")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_index("ix_versions_model_digest")
        batch_op.create_unique_constraint("uq_versions_model_digest", ["model_id", "digest"])
        batch_op.drop_column("expiry_reason")
        batch_op.drop_column("expired_by")
        batch_op.drop_column("expired_at")
