"""catalog identity (which registry a catalog belongs to) and the manifest cache

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 18:00:00

The catalog records the id of the registry it belongs to, so that a home pointed at another
registry's catalog is refused instead of writing into it. `migrate` passes the opening registry's
id: a catalog created now, or one from before this revision being upgraded by its own home, gets
it. Manifests (signed envelopes, content-addressed) are cached in the catalog so that commands
that need only the catalog never wait on a store; the cache is filled by pushes, rebuilds and the
first read of each manifest, and is not journaled (the stores hold the manifests themselves).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    identity = op.create_table(
        "catalog_identity",
        sa.Column("registry_id", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("registry_id"),
    )
    op.create_table(
        "manifest_cache",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    registry_id = context.config.attributes.get("registry_id")
    if registry_id:
        op.bulk_insert(identity, [{"registry_id": registry_id, "since": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("manifest_cache")
    op.drop_table("catalog_identity")
