"""A lost catalog is never silently replaced, a home never writes into another registry's
catalog, and the stores can be proven without a catalog before one is rebuilt from them.

The whole story runs on SQLite and PostgreSQL: lose the catalog, run every kind of command (each
refuses with exit 13 and creates nothing), prove the regions from the stores alone (drill, verify
--all, regions status, catalog journal), see that no new journal epoch appeared, rebuild, and find
everything back. The runbook's lost-catalog steps (docs/operations.md) are run as written.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

from cli.main import main
from registry import loader
from registry.catalog.db import HEAD_REVISION
from registry.catalog.models import Base
from registry.errors import (
    CatalogBehindError,
    CatalogMismatchError,
    CatalogMissingError,
    ConflictError,
)
from registry.service import Registry
from registry.testing.models import make_model
from tests.conftest import tree

RUNBOOK = Path(__file__).parent.parent / "docs" / "operations.md"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _model(tmp_path: Path, seed: int) -> Path:
    return make_model(tmp_path / f"m{seed}", shards=2, shard_size=20_000, seed=seed)


def _journal_objects(tmp_path: Path) -> dict[str, bytes]:
    """Every journal object (epoch markers and segments) in both regions."""
    found = {}
    for region in ("region-a", "region-b"):
        root = tmp_path / region / "objects" / "journal"
        for path in sorted(root.rglob("*")):
            if path.is_file():
                found[f"{region}/{path.relative_to(root)}"] = path.read_bytes()
    return found


def _drop_tables(url: str) -> None:
    """Empty a PostgreSQL database of the catalog's tables (the database itself stays)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        Base.metadata.drop_all(connection)
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def history(home: Path, tmp_path: Path, catalog_url: str | None) -> Path:
    """Two local regions with a little history (on SQLite and PostgreSQL)."""
    _make_history(home, tmp_path, catalog_url)
    return home


@pytest.fixture
def sqlite_history(home: Path, tmp_path: Path) -> Path:
    """The same on SQLite only (tests that copy or delete the catalog file)."""
    _make_history(home, tmp_path, None)
    return home


def _make_history(home: Path, tmp_path: Path, catalog_url: str | None) -> None:
    """Two local regions with a little history: two versions, production, a hold, a policy."""
    Registry.init(
        home,
        catalog_url=catalog_url,
        store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")],
    )
    with Registry.open(home) as registry:
        registry.push("org/llama", _model(tmp_path, 1), message="first")
        registry.push("org/llama", _model(tmp_path, 2), message="second")
        registry.promote("org/llama@2", "production", reason="evals passed")
        registry.hold("org/llama@1", reason="litigation")
        registry.set_retention("org/llama", keep_last=5)


def _lose(home: Path, catalog_url: str | None) -> str:
    """Lose the catalog: the SQLite file deleted, or the PostgreSQL database emptied."""
    with Registry.open(home) as registry:
        url = registry.settings.catalog_url
    if catalog_url is None:
        Path(url.split("///", 1)[1]).unlink()
    else:
        _drop_tables(url)
    return url


def _catalog_absent(url: str, catalog_url: str | None) -> bool:
    if catalog_url is None:
        return not Path(url.split("///", 1)[1]).exists()
    return _tables(url) == set()


def test_a_lost_catalog_is_refused_proven_from_the_stores_and_rebuilt(
    history: Path, tmp_path: Path, catalog_url: str | None
) -> None:
    url = _lose(history, catalog_url)
    journal_before = _journal_objects(tmp_path)
    assert journal_before
    commands = [
        ["ls"],
        ["ls", "org/llama"],
        ["show", "org/llama@1"],
        ["history", "org/llama", "production"],
        ["audit"],
        ["audit", "verify"],
        ["pull", "org/llama:production", str(tmp_path / "out")],
        ["push", "org/new", str(_model(tmp_path, 3))],
        ["promote", "org/llama@1", "staging"],
        ["hold", "ls"],
        ["gc", "--dry-run"],
        ["retention", "show", "org/llama"],
        ["catalog", "journal", "--drain"],
        ["replicate"],
        ["verify", "org/llama"],
    ]
    for command in commands:
        result = _cli(*command)
        assert result.exit_code == CatalogMissingError.exit_code, (command, result.output)
        assert "catalog rebuild --from" in result.output, command
        assert "Traceback" not in result.output
    # Nothing was created in the catalog's place, nothing pulled, no new journal epoch.
    assert _catalog_absent(url, catalog_url)
    assert not (tmp_path / "out").exists()
    assert _journal_objects(tmp_path) == journal_before

    # The stores alone prove each region before a rebuild.
    journals = _cli("catalog", "journal", "--json")
    assert journals.exit_code == 0, journals.output
    assert "the catalog is missing" in journals.output
    status = _cli("regions", "status")
    assert status.exit_code == 0, status.output
    for region in ("region-1", "region-2"):
        drill = _cli("drill", "--region", region)
        assert drill.exit_code == 0, drill.output
        assert "org/llama@2" in drill.output and f"region {region}'s journal" in drill.output
    scrub = _cli("verify", "--all", "--read-data")
    assert scrub.exit_code == 0, scrub.output
    assert "0 bad" in scrub.output
    assert _catalog_absent(url, catalog_url)
    assert _journal_objects(tmp_path) == journal_before

    rebuilt = _cli("catalog", "rebuild", "--from", "region-2")
    assert rebuilt.exit_code == 0, rebuilt.output
    with Registry.open(history) as registry:
        versions = registry.versions("org/llama")
        assert [(v.number, v.message) for v in versions] == [(1, "first"), (2, "second")]
        assert registry.resolve("org/llama:production").number == 2
        assert [(h.name, h.number) for h in registry.holds()] == [("org/llama", 1)]
        assert registry.retention("org/llama")[0].keep_last == 5
        assert registry.verify_audit().ok
        registry.pull("org/llama:production", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(_model(tmp_path, 2))
    assert _cli("ls").exit_code == 0


def test_store_side_commands_say_what_they_work_from_and_change_nothing(
    sqlite_history: Path, tmp_path: Path
) -> None:
    history = sqlite_history
    """A drill of a stand-in catalog is read only: its audit entry goes nowhere, and a change
    through the Python API on it is refused."""
    _lose(history, None)
    with Registry.open_for_recovery(history, region="region-1") as stand_in:
        assert (
            stand_in.provisional
            == "region region-1's journal (" + (stand_in.provisional.split("(", 1)[1])
        )
        assert stand_in.resolve("org/llama:production").number == 2
        report = stand_in.drill(region="region-1")
        assert report.ok and [m.ref for m in report.models] == ["org/llama@2"]
        with pytest.raises(ConflictError, match="changes nothing"):
            stand_in.promote("org/llama@1", "staging")
        stand_dir = stand_in._context.home.stand_in
        assert stand_dir is not None and stand_dir.exists()
    assert not stand_dir.exists()
    assert not (history / "catalog.db").exists()


def test_a_home_pointed_at_another_registrys_catalog_is_refused(
    history: Path, tmp_path: Path, catalog_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry.open(history) as registry:
        theirs = registry.settings.catalog_url
        audit_before = len(registry.audit_events(limit=1000))
    other = tmp_path / "other-home"
    monkeypatch.setenv("MODEL_REGISTRY_HOME", str(other))
    Registry.init(other, store=str(tmp_path / "other-store"))
    config = other / "config.toml"
    config.write_text(re.sub(r'url = ".*"', f'url = "{theirs}"', config.read_text(), count=1))
    for command in (["ls"], ["push", "x", str(_model(tmp_path, 5))], ["audit"]):
        result = _cli(*command)
        assert result.exit_code == CatalogMismatchError.exit_code, result.output
        assert "belongs to registry mr-" in result.output
    monkeypatch.setenv("MODEL_REGISTRY_HOME", str(history))
    with Registry.open(history) as registry:
        assert len(registry.audit_events(limit=1000)) == audit_before


def test_init_refuses_another_registrys_catalog_and_leaves_no_home(
    history: Path, tmp_path: Path, catalog_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry.open(history) as registry:
        theirs = registry.settings.catalog_url
        audit_before = len(registry.audit_events(limit=1000))
        head_before = registry.catalog.journal_head()
    journal_before = _journal_objects(tmp_path)
    new_home = tmp_path / "h2"
    monkeypatch.setenv("MODEL_REGISTRY_HOME", str(new_home))
    result = _cli("init", "--catalog-url", theirs, "--store", str(tmp_path / "h2-store"))
    assert result.exit_code == CatalogMismatchError.exit_code, result.output
    assert "already holds the catalog of registry mr-" in result.output
    assert not new_home.exists() and not (tmp_path / "h2-store").exists()
    monkeypatch.setenv("MODEL_REGISTRY_HOME", str(history))
    with Registry.open(history) as registry:
        assert len(registry.audit_events(limit=1000)) == audit_before
        assert registry.catalog.journal_head() == head_before
    assert _journal_objects(tmp_path) == journal_before


def test_init_refuses_a_database_with_other_tables_and_a_claimed_store(
    home: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE users (id INTEGER)")
    result = _cli("init", "--catalog-url", f"sqlite:///{foreign}")
    assert result.exit_code == CatalogMismatchError.exit_code, result.output
    assert "holds other tables (users)" in result.output
    assert not home.exists()
    with sqlite3.connect(foreign) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
    assert names == ["users"]

    Registry.init(tmp_path / "first", store=str(tmp_path / "shared-store"))
    result = _cli("init", "--store", str(tmp_path / "shared-store"))
    assert result.exit_code == 8, result.output
    assert "belongs to registry" in result.output
    assert not home.exists()


def test_a_catalog_from_before_identities_is_adopted_by_its_own_home(
    home: Path, tmp_path: Path
) -> None:
    """Upgrading a 0009 catalog records the opening home's registry; another home is then
    refused."""
    Registry.init(home)
    database = home / "catalog.db"
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TABLE catalog_identity")
        connection.execute("DROP TABLE manifest_cache")
        # ...and what later revisions added, so that the upgrade runs from 0009 as it would.
        connection.execute("DROP TABLE ui_sessions")
        connection.execute("DROP TABLE version_meta")
        connection.execute("DROP TABLE tags")
        connection.execute("DROP TABLE signer_policies")
        for table in ("upload_files", "upload_sessions"):
            connection.execute(f"DROP TABLE {table}")
        connection.execute("DROP TABLE limit_counts")
        connection.execute("DROP TABLE limit_signals")
        connection.execute("DROP INDEX ix_audit_events_actor_id")
        connection.execute("DROP INDEX ix_audit_events_action_id")
        connection.execute("DROP INDEX ix_blobs_object_name")
        connection.execute("DROP INDEX ix_versions_manifest_object")
        connection.execute("UPDATE alembic_version SET version_num = '0009'")
    with Registry.open(home) as registry:
        assert registry.catalog.registry_id() == registry.settings.registry_id
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == (
            HEAD_REVISION,
        )


def test_a_missing_catalog_file_is_not_created_by_the_python_api(home: Path) -> None:
    Registry.init(home)
    (home / "catalog.db").unlink()
    with pytest.raises(CatalogMissingError, match="is missing") as refused:
        Registry.open(home)
    assert "region" in refused.value.hint and "catalog rebuild" in refused.value.hint
    assert not (home / "catalog.db").exists()
    with pytest.raises(CatalogMissingError):
        Registry.init(home)  # an existing home: init refuses to make a catalog again too
    assert not (home / "catalog.db").exists()


def test_a_push_never_starts_an_epoch_over_a_journal_the_catalog_has_not_seen(
    sqlite_history: Path, tmp_path: Path
) -> None:
    history = sqlite_history
    database = history / "catalog.db"
    shutil.copy(database, tmp_path / "backup.db")
    with Registry.open(history) as registry:
        registry.promote("org/llama@1", "staging")
    shutil.copy(tmp_path / "backup.db", database)
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    journal_before = _journal_objects(tmp_path)
    result = _cli("push", "org/new", str(_model(tmp_path, 4)))
    assert result.exit_code == CatalogBehindError.exit_code, result.output
    assert "nothing was changed" in result.output and "--new-epoch" in result.output
    assert _journal_objects(tmp_path) == journal_before
    with Registry.open(history) as registry:
        assert [m.name for m in registry.models()] == ["org/llama"]


def _runbook_steps() -> list[tuple[str, int]]:
    """The commands of the lost-catalog runbook, with the exit code each is documented to give
    (`# exit N` in its comment, else 0)."""
    text = RUNBOOK.read_text()
    block = text.split("<!-- runbook: lost-catalog -->", 1)[1].split("```", 2)[1]
    steps = []
    for line in block.splitlines():
        if not line.startswith("$ model-registry "):
            continue
        command, _, comment = line[2:].partition("#")
        match = re.search(r"exit (\d+)", comment)
        steps.append((command.strip(), int(match.group(1)) if match else 0))
    return steps


def test_the_lost_catalog_runbook_works_as_written(
    history: Path, tmp_path: Path, catalog_url: str | None
) -> None:
    steps = _runbook_steps()
    assert len(steps) >= 6, steps
    assert [c for c, _ in steps].index("model-registry catalog rebuild --from REGION") > [
        c for c, _ in steps
    ].index("model-registry drill --region REGION")
    _lose(history, catalog_url)
    for command, expected in steps:
        words = shlex.split(command.replace("REGION", "region-2"))[1:]
        result = _cli(*words)
        assert result.exit_code == expected, (command, result.output)
    with Registry.open(history) as registry:
        assert registry.resolve("org/llama:production").number == 2
    assert os.environ["MODEL_REGISTRY_HOME"] == str(history)


def test_a_restored_backup_serves_nothing_stale_from_the_stores(
    sqlite_history: Path, tmp_path: Path
) -> None:
    """Reads that go to the stores on a catalog's word (pull, verify, scrub, catalog journal)
    refuse a catalog the stores show to be behind, as changes do: a restored backup must not
    quietly serve last month's production. Catalog-only commands cannot tell (documented)."""
    database = sqlite_history / "catalog.db"
    shutil.copy(database, tmp_path / "backup.db")
    with Registry.open(sqlite_history) as registry:
        registry.promote("org/llama@1", "production")  # production moved on after the backup
    shutil.copy(tmp_path / "backup.db", database)
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    journal_before = _journal_objects(tmp_path)
    for command in (
        ["pull", "org/llama:production", str(tmp_path / "out")],
        ["verify", "org/llama@2"],
        ["verify", "--all"],
        ["catalog", "journal"],
    ):
        result = _cli(*command)
        assert result.exit_code == CatalogBehindError.exit_code, (command, result.output)
        assert "lacks 1 changes" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert _journal_objects(tmp_path) == journal_before
    assert _cli("ls").exit_code == 0  # the catalog alone: it cannot know


def test_a_load_on_a_restored_backup_is_refused_before_its_first_byte(
    sqlite_history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load compares the journal through the catalog's reads without SQLAlchemy (its first
    tensor waits for no ORM): the refusal is the same, nothing is read or written."""
    database = sqlite_history / "catalog.db"
    shutil.copy(database, tmp_path / "backup.db")
    with Registry.open(sqlite_history) as registry:
        registry.promote("org/llama@1", "production")
    shutil.copy(tmp_path / "backup.db", database)
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    journal_before = _journal_objects(tmp_path)
    read: list[str] = []
    original = Registry.blob_reader
    monkeypatch.setattr(
        Registry,
        "blob_reader",
        lambda self, digest, *a, **k: read.append(digest) or original(self, digest, *a, **k),
    )
    with Registry.open(sqlite_history) as registry:
        with pytest.raises(CatalogBehindError, match="lacks 1 changes"):
            loader.load("org/llama:production", registry=registry)
        assert registry._context.home.opened_catalog.value is None
    assert read == []
    assert _journal_objects(tmp_path) == journal_before
