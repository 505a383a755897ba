"""Catalog connections: engine creation per backend, the checks that a catalog is there and is
this registry's, and schema migration on open.

SQLite gets WAL, a busy timeout, foreign keys and `BEGIN IMMEDIATE` transactions (so two writers
serialise instead of failing mid-transaction); PostgreSQL gets psycopg 3 and pre-ping. `migrate`
upgrades an older catalog automatically and refuses one written by a newer model-registry.
`open_catalog_engine` never creates a catalog unless asked to (init, rebuild): a missing or empty
one is refused, like a database server refuses to start on a missing data directory, because an
empty catalog silently put in its place would lose the registry's whole history.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

import migrations
from registry.catalog.lite import HEAD_REVISION
from registry.errors import (
    CatalogMismatchError,
    CatalogMissingError,
    ConfigurationError,
    SchemaVersionError,
    StorageError,
)
from registry.fileio import private_dirs

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(migrations.__file__).parent
_PG_MIGRATION_LOCK = 0x6D72_6D69  # advisory lock id: "mrmi"
_NO_SUCH_DATABASE = "3D000"  # PostgreSQL's SQLSTATE for a database that does not exist


def shown_url(url: str) -> str:
    """A catalog URL fit to print (no password)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite catalog URL (None for other databases and in-memory ones)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"invalid catalog URL {url!r}") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def open_catalog_engine(
    url: str,
    *,
    registry_id: str,
    create: bool = False,
    kek_ids: Callable[[], Collection[str]] = tuple,
) -> Engine:
    """The catalog of registry `registry_id`, migrated to this release's schema.

    Refused, changing nothing: a catalog that is missing or empty (`CatalogMissingError`,
    unless `create`), one that belongs to another registry (`CatalogMismatchError`) and, with
    `create`, a database that already holds a catalog or other tables. A catalog from before
    identities is taken as this registry's only when nothing in it says otherwise: its key
    slots, if any, must include one under a key of `kek_ids()` (this home's; asked only then,
    since loading the keys can take a KMS call)."""
    shown = shown_url(url)
    path = sqlite_path(url)
    if path is not None and not create and (not path.exists() or path.stat().st_size == 0):
        raise CatalogMissingError(f"the catalog database {path} is missing")
    engine = create_catalog_engine(url, create=create)
    try:
        owner = _check_catalog(engine, shown, create=create)
        if owner is None and not create:
            _require_own_keys(engine, shown, kek_ids())
        migrate(engine, registry_id=registry_id)
        if owner is None:
            # Made just now, or from before identities: migration 0010 recorded this registry,
            # or nothing did (a catalog already at 0010 without its row).
            owner = _identity(engine) or _claim(engine, registry_id)
        if owner != registry_id:
            raise CatalogMismatchError(
                f"the catalog {shown} belongs to registry {owner}, not to {registry_id} (the "
                "registry of this home's config.toml)"
            )
    except BaseException:
        engine.dispose()
        raise
    return engine


def check_new_catalog(url: str) -> None:
    """Refuse, before anything is made, a database that a new registry must not use: one that
    holds a catalog (another registry's) or other tables. Creates nothing (not even a SQLite
    file)."""
    path = sqlite_path(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        return
    engine = create_catalog_engine(url, create=False)
    try:
        _check_catalog(engine, shown_url(url), create=True)
    finally:
        engine.dispose()


def drop_catalog(url: str) -> None:
    """Remove a catalog that an init made and could not finish: the SQLite file, or the tables
    it created in an (until then empty) database."""
    path = sqlite_path(url)
    if path is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return
    from registry.catalog.models import Base

    engine = create_catalog_engine(url, create=False)
    try:
        with engine.begin() as connection:
            Base.metadata.drop_all(connection)
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    except SQLAlchemyError as error:
        raise StorageError(f"cannot remove the unfinished catalog: {error}") from None
    finally:
        engine.dispose()


def _check_catalog(engine: Engine, shown: str, *, create: bool) -> str | None:
    """Refuse a missing, empty or unreadable catalog (unless `create`) and, with `create`, a
    database that is not empty; the registry a catalog records (None: none yet), read in the
    same connection (every command opens the catalog through here)."""
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            owner = (
                connection.execute(text("SELECT registry_id FROM catalog_identity")).scalar()
                if "catalog_identity" in tables
                else None
            )
    except DBAPIError as error:
        if _no_such_database(error) and not create:
            raise CatalogMissingError(f"the catalog database {shown} does not exist") from None
        if not isinstance(error, OperationalError) and not create:
            # A SQLite file that is not a database (corrupted, overwritten): lost as a catalog.
            raise CatalogMissingError(
                f"the catalog database {shown} cannot be read as a catalog ({error.orig})"
            ) from None
        raise StorageError(
            f"cannot reach the catalog database {shown}: {error.orig}",
            hint="check catalog.url in config.toml (or MODEL_REGISTRY_CATALOG_URL)",
        ) from None
    if "alembic_version" not in tables:
        if not create:
            raise CatalogMissingError(
                f"the catalog database {shown} is empty: it holds no model-registry catalog"
            )
        if tables:
            raise CatalogMismatchError(
                f"the database {shown} holds other tables ({', '.join(sorted(tables)[:5])}): "
                "it is not an empty database",
                hint="give the registry a database of its own (--catalog-url)",
            )
        return None
    if create:
        raise CatalogMismatchError(
            f"the database {shown} already holds the catalog of "
            f"{'registry ' + owner if owner else 'a registry'}; a new registry never writes "
            "into another's catalog",
            hint="give the new registry a database of its own (--catalog-url), or work in the "
            "existing registry's home",
        )
    return None if owner is None else str(owner)


def _no_such_database(error: DBAPIError) -> bool:
    # psycopg carries no SQLSTATE for a failed connection, only the server's message.
    return getattr(error.orig, "sqlstate", None) == _NO_SUCH_DATABASE or bool(
        re.search(r'database "[^"]*" does not exist', str(error.orig))
    )


def _require_own_keys(engine: Engine, shown: str, kek_ids: Collection[str]) -> None:
    """A catalog that records no registry is adopted only if its key slots (what it can open)
    are under this home's keys, or it has none: a home pointed at another registry's catalog
    from before identities must not claim it."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("key_slots"):
            return
        owners = set(connection.execute(text("SELECT DISTINCT kek_id FROM key_slots")).scalars())
    if owners and not owners & set(kek_ids):
        raise CatalogMismatchError(
            f"the catalog {shown} records no registry, and its data keys are wrapped by "
            f"{', '.join(sorted(owners)[:3])}, none of which this home holds: it belongs to "
            "another registry"
        )


def _identity(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("catalog_identity"):
            return None
        value = connection.execute(text("SELECT registry_id FROM catalog_identity")).scalar()
        return None if value is None else str(value)


def _claim(engine: Engine, registry_id: str) -> str:
    """Record `registry_id` as the catalog's registry, unless another process recorded one
    first; the registry recorded."""
    with engine.begin() as connection:
        owner = connection.execute(text("SELECT registry_id FROM catalog_identity")).scalar()
        if owner is not None:
            return str(owner)
        connection.execute(
            text("INSERT INTO catalog_identity (registry_id, since) VALUES (:id, :since)"),
            {"id": registry_id, "since": datetime.now(UTC)},
        )
    return registry_id


def _private_file(path: Path) -> None:
    """Create the SQLite file 0600 whatever the umask, before SQLite makes it with the
    umask's mode: SQLite gives its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def create_catalog_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for the catalog at `url`; `create` makes a SQLite file's directory."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(f"invalid catalog URL {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        if create and parsed.database and parsed.database != ":memory:":
            try:
                private_dirs(Path(parsed.database).parent)
                _private_file(Path(parsed.database))
            except OSError as error:
                raise ConfigurationError(
                    f"cannot create the catalog {parsed.database} or its folder: {error.strerror}"
                ) from None
        engine = create_engine(parsed, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite's own transaction handling would defer BEGIN; take it over (SQLAlchemy docs,
            # "Serializable isolation / Savepoints / Transactional DDL").
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise ConfigurationError(
        f"unsupported catalog database {parsed.get_backend_name()!r}",
        hint="use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
    )


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest revision among the migration scripts (what HEAD_REVISION must equal)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, *, registry_id: str | None = None) -> None:
    """Bring the catalog to this release's schema, or refuse a newer one. `registry_id` is
    recorded as the catalog's registry by the migration that introduces identities."""
    try:
        if current_revision(engine) == HEAD_REVISION:
            return
    except OperationalError as error:
        raise StorageError(
            f"cannot reach the catalog database: {error.orig}",
            hint="check catalog.url in config.toml (or MODEL_REGISTRY_CATALOG_URL)",
        ) from None
    from alembic.script import ScriptDirectory

    config = _alembic_config()
    scripts = ScriptDirectory.from_config(config)
    try:
        with engine.connect() as outer:
            sqlite = outer.dialect.name == "sqlite"
            if sqlite:
                # Batch migrations rebuild a table (copy, drop, rename); with foreign keys on,
                # dropping a table other rows point at fails. The pragma is ignored inside a
                # transaction, so it is switched on the raw connection before BEGIN, and the
                # keys are checked before the commit instead (SQLite's documented procedure).
                _pragma(outer, "foreign_keys=OFF")
            try:
                _upgrade(outer, config, scripts, sqlite=sqlite, registry_id=registry_id)
            finally:
                if sqlite:
                    _pragma(outer, "foreign_keys=ON")
    except OperationalError as error:
        raise StorageError(
            f"cannot reach the catalog database: {error.orig}",
            hint="check catalog.url in config.toml (or MODEL_REGISTRY_CATALOG_URL)",
        ) from None
    except SQLAlchemyError as error:
        raise StorageError(f"catalog migration failed: {error}") from None


def _pragma(connection: Connection, setting: str) -> None:
    """Run a PRAGMA on the raw DBAPI connection, outside any transaction SQLAlchemy opens."""
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.execute(f"PRAGMA {setting}")


def _upgrade(
    connection: Connection,
    config: Config,
    scripts: Any,
    *,
    sqlite: bool,
    registry_id: str | None,
) -> None:
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    with connection.begin():
        if connection.dialect.name == "postgresql":
            # Two processes opening a new catalog at once must not both create the tables.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATION_LOCK}
            )
        current = MigrationContext.configure(connection).get_current_revision()
        if current == scripts.get_current_head():
            return
        if current is not None:
            try:
                scripts.get_revision(current)
            except Exception:  # noqa: BLE001 - alembic raises several types for unknown ids
                raise SchemaVersionError(
                    f"the catalog has schema revision {current}, which this model-registry "
                    f"does not know (its newest is {scripts.get_current_head()})"
                ) from None
        config.attributes["connection"] = connection
        config.attributes["registry_id"] = registry_id
        command.upgrade(config, "head")
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StorageError(
                    f"catalog migration failed: {len(broken)} rows break foreign keys "
                    f"(first: {tuple(broken[0])}); nothing was changed",
                    hint="restore the catalog from a backup, or report it",
                )
