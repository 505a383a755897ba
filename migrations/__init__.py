"""Alembic migrations of the catalog (SQLite in batch mode and PostgreSQL); run by `registry.catalog.db`."""
