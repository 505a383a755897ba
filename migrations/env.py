"""Alembic environment: migrates the connection that `registry.catalog.db.migrate` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from registry.catalog.models import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through model-registry (registry.catalog.db.migrate), "
        "which passes the catalog connection"
    )
run_migrations(connection)
