"""object names indexed

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 07:10:00

An object URL (`/v1/objects/{id}`, a cache's key) names a stored object by its store name; the
blob or manifest behind it is found through these indexes rather than by scanning every row.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_blobs_object_name", "blobs", ["object_name"])
    op.create_index("ix_versions_manifest_object", "versions", ["manifest_object"])


def downgrade() -> None:
    op.drop_index("ix_versions_manifest_object", table_name="versions")
    op.drop_index("ix_blobs_object_name", table_name="blobs")
