"""The journal of catalog changes and `catalog rebuild`: a catalog lost after pushes, promotes,
rollbacks, policy changes, holds, deletes and tokens across two regions comes back identical, table
by table, from the secondary region alone (SQLite and PostgreSQL); a crash between a commit and the
journal write loses nothing; tampered journal segments, manifests and version records are refused
by name, and nothing is written then."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from cli.main import main
from registry.catalog.journal import REDACTED_DETAILS
from registry.catalog.models import Base
from registry.catalog.repository import Catalog
from registry.errors import StorageError
from registry.service import Registry
from registry.testing.models import make_model

# Columns that say when a row was written, not what it holds: a rebuild writes them anew.
VOLATILE = {"key_slots": {"created_at"}, "placements": {"updated_at", "detail"}}
RESTORED = (
    "models",
    "blobs",
    "versions",
    "version_files",
    "aliases",
    "alias_moves",
    "legal_holds",
    "retention_policies",
    "key_slots",
    "placements",
)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(url)
    try:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        with engine.connect() as connection:
            for name in (*RESTORED, "audit_events", "journal_entries"):
                table = Base.metadata.tables[name]
                columns = [c for c in table.columns if c.name not in VOLATILE.get(name, set())]
                rows = connection.execute(select(*columns).order_by(*table.primary_key.columns))
                tables[name] = [tuple(row) for row in rows]
        return tables
    finally:
        engine.dispose()


def _new_database(admin: str) -> str:
    name = f"mr_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin.rsplit("/", 1)[0] + f"/{name}"


def _drop_database(admin: str, url: str) -> None:
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


def _history(registry: Registry, tmp_path: Path) -> None:
    """Pushes, promotes, a rollback, a protected alias, policies, holds placed and released,
    a delete and a gc, and a token created and revoked."""
    first = registry.push(
        "org/llama",
        make_model(tmp_path / "m1", shards=2, shard_size=400_000, seed=1),
        message="first cut",
    )
    second = registry.push(
        "org/llama", make_model(tmp_path / "m2", shards=2, shard_size=400_000, seed=2)
    )
    registry.promote(first.version.ref, "production", reason="launch")
    registry.promote(second.version.ref, "production", reason="better evals")
    registry.rollback("org/llama", "production", reason="regression")
    registry.promote(second.version.ref, "staging")
    registry.protect_alias("org/llama", "production")
    registry.push("org/tiny", make_model(tmp_path / "m3", shards=1, shard_size=50_000, seed=3))
    registry.push("org/tiny", make_model(tmp_path / "m4", shards=1, shard_size=60_000, seed=4))
    registry.set_retention("org/tiny", keep_last=1)
    registry.set_retention(None, keep_last=5)
    registry.hold("org/tiny@2", reason="audit 2026-11")
    registry.hold("org/llama@2", reason="litigation")
    registry.release_hold("org/tiny@2", reason="audit closed")
    registry.delete("org/tiny@1", reason="superseded")
    token, _secret = registry.create_token("ci", role="pusher", models=["org/*"])
    registry.revoke_token(token.id)


@pytest.fixture
def two_regions(home: Path, tmp_path: Path, catalog_url: str | None) -> Iterator[Registry]:
    Registry.init(
        home,
        catalog_url=catalog_url,
        store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")],
    )
    with Registry.open(home) as registry:
        _history(registry, tmp_path)
        yield registry


def _lose_catalog(registry: Registry, tmp_path: Path) -> tuple[str, str]:
    """Close the registry and take its catalog away; (the old catalog's URL, where to rebuild)."""
    url = registry.settings.catalog_url
    registry.close()
    if url.startswith("sqlite"):
        lost = tmp_path / "lost-catalog.db"
        os.replace(url.split("///", 1)[1], lost)
        return f"sqlite:///{lost}", url
    from tests.conftest import PG_ADMIN_URL

    return url, _new_database(PG_ADMIN_URL)


def test_a_lost_catalog_is_rebuilt_identical_from_the_secondary_region(
    two_regions: Registry, tmp_path: Path, home: Path
) -> None:
    status = two_regions.journal_status()
    assert [(s.region, s.behind) for s in status] == [("region-1", 0), ("region-2", 0)]
    head = two_regions.catalog.journal_head()[0]
    assert head > 15 and all(s.mark == head for s in status)
    old, new = _lose_catalog(two_regions, tmp_path)
    before = _dump(old)
    try:
        args = ["catalog", "rebuild", "--from", "region-2", "--json"]
        if not new.startswith("sqlite"):
            args += ["--catalog", new]
        result = _cli(*args)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] and report["region"] == "region-2"
        assert report["journal_entries"] == head and report["bad_copies"] == []
        assert report["restored_from_version_records"] == []
        after = _dump(new)
        for name in RESTORED:
            assert after[name] == before[name], name
        assert before["placements"] and before["key_slots"] and before["legal_holds"]
        assert {row[4] for row in after["placements"]} == {"verified"}
        # The audit trail: every entry back, token events as chain links only, then the rebuild.
        columns = [c.name for c in Base.metadata.tables["audit_events"].columns]
        action, details = columns.index("action"), columns.index("details")
        restored = after["audit_events"][: len(before["audit_events"])]
        for was, now in zip(before["audit_events"], restored, strict=True):
            if was[action].startswith("token-"):
                assert now[details] == REDACTED_DETAILS and "ci" not in json.dumps(now, default=str)
                assert was[0] == now[0] and was[-1] == now[-1]  # id and hash: the link
            else:
                assert now == was
        assert [row[action] for row in after["audit_events"][len(restored) :]] == [
            "catalog-rebuild"
        ]
        assert (
            after["journal_entries"][: len(before["journal_entries"])] == before["journal_entries"]
        )
        catalog = Catalog(create_engine(new))
        verification = catalog.verify_audit()
        assert verification.ok and verification.links_only == 2
        catalog.close()
        # The rebuilt catalog is the registry's: aliases resolve, loads verify, numbers go on.
        if not new.startswith("sqlite"):
            os.environ["MODEL_REGISTRY_CATALOG_URL"] = new
        try:
            with Registry.open(home) as registry:
                assert registry.resolve("org/llama:production").number == 1
                assert registry.resolve("org/llama@1").message == "first cut"
                assert registry.pull("org/llama:staging", tmp_path / "out").version.number == 2
                pushed = registry.push(
                    "org/llama", make_model(tmp_path / "m5", shards=1, shard_size=10_000, seed=5)
                )
                assert pushed.version.number == 3
                assert registry.tokens() == []  # tokens are never restored
                assert all(s.behind == 0 for s in registry.journal_status())
            verified = _cli("audit", "verify")
            assert verified.exit_code == 0, verified.output
            assert "2 of them are token events restored by a catalog rebuild" in verified.output
        finally:
            os.environ.pop("MODEL_REGISTRY_CATALOG_URL", None)
    finally:
        if not new.startswith("sqlite"):
            from tests.conftest import PG_ADMIN_URL

            _drop_database(PG_ADMIN_URL, new)


def test_a_crash_between_the_commit_and_the_journal_write_loses_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog_url: str | None
) -> None:
    Registry.init(
        home,
        catalog_url=catalog_url,
        store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")],
    )
    with Registry.open(home) as registry:
        first = registry.push(
            "org/llama", make_model(tmp_path / "m1", shards=1, shard_size=100_000, seed=1)
        )
        # The process "dies" right after each commit: nothing is copied out.
        with monkeypatch.context() as patch:
            patch.setattr(Registry, "drain_journal", lambda self: [])
            registry.promote(first.version.ref, "production")
            registry.set_retention("org/llama", keep_last=3)
        behind = {s.region: s.behind for s in registry.journal_status()}
        assert behind == {"region-1": 2, "region-2": 2}
        # A drain whose segment reached the store but whose mark was never recorded.
        real = Catalog.set_journal_mark
        with monkeypatch.context() as patch:

            def crash(self: Catalog, region: str, seq: int) -> None:
                raise StorageError("killed")

            patch.setattr(Catalog, "set_journal_mark", crash)
            registry.drain_journal()
        assert {s.region: s.behind for s in registry.journal_status()} == behind
        monkeypatch.setattr(Catalog, "set_journal_mark", real)
        result = _cli("catalog", "journal", "--json")
        assert result.exit_code == 0 and all(r["behind"] == 2 for r in json.loads(result.stdout))
        assert all(r["lag_seconds"] >= 0 for r in json.loads(result.stdout))
        registry.hold(first.version.ref, reason="keep")  # the next change drains everything
        assert all(s.behind == 0 for s in registry.journal_status())
        # A push committed whose journal entry never left the database, then the catalog lost.
        with monkeypatch.context() as patch:
            patch.setattr(Registry, "drain_journal", lambda self: [])
            registry.push(
                "org/llama",
                make_model(tmp_path / "m2", shards=1, shard_size=100_000, seed=2),
                message="pushed just before the disaster",
            )
            old, new = _lose_catalog(registry, tmp_path)  # the process never got further
    before = _dump(old)
    if not new.startswith("sqlite"):
        monkeypatch.setenv("MODEL_REGISTRY_CATALOG_URL", new)
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["restored_from_version_records"] == ["org/llama@2"]
    after = _dump(new)
    for name in ("aliases", "alias_moves", "retention_policies", "legal_holds", "models"):
        assert after[name] == before[name], name
    for name in ("version_files", "blobs", "key_slots", "placements"):
        assert {row[:3] for row in after[name]} == {row[:3] for row in before[name]}, name
    with Registry.open(home) as registry:
        restored = registry.resolve("org/llama@2")
        assert restored.message == "pushed just before the disaster"
    # Every column as it was but the time: the record's (before the commit's own).
    assert [row[:6] + row[7:] for row in after["versions"]] == [
        row[:6] + row[7:] for row in before["versions"]
    ]
    with Registry.open(home) as registry:
        assert registry.resolve("org/llama:production").number == 1
        assert registry.verify("org/llama@2", read_data=True).ok
        assert (
            registry.push(
                "org/llama", make_model(tmp_path / "m3", shards=1, shard_size=1_000, seed=3)
            ).version.number
            == 3
        )
        # The restored version is journaled in the new catalog: a second rebuild keeps it.
        assert all(s.behind == 0 for s in registry.journal_status())
    if new.startswith("sqlite"):
        os.replace(new.split("///", 1)[1], tmp_path / "first-rebuild.db")
        again = _cli("catalog", "rebuild", "--from", "region-1", "--json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["restored_from_version_records"] == []
        assert json.loads(again.stdout)["restored"]["versions"] == 3
    else:
        from tests.conftest import PG_ADMIN_URL

        _drop_database(PG_ADMIN_URL, new)


@pytest.fixture
def lost(home: Path, tmp_path: Path) -> tuple[Path, str]:
    Registry.init(home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")])
    with Registry.open(home) as registry:
        _history(registry, tmp_path)
        _old, new = _lose_catalog(registry, tmp_path)
    return tmp_path / "region-b", new


def _flip(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    os.chmod(path, 0o600)
    path.write_bytes(bytes(data))


def _refused(new: str, *needles: str) -> None:
    result = _cli("catalog", "rebuild", "--from", "region-2")
    assert result.exit_code == 6, result.output
    for needle in needles:
        assert needle in result.output, result.output
    database = Path(new.split("///", 1)[1])
    assert not database.exists()
    assert not [p for p in database.parent.iterdir() if "rebuilding" in p.name]


def test_a_tampered_journal_segment_is_refused_by_name(lost: tuple[Path, str]) -> None:
    region, new = lost
    segment = sorted((region / "objects" / "journal").iterdir())[3]
    _flip(segment)
    _refused(new, f"journal segment journal/{segment.name} does not verify")
    # The other region's journal is intact: a rebuild from it works.
    result = _cli("catalog", "rebuild", "--from", "region-1", "--json")
    assert result.exit_code == 0, result.output


def test_a_deleted_or_renamed_journal_segment_is_refused(lost: tuple[Path, str]) -> None:
    region, new = lost
    segments = sorted((region / "objects" / "journal").iterdir())
    os.chmod(segments[2], 0o600)
    moved = segments[2].with_name("0000000000000900-0000000000000900")
    os.replace(segments[2], moved)
    _refused(new, "the journal lacks entries", f"journal/{segments[1].name}")
    os.replace(moved, segments[2])
    os.replace(segments[4], segments[4].with_name(segments[5].name + "x"))
    result = _cli("catalog", "rebuild", "--from", "region-2")
    assert result.exit_code == 6 and "is not a journal segment" in result.output


def test_a_tampered_manifest_or_version_record_is_refused_by_name(
    lost: tuple[Path, str], home: Path
) -> None:
    region, new = lost
    manifests = sorted((region / "objects" / "manifests").rglob("*"))
    manifests = [p for p in manifests if p.is_file()]
    for path in manifests:
        _flip(path)
    _refused(new, "manifest of org/")
    for path in manifests:
        _flip(path)
    records = [p for p in (region / "objects" / "records").rglob("*") if p.is_file()]
    _flip(records[0], 3)
    _refused(new, "version record records/", "does not verify")


def test_rebuild_refuses_an_existing_catalog_and_needs_only_the_key_provider(
    lost: tuple[Path, str], home: Path
) -> None:
    _region, new = lost
    database = Path(new.split("///", 1)[1])
    database.write_bytes(b"something")
    result = _cli("catalog", "rebuild", "--from", "region-2")
    assert result.exit_code != 0 and "never overwrites" in result.output
    assert database.read_bytes() == b"something"
    database.unlink()
    result = _cli("catalog", "rebuild", "--from", "region-9")
    assert result.exit_code == 3 and "no region 'region-9'" in result.output
    # The naming key file lost too: the store's wrapped copy is unwrapped by the KEK.
    naming = home / "keys" / "naming.key"
    assert naming.exists()
    naming.rename(home / "naming.key.lost")
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["restored"]["versions"] == 4


def test_what_the_region_lost_is_reported_and_the_rest_restored(
    lost: tuple[Path, str], home: Path
) -> None:
    """A manifest and a key slot missing from the region (lost, not forged): the rebuild
    restores everything else, names what it could not, exits 6, and the copies elsewhere are
    recorded so `replicate --repair` can heal the region."""
    region, new = lost
    manifests = sorted(p for p in (region / "objects" / "manifests").rglob("*") if p.is_file())
    slots = sorted(p for p in (region / "objects" / "slots").rglob("manifest-*") if p.is_file())
    gone_manifest = manifests[0]
    gone_slot = next(p for p in slots if p.parent.name != gone_manifest.name)
    for path in (gone_manifest, gone_slot):
        path.unlink()
    result = _cli("catalog", "rebuild", "--from", "region-2")
    assert result.exit_code == 6, result.output
    assert result.output.count("NOT RESTORED") == 2, result.output
    assert "its manifest is missing from region-2" in result.output
    assert "its key slot is missing from the store" in result.output
    assert Path(new.split("///", 1)[1]).exists()
    with Registry.open(home) as registry:
        assert len(registry.versions("org/llama")) == 2
        repaired = registry.replicate(repair=True)
        assert repaired.ok
        assert gone_manifest.exists()
