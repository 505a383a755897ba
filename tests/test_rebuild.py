"""The journal of catalog changes and `catalog rebuild`: a catalog lost after pushes, promotes,
rollbacks, policy changes, holds, deletes and tokens across two regions comes back identical, table
by table, from the secondary region alone (SQLite and PostgreSQL); a crash between a commit and the
journal write loses nothing; tampered journal segments, manifests and version records are refused
by name, and nothing is written then."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from cli.main import main
from registry import journal
from registry.blobstore import BlobStore
from registry.catalog.journal import REDACTED_DETAILS
from registry.catalog.models import Base
from registry.catalog.repository import Catalog
from registry.errors import CatalogBehindError, ConflictError, StorageError
from registry.ops import journaling
from registry.ops import push as push_ops
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
    head = two_regions.catalog.journal_head()
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
        # The token links pass only with the registry's key (the rebuild's MAC over them):
        # the bare catalog cannot tell them from disguised entries.
        catalog = Catalog(create_engine(new))
        assert not catalog.verify_audit().ok
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
            patch.setattr(journaling, "drain_journal", lambda ctx: [])
            registry.promote(first.version.ref, "production")
            registry.set_retention("org/llama", keep_last=3)
        behind = {s.region: s.behind for s in registry.journal_status()}
        assert behind == {"region-1": 2, "region-2": 2}
        # A drain whose segment reached the store but whose mark was never recorded.
        real = Catalog.set_journal_mark
        with monkeypatch.context() as patch:

            def crash(self: Catalog, epoch: str, region: str, seq: int) -> None:
                raise StorageError("killed")

            patch.setattr(Catalog, "set_journal_mark", crash)
            registry.drain_journal()
        assert {s.region: s.behind for s in registry.journal_status()} == behind
        monkeypatch.setattr(Catalog, "set_journal_mark", real)
        result = _cli("catalog", "journal", "--json")
        assert result.exit_code == 0 and all(r["behind"] == 2 for r in json.loads(result.stdout))
        # The oldest entry each region lacks was committed before this command ran.
        assert all(r["lag_seconds"] > 0 for r in json.loads(result.stdout))
        registry.hold(first.version.ref, reason="keep")  # the next change drains everything
        assert all(s.behind == 0 for s in registry.journal_status())
        # A push committed whose journal entry never left the database, then the catalog lost.
        with monkeypatch.context() as patch:
            patch.setattr(journaling, "drain_journal", lambda ctx: [])
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


def _segments(region: Path) -> list[Path]:
    """The journal segments of a local region's store, in order (epoch markers aside)."""
    return sorted(
        p for p in (region / "objects" / "journal").rglob("*") if p.is_file() and p.name != "start"
    )


def _name(path: Path) -> str:
    return path.relative_to(path.parents[2]).as_posix()


def test_a_tampered_journal_segment_is_refused_by_name(lost: tuple[Path, str]) -> None:
    region, new = lost
    segment = _segments(region)[3]
    _flip(segment)
    _refused(new, f"journal segment {_name(segment)} does not verify")
    # The other region's journal is intact: a rebuild from it works.
    result = _cli("catalog", "rebuild", "--from", "region-1", "--json")
    assert result.exit_code == 0, result.output


def test_a_deleted_or_renamed_journal_segment_is_refused(lost: tuple[Path, str]) -> None:
    region, new = lost
    segments = _segments(region)
    os.chmod(segments[2], 0o600)
    moved = segments[2].with_name("0000000000000900-0000000000000900")
    os.replace(segments[2], moved)
    _refused(new, "the journal lacks entries", _name(segments[1]))
    os.replace(moved, segments[2])
    os.replace(segments[4], segments[4].with_name(segments[5].name + "x"))
    result = _cli("catalog", "rebuild", "--from", "region-2")
    assert result.exit_code == 6 and "is not a journal segment" in result.output
    os.replace(segments[4].with_name(segments[5].name + "x"), segments[4])
    # The newest segments deleted: the journal is only shorter, but region-1 shows it.
    for segment in segments[-2:]:
        segment.unlink()
    _refused(new, "region-1 holds a longer journal", "--accept-loss")
    # Every journal object gone: region-1 shows that too.
    for path in (region / "objects" / "journal").rglob("*"):
        if path.is_file():
            path.unlink()
    _refused(new, "region-1 holds a newer journal")


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
    lost_catalog = sqlite3.connect(region.parent / "lost-catalog.db")
    live = dict(
        lost_catalog.execute(
            "SELECT number, manifest_object FROM versions JOIN models ON models.id = model_id "
            "WHERE name = 'org/llama'"
        ).fetchall()
    )
    lost_catalog.close()
    gone_manifest = region / "objects" / live[1]
    other = Path(live[2]).name
    gone_slot = next((region / "objects" / "slots" / other[:2] / other).glob("manifest-*"))
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


def _two_regions(home: Path, tmp_path: Path, catalog_url: str | None = None) -> None:
    Registry.init(
        home,
        catalog_url=catalog_url,
        store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")],
    )


def _stored_entries(home: Path, region: str) -> list[str]:
    """The journal entries a region's store holds (opening the registry asks no store)."""
    with Registry.open(home) as registry:
        store = next(r.store for r in registry.replicas.regions if r.name == region)
        return [entry.body for entry in journal.read(store).entries]


def _model(tmp_path: Path, seed: int) -> Path:
    return make_model(tmp_path / f"m{seed}", shards=1, shard_size=20_000, seed=seed)


def test_deleted_versions_and_pushes_that_made_none_stay_gone(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-push of existing content and a push whose commit failed leave records that are
    voided; one that died before voiding is recognised by time. None comes back as a version,
    even after the content's version was deleted."""
    _two_regions(home, tmp_path)
    first, second = _model(tmp_path, 1), _model(tmp_path, 2)
    with Registry.open(home) as registry:
        registry.push("org/x", first)
        assert not registry.push("org/x", first).created  # a CI re-run: voided
        with monkeypatch.context() as patch:
            # Another re-run that dies before it can void its record.
            patch.setattr(push_ops, "_void_records", lambda ctx, *args: None)
            assert not registry.push("org/x", first).created
        with monkeypatch.context() as patch:

            def refused(*_args: object, **_kwargs: object) -> None:
                raise ConflictError("lease lapsed, nothing was committed")

            patch.setattr(registry.catalog, "commit_version", refused)
            with pytest.raises(ConflictError):
                registry.push("org/x", _model(tmp_path, 3))
        registry.push("org/x", second)
        registry.delete("org/x@1", reason="poisoned")
        _lose_catalog(registry, tmp_path)
    voids = list((tmp_path / "region-b" / "objects" / "records").rglob("*.void"))
    assert len(voids) == 2
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["restored_from_version_records"] == []
    with Registry.open(home) as registry:
        assert [v.number for v in registry.versions("org/x")] == [2]
        assert registry.resolve("org/x").number == 2
        assert registry.versions("org/x", expired=True)[0].expired


def test_a_rebuild_from_a_region_that_is_behind_is_refused_and_never_corrupts_the_other(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        # region-2 is unreachable for the journal while an alias moves and a hold is placed.
        everything = journaling._journal_stores
        monkeypatch.setattr(journaling, "_journal_stores", lambda ctx: everything(ctx)[:1])
        registry.promote("org/x@1", "production")
        registry.hold("org/x@1", reason="litigation")
        monkeypatch.setattr(journaling, "_journal_stores", everything)
        registry.catalog.journaled = 0
        _old, new = _lose_catalog(registry, tmp_path)
    refused = _cli("catalog", "rebuild", "--from", "region-2")
    assert refused.exit_code == 6, refused.output
    assert "region-1 holds a longer journal" in refused.output
    assert not Path(new.split("///", 1)[1]).exists()
    accepted = _cli("catalog", "rebuild", "--from", "region-2", "--accept-loss", "--json")
    assert accepted.exit_code == 0, accepted.output
    report = json.loads(accepted.stdout)
    assert report["accepted_loss"] and report["restored"]["legal_holds"] == 0
    with Registry.open(home) as registry:
        registry.promote("org/x@1", "staging")
        assert all(s.behind == 0 and not s.error for s in registry.journal_status())
        after = _dump(registry.settings.catalog_url)
        os.replace(new.split("///", 1)[1], tmp_path / "second-loss.db")
        registry.close()
    # region-1 still holds the old, longer epoch; its newest epoch is the rebuilt catalog's.
    again = _cli("catalog", "rebuild", "--from", "region-1", "--json")
    assert again.exit_code == 0, again.output
    rebuilt = _dump(new)
    for name in ("aliases", "alias_moves", "legal_holds", "versions"):
        assert rebuilt[name] == after[name], name


def test_a_region_replaced_by_an_empty_store_gets_its_whole_journal_again(
    home: Path, tmp_path: Path
) -> None:
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        registry.promote("org/x@1", "production")
    shutil.rmtree(tmp_path / "region-b")
    (tmp_path / "region-b").mkdir()
    assert _cli("init").exit_code == 0
    assert _cli("replicate").exit_code == 0
    status = _cli("catalog", "journal", "--drain", "--json")
    assert status.exit_code == 0, status.output
    with Registry.open(home) as registry:
        head = registry.catalog.journal_head()
        read = journal.read(registry.replicas.regions[1].store)
        assert [e.seq for e in read.entries] == list(range(1, head + 1))
        _old, _new = _lose_catalog(registry, tmp_path)
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output


def test_a_catalog_restored_from_a_backup_is_refused_until_the_operator_keeps_it(
    home: Path, tmp_path: Path
) -> None:
    """The journal in the stores went further than the restored catalog: the next change is
    refused (exit 15) before it touches catalog or stores. Once the operator keeps the backup
    (`--new-epoch`), the whole journal is written again under a new epoch, and a rebuild follows
    the newest epoch: the catalog as restored, not the history it replaced."""
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        database = Path(registry.settings.catalog_url.split("///", 1)[1])
    shutil.copy(database, tmp_path / "backup.db")
    with Registry.open(home) as registry:
        registry.promote("org/x@1", "production")  # in the journal, lost with the restore
    shutil.copy(tmp_path / "backup.db", database)
    stored = _stored_entries(home, "region-2")
    refused = _cli("hold", "set", "org/x@1", "--reason", "audit")
    assert refused.exit_code == CatalogBehindError.exit_code, refused.output
    assert "lacks 1 changes" in refused.output and "catalog rebuild" in refused.output
    with Registry.open(home) as registry:
        with pytest.raises(CatalogBehindError, match="nothing was changed"):
            registry.hold("org/x@1", reason="audit")
        assert registry.holds() == []
    assert _stored_entries(home, "region-2") == stored
    kept = _cli("catalog", "journal", "--new-epoch", "--json")
    assert kept.exit_code == 0, kept.output
    with Registry.open(home) as registry:
        registry.hold("org/x@1", reason="audit")
        assert all(s.behind == 0 and not s.error for s in registry.journal_status())
        assert "journal-epoch" in [e.action for e in registry.audit_events(limit=5)]
        assert registry.verify_audit().ok
        current = _dump(registry.settings.catalog_url)
        _old, new = _lose_catalog(registry, tmp_path)
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output
    rebuilt = _dump(new)
    assert rebuilt["aliases"] == current["aliases"] == []
    assert rebuilt["legal_holds"] == current["legal_holds"] and current["legal_holds"]


def test_a_catalog_restored_from_a_backup_is_recovered_whole_by_a_rebuild(
    home: Path, tmp_path: Path
) -> None:
    """The other way out: set the restored catalog aside and rebuild; what only the stores'
    journal held (the promote after the backup) is back."""
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        database = Path(registry.settings.catalog_url.split("///", 1)[1])
    shutil.copy(database, tmp_path / "backup.db")
    with Registry.open(home) as registry:
        registry.promote("org/x@1", "production")
    shutil.copy(tmp_path / "backup.db", database)
    assert _cli("promote", "org/x@1", "staging").exit_code == CatalogBehindError.exit_code
    database.rename(tmp_path / "restored.db")
    result = _cli("catalog", "rebuild", "--from", "region-1", "--json")
    assert result.exit_code == 0, result.output
    with Registry.open(home) as registry:
        assert registry.resolve("org/x:production").number == 1
        assert [a.alias for a in registry.aliases("org/x")] == ["production"]


def test_a_rolled_back_transaction_leaves_no_hole_in_the_journal(
    home: Path, tmp_path: Path, catalog_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import registry.catalog.repository as repository

    _two_regions(home, tmp_path, catalog_url)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        real = repository.write_entry

        def then_die(session: Any) -> int | None:
            real(session)
            raise KeyboardInterrupt("killed before COMMIT")

        with monkeypatch.context() as patch:
            patch.setattr(repository, "write_entry", then_die)
            with pytest.raises(KeyboardInterrupt):
                registry.promote("org/x@1", "production")
        registry.promote("org/x@1", "staging")
        head = registry.catalog.journal_head()
        seqs = [seq for seq, _at, _body in registry.catalog.journal_after(0, limit=100)]
        assert seqs == list(range(1, head + 1))
        read = journal.read(registry.replicas.regions[1].store)
        assert [e.seq for e in read.entries] == seqs


def test_audit_verify_trusts_only_the_links_a_rebuild_named(
    two_regions: Registry, tmp_path: Path
) -> None:
    """Rewriting any entry as a redacted token event breaks the chain: only entries a
    `catalog-rebuild` entry lists after them pass as links."""
    assert two_regions.verify_audit().ok
    target = _disguise_the_delete(two_regions.catalog)
    verification = two_regions.verify_audit()
    assert not verification.ok and verification.first_bad == target


def _disguise_the_delete(catalog: Catalog) -> int:
    """Rewrite the `delete` audit entry as a redacted token event, keeping its hash."""
    with catalog.engine.begin() as connection:
        target = int(
            connection.execute(
                text("SELECT id FROM audit_events WHERE action = 'delete'")
            ).scalar_one()
        )
        connection.execute(
            text(
                "UPDATE audit_events SET action = 'token-revoke', actor = '', "
                "subject = 'registry', details = :d WHERE id = :i"
            ),
            {"d": REDACTED_DETAILS, "i": target},
        )
    return target


def test_a_forged_rebuild_entry_cannot_pass_a_disguised_entry_off_as_a_link(
    two_regions: Registry,
) -> None:
    catalog = two_regions.catalog
    target = _disguise_the_delete(catalog)
    # A database writer appends a rebuild entry naming it (the chain hash is theirs to compute).
    catalog.audit("intruder", "catalog-rebuild", "registry", {"links": [target], "links_mac": "0"})
    verification = two_regions.verify_audit()
    assert not verification.ok and verification.first_bad == target


def test_journal_marks_belong_to_their_epoch_and_one_divergence_starts_one_epoch(
    home: Path, tmp_path: Path
) -> None:
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        catalog = registry.catalog
        first = catalog.journal_epoch().epoch
        second = catalog.start_journal_epoch(reason="test", actor="t", replacing=first)
        # A second process that found the same divergence starts nothing more.
        assert catalog.start_journal_epoch(reason="test", actor="t", replacing=first) == second
        assert catalog.journal_epoch().epoch == second
        # A drain that began in the first epoch cannot move a mark of the second.
        catalog.set_journal_mark(first, "region-1", 5)
        assert catalog.journal_marks() == {}
        states = registry.drain_journal()
        assert all(s.behind == 0 and not s.error for s in states)
        for region in registry.replicas.regions:
            read = journal.read(region.store)
            assert read.epoch is not None and read.epoch.epoch == second
            assert read.entries[-1].seq == catalog.journal_head()


def test_an_interrupted_rewrite_is_never_taken_for_the_journal(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog restored from a backup, kept by the operator (`--new-epoch`), rewrites its
    journal under a new epoch; region-1's rewrite stops after one segment. That region's newest
    epoch is then not a journal: a rebuild from it is refused, one from region-2 (whole) works
    and is not refused for it."""
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        registry.set_retention("org/x", keep_last=4)
        database = Path(registry.settings.catalog_url.split("///", 1)[1])
    shutil.copy(database, tmp_path / "backup.db")
    with Registry.open(home) as registry:
        registry.promote("org/x@1", "production")
    shutil.copy(tmp_path / "backup.db", database)
    real = BlobStore.put_journal_segment
    calls = {"n": 0}

    def one_then_fail(self: BlobStore, epoch: str, first: int, last: int, data: bytes) -> bool:
        if "region-a" in str(getattr(self.driver, "root", "")):
            calls["n"] += 1
            if calls["n"] > 1:
                raise StorageError("region-1 went away")
        return real(self, epoch, first, last, data)

    with Registry.open(home) as registry:
        with monkeypatch.context() as patch:
            patch.setattr(journal, "SEGMENT_ENTRIES", 1)
            patch.setattr(BlobStore, "put_journal_segment", one_then_fail)
            # The operator keeps the restored catalog: its journal is written anew.
            registry.new_journal_epoch()
            registry.hold("org/x@1", reason="audit")
        states = {s.region: s for s in registry.journal_status()}
        assert states["region-1"].behind > 0 and states["region-2"].behind == 0
        current = _dump(registry.settings.catalog_url)
        with monkeypatch.context() as patch:
            patch.setattr(journaling, "drain_journal", lambda ctx: [])
            _old, new = _lose_catalog(registry, tmp_path)
    refused = _cli("catalog", "rebuild", "--from", "region-1")
    assert refused.exit_code == 6 and "rewrite was interrupted" in refused.output
    assert not Path(new.split("///", 1)[1]).exists()
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output
    rebuilt = _dump(new)
    for name in ("aliases", "legal_holds", "retention_policies"):
        assert rebuilt[name] == current[name], name
    assert rebuilt["legal_holds"] and not rebuilt["aliases"]


def test_a_rebuild_stopped_while_writing_its_journal_leaves_its_catalog(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        registry.promote("org/x@1", "production")
        _old, new = _lose_catalog(registry, tmp_path)

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(journal, "drain", killed)
        assert _cli("catalog", "rebuild", "--from", "region-2").exit_code == 130
    assert Path(new.split("///", 1)[1]).exists()  # committed and in place
    with Registry.open(home) as registry:
        assert registry.resolve("org/x:production").number == 1
        registry.drain_journal()
        assert all(s.behind == 0 and not s.error for s in registry.journal_status())


def test_a_catalog_restored_from_before_a_rebuild_adopts_the_stores_with_a_new_epoch(
    home: Path, tmp_path: Path
) -> None:
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry:
        registry.push("org/x", _model(tmp_path, 1))
        database = Path(registry.settings.catalog_url.split("///", 1)[1])
    shutil.copy(database, tmp_path / "backup.db")
    database.unlink()
    assert _cli("catalog", "rebuild", "--from", "region-2").exit_code == 0
    database.unlink()
    shutil.copy(tmp_path / "backup.db", database)
    stuck = _cli("catalog", "journal", "--drain")
    assert stuck.exit_code == CatalogBehindError.exit_code, stuck.output
    assert "newer journal epoch" in stuck.output and "--new-epoch" in stuck.output
    adopted = _cli("catalog", "journal", "--new-epoch", "--json")
    assert adopted.exit_code == 0, adopted.output
    assert all(r["behind"] == 0 and not r["error"] for r in json.loads(adopted.stdout))


def test_a_commit_whose_outcome_is_unknown_keeps_its_version_record(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_regions(home, tmp_path)
    with Registry.open(home) as registry, monkeypatch.context() as patch:
        real = registry.catalog.commit_version

        def lost_acknowledgement(new: Any) -> Any:
            real(new)
            raise StorageError("connection lost at COMMIT")

        patch.setattr(registry.catalog, "commit_version", lost_acknowledgement)
        patch.setattr(journaling, "drain_journal", lambda ctx: [])
        with pytest.raises(StorageError):
            registry.push("org/x", _model(tmp_path, 1), message="did it land?")
        _lose_catalog(registry, tmp_path)
    assert not list((tmp_path / "region-b" / "objects" / "records").rglob("*.void"))
    result = _cli("catalog", "rebuild", "--from", "region-2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["restored_from_version_records"] == ["org/x@1"]
