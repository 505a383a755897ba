"""upload sessions in the catalog

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 07:40:00

A push through the REST API is an upload session: the client seals each file itself under a data
key the server issued, and sends the ciphertext part by part, to any server process. The session
and its files live here, the parts in the staging store (whose listing says which arrived), so
that every process of a fleet serves any request of any session.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=300), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunks_per_part", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=32), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_upload_sessions_seen_at", "upload_sessions", ["seen_at"])
    op.create_table(
        "upload_files",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("nonce_prefix", sa.LargeBinary(), nullable=False),
        sa.Column("checked_parts", sa.String(length=71), nullable=True),
        sa.Column("checked_chunk_root", sa.String(length=71), nullable=True),
        sa.Column("checked_sha256", sa.String(length=64), nullable=True),
        sa.Column("session_key", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("session_id", "idx"),
    )


def downgrade() -> None:
    op.drop_table("upload_files")
    op.drop_index("ix_upload_sessions_seen_at", table_name="upload_sessions")
    op.drop_table("upload_sessions")
