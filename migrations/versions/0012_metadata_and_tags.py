"""version metadata, tags and signer policies

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 05:10:00

A version's metadata and lineage live in its signed manifest; `version_meta` holds a copy, one
row per key, written with the version, so that `search` reads the catalog rather than every
manifest. Tags are mutable labels (added and removed, audited), outside the manifest. Signer
policies name who must have signed a version (OpenSSF) before an alias may point at it. All three
are journaled with the rest of the catalog's rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "version_meta",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"]),
        sa.PrimaryKeyConstraint("version_id", "key"),
    )
    op.create_index("ix_version_meta_key_value", "version_meta", ["key", "value"])
    op.create_table(
        "tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"]),
        sa.PrimaryKeyConstraint("version_id", "tag"),
    )
    op.create_index("ix_tags_tag", "tags", ["tag"])
    op.create_table(
        "signer_policies",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("signers", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("model", "alias"),
    )


def downgrade() -> None:
    op.drop_table("signer_policies")
    op.drop_index("ix_tags_tag", table_name="tags")
    op.drop_table("tags")
    op.drop_index("ix_version_meta_key_value", table_name="version_meta")
    op.drop_table("version_meta")
