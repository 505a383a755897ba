"""The audit trail as a hash chain: `audit verify` passes after real work (concurrent writers
included) and names the first bad entry after an UPDATE, a DELETE or a swap of two rows done
directly in the database, on SQLite and PostgreSQL; migration 0004 chains existing entries."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli.main import main
from registry.catalog.db import _alembic_config, create_catalog_engine, migrate
from registry.errors import IntegrityError
from registry.service import Registry
from registry.testing.models import make_model


@pytest.fixture
def busy(home: Path, tmp_path: Path, catalog_url: str | None) -> Path:
    """A registry with a few dozen audit entries, some written concurrently."""
    Registry.init(home, catalog_url=catalog_url)
    models = [
        make_model(tmp_path / f"m{seed}", shards=1, shard_size=10_000, seed=seed)
        for seed in range(4)
    ]

    def work(index: int) -> None:
        with Registry.open(home, actor=f"worker-{index}") as registry:
            version = registry.push(f"model-{index % 2}", models[index])
            registry.promote(version.version.ref, "production", reason=f"run {index}")
            registry.audit_events(limit=1)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    return home


def _sql(registry: Registry, statement: str, **params: object) -> None:
    with registry.catalog.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_chain_verifies_after_concurrent_work(busy: Path) -> None:
    with Registry.open(busy) as registry:
        result = registry.verify_audit()
        assert result.ok and result.checked >= 9, result
        events = registry.audit_events(limit=1000)
        assert {"init", "push", "promote"} <= {e.action for e in events}
    out = CliRunner().invoke(main, ["audit", "verify", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["ok"] is True


@pytest.mark.parametrize("tamper", ["update", "delete", "swap"])
def test_tampering_is_named_by_audit_verify(busy: Path, tamper: str) -> None:
    with Registry.open(busy) as registry:
        ids = sorted(e.id for e in registry.audit_events(limit=1000))
        middle = ids[len(ids) // 2]
        following = ids[ids.index(middle) + 1]
        if tamper == "update":
            _sql(
                registry,
                "UPDATE audit_events SET actor = 'someone-else' WHERE id = :id",
                id=middle,
            )
            expected = middle
        elif tamper == "delete":
            _sql(registry, "DELETE FROM audit_events WHERE id = :id", id=middle)
            expected = following
        else:
            # Swap the content (and hashes) of two neighbours: the order of events is rewritten.
            with registry.catalog.engine.connect() as connection:
                rows = {
                    row.id: row
                    for row in connection.execute(
                        text("SELECT * FROM audit_events WHERE id IN (:a, :b)"),
                        {"a": middle, "b": following},
                    ).all()
                }
            for target, source in ((middle, following), (following, middle)):
                row = rows[source]
                _sql(
                    registry,
                    "UPDATE audit_events SET at = :at, actor = :actor, action = :action, "
                    "subject = :subject, details = :details, prev_hash = :prev, hash = :hash "
                    "WHERE id = :id",
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    subject=row.subject,
                    details=row.details,
                    prev=row.prev_hash,
                    hash=row.hash,
                    id=target,
                )
            expected = middle
        result = registry.verify_audit()
        assert not result.ok and result.first_bad == expected, result
    out = CliRunner().invoke(main, ["audit", "verify"])
    assert out.exit_code == IntegrityError.exit_code
    assert f"entry {expected}" in out.stderr


def test_audit_listing_filters(busy: Path) -> None:
    runner = CliRunner()
    listed = json.loads(runner.invoke(main, ["audit", "model-0", "--json"]).stdout)
    assert listed and {e["subject"] for e in listed} == {"model-0"}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert json.loads(runner.invoke(main, ["audit", "--since", future, "--json"]).stdout) == []
    assert runner.invoke(main, ["audit", "--since", "soon"]).exit_code == 3
    assert runner.invoke(main, ["audit", "ls", "--limit", "2", "--json"]).exit_code == 0


def test_migration_chains_existing_entries(tmp_path: Path) -> None:
    from alembic import command

    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    with engine.begin() as connection:
        for index in range(3):
            connection.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, subject, details) "
                    "VALUES (:at, 'old', 'push', 'm', :details)"
                ),
                {"at": datetime(2026, 1, 1 + index, tzinfo=UTC), "details": f'{{"n":{index}}}'},
            )
    migrate(engine)
    from registry.catalog.repository import Catalog

    catalog = Catalog(engine)
    result = catalog.verify_audit()
    assert result.ok and result.checked == 3
    catalog.audit("new", "verify", "m", {})
    assert catalog.verify_audit().checked == 4
    catalog.close()


def test_cli_audit_options_before_verify_and_markup_in_text(busy: Path) -> None:
    runner = CliRunner()
    with Registry.open(busy) as registry:
        registry.promote("model-0@1", "canary", reason="fix [/] the [red]bug[/red]")
        _sql(registry, "UPDATE audit_events SET actor = 'evil' WHERE id = 2")
    out = runner.invoke(main, ["audit", "--json", "verify"])
    assert out.exit_code == IntegrityError.exit_code, out.output
    assert json.loads(out.stdout)["first_bad"] == 2
    listed = runner.invoke(main, ["audit", "model-0"])
    assert listed.exit_code == 0 and "[red]bug[/red]" in listed.output.replace("\n", "")
    history = runner.invoke(main, ["history", "model-0"])
    assert history.exit_code == 0 and "[/]" in history.output
