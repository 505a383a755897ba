"""Alembic migrations of the catalog (SQLite batch mode, PostgreSQL); run by registry.catalog.db."""
