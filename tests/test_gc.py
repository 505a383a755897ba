"""Expiry, delete and garbage collection: tombstones that stay auditable, a sweep that never
takes a referenced, leased, locked, held, aliased or too-young object and counts what it
reclaims, Object Lock extended by policy, and pushes interleaved with gc on SQLite and
PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer
from sqlalchemy import text

from cli import ui
from cli.main import main
from registry import wire
from registry.blobstore import BLOB, MANIFEST
from registry.client import RemoteRegistry
from registry.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RetentionError,
    StorageError,
)
from registry.service import PROMOTER, Registry
from registry.storage.lock import COMPLIANCE, ObjectLock, Retention
from registry.storage.s3 import S3Driver
from registry.testing.models import make_model
from tests.conftest import tree


def _objects(root: Path) -> dict[str, int]:
    """Every object of a local store (name -> size), the registry marker and keys, the journal
    and version records (gc never deletes them) aside."""
    objects = root / "objects"
    return {
        p.relative_to(objects).as_posix(): p.stat().st_size
        for p in objects.rglob("*")
        if p.is_file()
        and not p.relative_to(objects).as_posix().startswith(("registry/", "journal/", "records/"))
    }


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """m1, m3 and m4 are distinct; m2 is m3 plus a notes file (it shares m3's shards)."""
    made = {
        name: make_model(tmp_path / name, shards=2, shard_size=60_000, seed=seed)
        for name, seed in (("m1", 1), ("m3", 3), ("m4", 4))
    }
    shutil.copytree(made["m3"], tmp_path / "m2")
    (tmp_path / "m2" / "notes.txt").write_text("only in version 2\n")
    made["m2"] = tmp_path / "m2"
    return made


@pytest.fixture
def four(home: Path, models: dict[str, Path], catalog_url: str | None) -> Path:
    """llama@1..4 (pushed m1, m2, m3, m4), production -> @1, keep the last 2."""
    Registry.init(home, catalog_url=catalog_url)
    with Registry.open(home) as registry:
        for name in ("m1", "m2", "m3", "m4"):
            registry.push("llama", models[name])
        registry.promote("llama@1", "production")
        registry.set_retention("llama", keep_last=2)
    return home


def test_gc_expires_what_the_policy_drops_and_sweeps_only_unreferenced_objects(
    four: Path, tmp_path: Path, models: dict[str, Path]
) -> None:
    store = four / "store"
    with Registry.open(four) as registry:
        v2 = registry.resolve("llama@2")
        notes = next(f for f in v2.files if f.path == "notes.txt")
        notes_object = registry.store.object_name(BLOB, notes.digest)
        manifest_object = registry.store.object_name(MANIFEST, v2.digest)
        before = _objects(store)

        preview = registry.gc(dry_run=True, grace="0h")
        assert [v.ref for v in preview.expired] == ["llama@2"]
        assert {(s.purpose, s.digest) for s in preview.swept} == {
            (BLOB, notes.digest),
            (MANIFEST, v2.digest),
        }
        assert _objects(store) == before  # a dry run changes nothing
        assert registry.resolve("llama@2").number == 2

        report = registry.gc(grace="0h")
        assert [v.ref for v in report.expired] == ["llama@2"]
        after = _objects(store)
        gone = set(before) - set(after)
        # Data and its key slot, for the notes blob and the manifest: nothing else.
        assert notes_object in gone and manifest_object in gone
        assert all(name.startswith("slots/") for name in gone - {notes_object, manifest_object})
        assert report.bytes_reclaimed == before[notes_object] + before[manifest_object]
        assert report.bytes_reclaimed == preview.bytes_reclaimed
        # llama@3 shares every other object of llama@2: still whole.
        registry.pull("llama@3", tmp_path / "out3")
        assert tree(tmp_path / "out3") == tree(models["m3"])
        registry.pull("llama:production", tmp_path / "out1")  # aliased: never expired

        with pytest.raises(NotFoundError, match="expired by the retention policy"):
            registry.resolve("llama@2")
        tombstone = registry.versions("llama", expired=True)[1]
        assert tombstone.expired and tombstone.digest == v2.digest
        assert [v.number for v in registry.versions("llama")] == [1, 3, 4]
        actions = [e.action for e in registry.audit_events(subject="llama")]
        assert "expire" in actions
        assert registry.verify_audit().ok

        again = registry.gc(grace="0h")
        assert not again.expired and not again.swept  # nothing left to do
        assert _objects(store) == after


def test_gc_keeps_young_held_and_referenced_objects(four: Path) -> None:
    with Registry.open(four) as registry:
        registry.hold("llama@2", reason="litigation")
        held = registry.gc(grace="0h")
        assert not held.expired and not held.swept  # a held version never expires
        with pytest.raises(RetentionError, match="legal hold"):
            registry.delete("llama@2", reason="cleanup")
        registry.release_hold("llama@2", reason="settled")

        young = registry.gc()  # the default grace window: 24 hours
        assert [v.ref for v in young.expired] == ["llama@2"]
        assert not young.swept
        assert {k.reason for k in young.kept} == {"unneeded for less than the grace window (1d)"}
        # A day later the same objects go.
        later = registry.gc(now=datetime.now(UTC) + timedelta(hours=25))
        assert {s.digest for s in later.swept} == {k.digest for k in young.kept}


def test_delete_needs_admin_a_reason_and_nothing_keeping_the_version(
    four: Path, tmp_path: Path
) -> None:
    with Registry.open(four, role=PROMOTER) as promoter, pytest.raises(PermissionDeniedError):
        promoter.delete("llama@2", reason="x")
    with Registry.open(four) as registry:
        with pytest.raises(InvalidInputError, match="reason"):
            registry.delete("llama@2", reason="  ")
        with pytest.raises(RetentionError, match="alias production"):
            registry.delete("llama@1", reason="x")
        with pytest.raises(RetentionError, match="among the last 2"):
            registry.delete("llama@4", reason="x")
        registry.set_retention("llama", clear=True)  # no rule: nothing stops a delete
        deleted = registry.delete("llama@4", reason="leaked a secret")
        assert deleted.expiry_reason == "deleted: leaked a secret"
        with pytest.raises(NotFoundError, match="deleted: leaked a secret"):
            registry.pull("llama@4", tmp_path / "out")
        assert registry.resolve("llama").number == 3  # the newest live version
        event = registry.audit_events(subject="llama", limit=1)[0]
        assert (event.action, event.details["reason"]) == ("delete", "leaked a secret")
        report = registry.gc(grace="0h")
        assert not report.expired  # no rule: gc expires nothing
        assert {s.purpose for s in report.swept} == {BLOB, MANIFEST}


def test_content_of_a_swept_version_pushed_again_is_a_new_version(
    four: Path, tmp_path: Path, models: dict[str, Path]
) -> None:
    with Registry.open(four) as registry:
        registry.gc(grace="0h")
        again = registry.push("llama", models["m2"])
        assert again.created and again.version.number == 5
        assert again.uploaded_bytes == len("only in version 2\n")  # the swept blob only
        registry.pull("llama@5", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(models["m2"])
        assert registry.verify("llama@5", read_data=True).ok
        # Referenced again: no longer a candidate (llama@3 falls out of the last 2 now).
        swept = registry.gc(grace="0h").swept
        assert {s.digest for s in swept}.isdisjoint(f.digest for f in again.version.files)


def _run(target: object) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, errors


def test_a_push_that_reuses_a_blob_keeps_it_from_a_concurrent_gc(
    four: Path, tmp_path: Path, models: dict[str, Path]
) -> None:
    """The push leased llama@2's notes blob and found it stored; gc, running before the push
    commits, would sweep it (llama@2 expires): the lease keeps it."""
    pushed = tmp_path / "m5"
    shutil.copytree(models["m4"], pushed)
    (pushed / "notes.txt").write_text("only in version 2\n")  # the blob llama@2 alone holds
    stored, resume = threading.Event(), threading.Event()
    with Registry.open(four) as pusher, Registry.open(four) as collector:
        v2 = collector.resolve("llama@2")
        notes = next(f.digest for f in v2.files if f.path == "notes.txt")

        def pause() -> None:
            stored.set()
            assert resume.wait(60)

        pusher.checkpoints["push-stored"] = pause
        thread, errors = _run(lambda: pusher.push("llama", pushed))
        assert stored.wait(60)
        report = collector.gc(grace="0h")
        assert [v.ref for v in report.expired] == ["llama@2"]
        kept = {k.digest: k.reason for k in report.kept}
        assert kept == {notes: "in use by a push in flight"}
        assert {s.purpose for s in report.swept} == {MANIFEST}  # llama@2's manifest only
        resume.set()
        thread.join(60)
        assert not errors
        assert collector.resolve("llama").number == 5
        collector.pull("llama@5", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(pushed)
        assert collector.verify("llama@5", read_data=True).ok
        # Referenced now (llama@3 falls out of the last 2 and goes).
        assert notes not in {s.digest for s in collector.gc(grace="0h").swept}


def test_a_push_waits_for_a_sweep_in_progress_and_stores_the_blob_anew(
    four: Path, tmp_path: Path, models: dict[str, Path]
) -> None:
    """gc claimed llama@2's notes blob and is deleting it when a push that needs it starts:
    the push waits for the sweep, then uploads the blob again."""
    pushed = tmp_path / "m5"
    shutil.copytree(models["m4"], pushed)
    (pushed / "notes.txt").write_text("only in version 2\n")
    claimed, resume = threading.Event(), threading.Event()
    with Registry.open(four) as pusher, Registry.open(four) as collector:
        sweeping = 0

        def pause() -> None:
            nonlocal sweeping
            sweeping += 1
            if sweeping == 1:
                claimed.set()
                assert resume.wait(60)

        collector.checkpoints["gc-claimed"] = pause
        gc_thread, gc_errors = _run(lambda: collector.gc(grace="0h"))
        assert claimed.wait(60)
        results = []
        push_thread, push_errors = _run(lambda: results.append(pusher.push("llama", pushed)))
        push_thread.join(0.5)
        assert push_thread.is_alive()  # waiting for the sweep
        resume.set()
        gc_thread.join(60)
        push_thread.join(60)
        assert not gc_errors and not push_errors
        assert results[0].version.number == 5
        assert results[0].uploaded_bytes >= len("only in version 2\n")
        pusher.pull("llama@5", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(pushed)
        assert pusher.verify("llama@5", read_data=True).ok


def test_a_sweep_left_by_a_crashed_gc_blocks_pushes_until_a_gc_finishes_it(
    four: Path, tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry.open(four) as registry:
        other = make_model(tmp_path / "other", shards=1, shard_size=20_000, seed=9)
        registry.push("other", other)
        registry.delete("other@1", reason="test")
        digest = registry.versions("other", expired=True)[0].files[0].digest
        assert (
            registry.catalog.claim_sweep(
                digest, BLOB, run="crashed", stored_before=datetime.now(UTC)
            )
            is None
        )
        registry.sweep_wait = 0.3
        with pytest.raises(ConflictError, match="being deleted by a garbage collection"):
            registry.push("other", other)
        # Not stale yet: another gc leaves a claim that may be alive.
        assert ("blob", digest) in {(k.purpose, k.digest) for k in registry.gc(grace="0h").kept}
        monkeypatch.setattr("registry.ops.gc.STALE_CLAIM", timedelta(0))
        finished = registry.gc(grace="0h")
        assert digest in {s.digest for s in finished.swept}
        assert not registry.catalog.sweeps()
        assert registry.push("other", other).version.number == 2


def test_cli_gc_and_delete(four: Path) -> None:
    runner = CliRunner()
    dry = runner.invoke(main, ["gc", "--dry-run", "--grace", "0h"])
    assert dry.exit_code == 0, dry.output
    assert "would expire: llama@2" in dry.output and "would reclaim" in dry.output
    refused = runner.invoke(main, ["gc", "--grace", "0h"], input="n\n")
    assert refused.exit_code == 16 and "not confirmed" in refused.output
    assert runner.invoke(main, ["ls", "llama", "--json"]).output.count('"ref"') == 4
    done = runner.invoke(main, ["gc", "--grace", "0h", "--yes", "--json"])
    assert done.exit_code == 0, done.output
    assert '"expired": [\n    "llama@2"\n  ]' in done.output and '"bytes_reclaimed"' in done.output
    listed = runner.invoke(main, ["ls", "llama", "--expired", "--json"])
    assert '"expiry_reason": "expired by the retention policy"' in listed.output
    table = runner.invoke(main, ["ls", "llama", "--expired"])
    assert "expired" in table.output and table.output.count("live") == 3
    missing_reason = runner.invoke(main, ["delete", "llama@3", "--yes"])
    assert missing_reason.exit_code == 2
    kept = runner.invoke(main, ["delete", "llama@3", "--reason", "x", "--yes"])
    assert kept.exit_code == 5 and "among the last 2" in kept.output
    with Registry.open(four) as registry:
        registry.set_retention("llama", keep_last=1)
    deleted = runner.invoke(main, ["delete", "llama@3", "--reason", "bad evals", "--yes"])
    assert deleted.exit_code == 0, deleted.output
    gone = runner.invoke(main, ["pull", "llama@3", "out"])
    assert gone.exit_code == 4 and "deleted: bad evals" in gone.output


# -- Object Lock: never deleted while locked, extended by policy, never shortened ----------


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server of this test's own (Object Lock buckets are made by `init`)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_home(home: Path, moto_endpoint: str) -> tuple[Path, str]:
    Registry.init(
        home,
        store=f"s3://gc-bucket/r?region=us-east-1&endpoint={moto_endpoint}&retention_days=1",
    )
    return home, moto_endpoint


def test_gc_never_deletes_a_locked_object_and_extends_locks_by_policy(
    s3_home: tuple[Path, str], models: dict[str, Path]
) -> None:
    home, endpoint = s3_home
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with Registry.open(home) as registry:
        for name in ("m1", "m3", "m4"):
            registry.push("llama", models[name])
        with pytest.raises(RetentionError, match="keep-within 12h is below"):
            registry.set_retention("llama", keep_within="12h")
        registry.set_retention("llama", keep_last=1, keep_within="30d")
        lock = registry.store.driver
        assert isinstance(lock, ObjectLock)
        v4 = registry.resolve("llama@3")
        name = registry.store.object_name(MANIFEST, v4.digest)
        first = lock.retention(name)
        assert first is not None and first.until < datetime.now(UTC) + timedelta(days=2)

        report = registry.gc(grace="0h")
        assert not report.expired and report.locks_extended > 0
        extended = lock.retention(name)
        assert extended is not None and extended.mode == COMPLIANCE
        assert abs(extended.until - (v4.created_at + timedelta(days=30))) < timedelta(minutes=1)
        # Never shortened: a longer lock set by hand stays.
        longer = Retention(COMPLIANCE, datetime.now(UTC) + timedelta(days=400))
        lock.extend_retention(name, longer)
        registry.gc(grace="0h")
        kept_lock = lock.retention(name)
        assert kept_lock is not None and kept_lock.until > datetime.now(UTC) + timedelta(days=399)

        # Promoting extends the version's locks at once (here: a store minimum raised to 10 days).
        assert isinstance(lock, S3Driver)
        lock.minimum_retention = timedelta(days=10)
        v1_name = registry.store.object_name(MANIFEST, registry.resolve("llama@1").digest)
        change = registry.promote("llama@1", "production")
        assert not change.unlocked
        promoted = lock.retention(v1_name)
        assert promoted is not None
        assert promoted.until > datetime.now(UTC) + timedelta(days=9, hours=23)
        registry.rollback("llama", "production", to="llama@3")
        lock.minimum_retention = timedelta(days=1)

        # Expired by the policy, but its objects are locked: gc keeps them.
        registry.set_retention("llama", keep_last=1)
        with pytest.raises(RetentionError, match="Object Lock"):
            registry.delete("llama@1", reason="x")
        later = registry.gc(grace="0h", now=datetime.now(UTC) + timedelta(days=2))
        assert sorted(v.ref for v in later.expired) == ["llama@1", "llama@2"]
        assert not later.swept
        assert later.kept and all("Object Lock (COMPLIANCE) until" in k.reason for k in later.kept)
        v1 = next(v for v in later.expired if v.number == 1)
        v1_manifest = registry.store.object_name(MANIFEST, v1.digest)
        head = client.head_object(Bucket="gc-bucket", Key=f"r/{v1_manifest}")
        assert head["ContentLength"] > 0  # still there


@pytest.fixture
def two_locking_regions(home: Path, moto_endpoint: str) -> str:
    """Two S3 regions, both with Object Lock (1 day): two buckets behind one moto server."""
    endpoint = moto_endpoint
    Registry.init(
        home,
        store=[
            f"s3://gc-east/r?region=us-east-1&endpoint={endpoint}&retention_days=1&name=east",
            f"s3://gc-west/r?region=us-west-2&endpoint={endpoint}&retention_days=1&name=west",
        ],
    )
    return endpoint


def test_gc_names_every_region_whose_lock_keeps_an_object(
    two_locking_regions: str, home: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = boto3.session.Session().client(
        "s3", endpoint_url=two_locking_regions, region_name="us-east-1"
    )
    with Registry.open(home) as registry:
        old = registry.push("llama", models["m1"]).version
        new = registry.push("llama", models["m4"]).version
        registry.set_retention("llama", keep_last=1)
        # Older than the stores' lock minimum, so that only the objects' own locks keep them.
        _sql(
            registry,
            "UPDATE versions SET created_at = :old",
            old=datetime.now(UTC) - timedelta(days=30),
        )
        manifest = registry.store.object_name(MANIFEST, old.digest)
    # West also holds the old manifest: its reason there is the hold, east's is the lock.
    client.put_object_legal_hold(Bucket="gc-west", Key=f"r/{manifest}", LegalHold={"Status": "ON"})

    runner = CliRunner()
    done = runner.invoke(main, ["gc", "--grace", "0h", "--yes", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["expired"] == ["llama@1"] and report["swept"] == []
    kept = {(k["purpose"], k["digest"]): k for k in report["kept"]}
    shared = {f.digest for f in new.files}
    assert set(kept) == {(MANIFEST, old.digest)} | {
        (BLOB, f.digest) for f in old.files if f.digest not in shared
    }
    lock = "Object Lock (COMPLIANCE) until "
    for (purpose, _digest), item in kept.items():
        regions = {r["region"]: r["reason"] for r in item["regions"]}
        assert set(regions) == {"east", "west"}, item
        assert regions["east"].startswith(lock)
        if purpose == MANIFEST:
            assert regions["west"] == "under an S3 legal hold"
            assert item["reason"] == f"{regions['east']} in east; under an S3 legal hold in west"
        else:
            assert regions["west"].startswith(lock)
            assert item["reason"].count(lock) == 2

    # Through the REST API the client reads the same regions back.
    remote = RemoteRegistry("http://127.0.0.1:9", "mrt_unused")
    monkeypatch.setattr(remote, "_json", lambda *_args, **_kwargs: {**report, "expired": []})
    assert wire.dump(wire.GcReport.of(remote.gc(dry_run=True)))["kept"] == report["kept"]

    # The table has a line per region (wide enough here not to fold them).
    monkeypatch.setattr(ui.stdout, "width", 250)
    table = runner.invoke(main, ["gc", "--dry-run", "--grace", "0h"])
    assert table.exit_code == 0, table.output
    assert "west: under an S3 legal hold" in table.stdout
    assert table.stdout.count(f"east: {lock}") == len(kept)
    assert table.stdout.count(f"west: {lock}") == len(kept) - 1

    # A region whose lock state cannot be read keeps the object too, and says why.
    with Registry.open(home) as registry:

        def unreadable(name: str) -> bool:
            raise StorageError("connection refused")

        monkeypatch.setattr(registry.replicas.regions[1].store.driver, "legal_hold", unreadable)
        dry = registry.gc(dry_run=True, grace="0h")
    assert {(k.purpose, k.digest) for k in dry.kept} == set(kept)
    for item in dry.kept:
        assert dict(item.regions)["west"] == "lock state unknown (connection refused)"
        assert dict(item.regions)["east"].startswith(lock)
        assert item.reason.endswith("; lock state unknown (connection refused) in west")


# -- the catalog's side of the protocol, and upgrades ---------------------------------------


def _sql(registry: Registry, statement: str, **params: object) -> None:
    with registry.catalog.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_the_grace_window_counts_from_the_expiry_not_the_push(four: Path) -> None:
    with Registry.open(four) as registry:
        old = datetime.now(UTC) - timedelta(days=30)
        _sql(registry, "UPDATE versions SET created_at = :old", old=old)
        _sql(registry, "UPDATE blobs SET created_at = :old", old=old)
        report = registry.gc(grace="24h")
        assert [v.ref for v in report.expired] == ["llama@2"]
        assert not report.swept  # stored a month ago, but unneeded only since now
        assert registry.gc(grace="24h", now=datetime.now(UTC) + timedelta(hours=25)).swept


def test_the_catalog_refuses_claims_on_leased_objects_and_expiry_of_kept_versions(
    four: Path,
) -> None:
    with Registry.open(four) as registry:
        v2 = registry.resolve("llama@2")
        notes = next(f.digest for f in v2.files if f.path == "notes.txt")
        registry.catalog.take_lease("push-1", [(notes, BLOB)], ttl=timedelta(hours=1))
        registry.gc(grace="0h")  # expires llama@2; its notes blob is leased
        later = datetime.now(UTC) + timedelta(days=1)
        refused = registry.catalog.claim_sweep(notes, BLOB, run="r", stored_before=later)
        assert refused == "in use by a push in flight"
        registry.catalog.drop_lease("push-1")
        assert registry.catalog.claim_sweep(notes, BLOB, run="r", stored_before=later) is None
        assert registry.catalog.claim_sweep(notes, BLOB, run="s", stored_before=later) == (
            "claimed by another gc"
        )

        # The plan is made again where versions are expired: an alias placed since wins.
        registry.set_retention("llama", keep_last=1)
        registry.promote("llama@3", "staging")
        expired = registry.catalog.expire_versions(
            "llama", now=datetime.now(UTC), locked_for=None, actor="t", only={3, 4}
        )
        assert expired == []  # @3 aliased now, @4 the newest
        assert registry.resolve("llama@3").number == 3
        # And an alias never moves to a tombstone, even asked directly.
        with pytest.raises(NotFoundError, match="expired"):
            registry.catalog.move_alias(
                "llama",
                "production",
                kind="promote",
                target=2,
                reason="",
                actor="t",
                may_move_protected=True,
            )


def test_a_push_whose_lease_lapsed_commits_nothing(
    four: Path, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("registry.ops.copies.LEASE_TTL", timedelta(seconds=1))
    pushed = tmp_path / "m5"
    shutil.copytree(models["m4"], pushed)
    (pushed / "notes.txt").write_text("only in version 2\n")
    with Registry.open(four) as registry:
        registry.checkpoints["push-stored"] = lambda: time.sleep(1.5)
        with pytest.raises(ConflictError, match="longer than its lease"):
            registry.push("llama", pushed)
        assert registry.resolve("llama").number == 4
        registry.checkpoints.clear()
        monkeypatch.setattr("registry.ops.copies.LEASE_TTL", timedelta(hours=24))
        assert registry.push("llama", pushed).version.number == 5


def test_a_gc_whose_claim_was_taken_over_deletes_nothing_more(
    four: Path, tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc A stalls after claiming llama@2's notes blob; gc B takes the claim over and sweeps
    it; a push stores it again; A wakes up and must not delete the new copy."""
    pushed = tmp_path / "m5"
    shutil.copytree(models["m4"], pushed)
    (pushed / "notes.txt").write_text("only in version 2\n")
    claimed, resume = threading.Event(), threading.Event()
    with Registry.open(four) as stalled, Registry.open(four) as other:
        first = True

        def pause() -> None:
            nonlocal first
            if first:
                first = False
                claimed.set()
                assert resume.wait(60)

        stalled.checkpoints["gc-claimed"] = pause
        thread, errors = _run(lambda: stalled.gc(grace="0h"))
        assert claimed.wait(60)
        monkeypatch.setattr("registry.ops.gc.STALE_CLAIM", timedelta(0))
        taken = other.gc(grace="0h")
        assert taken.swept
        assert other.push("llama", pushed).version.number == 5
        resume.set()
        thread.join(60)
        assert not errors
        assert other.verify("llama@5", read_data=True).ok
        other.pull("llama@5", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(pushed)


def test_interactive_gc_finishes_a_stopped_gcs_claims(
    four: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Registry.open(four) as registry:
        registry.gc(grace="0h")  # everything due is done
        registry.push("other", make_model(four.parent / "o", shards=1, shard_size=9_000, seed=5))
        registry.delete("other@1", reason="x")
        digest = registry.versions("other", expired=True)[0].files[0].digest
        later = datetime.now(UTC) + timedelta(days=1)
        assert registry.catalog.claim_sweep(digest, BLOB, run="gone", stored_before=later) is None
    monkeypatch.setattr("registry.ops.gc.STALE_CLAIM", timedelta(0))
    runner = CliRunner()
    refused = runner.invoke(main, ["gc", "--grace", "0h", "--json"])
    assert refused.exit_code == 3 and "--yes" in refused.output
    out = runner.invoke(main, ["gc", "--grace", "0h"], input="y\n")
    assert out.exit_code == 0, out.output
    with Registry.open(four) as registry:
        assert registry.catalog.sweeps() == []


def test_expiry_and_promotes_racing_never_leave_an_alias_on_a_tombstone(four: Path) -> None:
    """Expiry re-plans with the aliases it reads, and alias moves refuse tombstones: run both
    at once and check the invariant. (A smoke test: the serialisation that closes the race
    window between the two is not something a timing test can prove.)"""
    with Registry.open(four) as registry:
        registry.set_retention("llama", keep_last=1)
    stop = threading.Event()

    def promote() -> None:
        with Registry.open(four) as registry:
            while not stop.is_set():
                for number in (1, 2, 3):
                    with contextlib.suppress(NotFoundError):
                        registry.promote(f"llama@{number}", "canary")

    thread, errors = _run(promote)
    try:
        with Registry.open(four) as registry:
            for _ in range(5):
                registry.catalog.expire_versions(
                    "llama", now=datetime.now(UTC), locked_for=None, actor="gc"
                )
    finally:
        stop.set()
        thread.join(60)
    assert not errors
    with Registry.open(four) as registry:
        for alias in registry.aliases("llama"):
            assert registry.resolve(f"llama@{alias.number}").number == alias.number
        live = {v.number for v in registry.versions("llama")}
        assert {a.number for a in registry.aliases("llama")} <= live


def test_a_populated_catalog_upgrades_to_expiry(tmp_path: Path, catalog_url: str | None) -> None:
    """Migration 0007 rebuilds `versions` on SQLite (batch mode) while other tables point at it."""
    from alembic import command

    from registry.catalog.db import _alembic_config, create_catalog_engine, migrate
    from registry.catalog.repository import Catalog
    from registry.refs import parse_reference

    engine = create_catalog_engine(catalog_url or f"sqlite:///{tmp_path / 'old.db'}")
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    now = datetime.now(UTC)
    digest, blob = "blake3:" + "a" * 64, "blake3:" + "b" * 64
    with engine.begin() as connection:
        for statement, params in [
            ("INSERT INTO models (id, name, created_at, created_by) VALUES (1, 'm', :t, 'u')", {}),
            (
                "INSERT INTO blobs (digest, size, object_name, sealed_size, chunk_size, "
                "created_at) VALUES (:b, 3, 'blobs/x', 100, 65536, :t)",
                {},
            ),
            (
                "INSERT INTO versions (id, model_id, number, digest, manifest_object, message, "
                "created_at, created_by, signed_by, file_count, total_size, tensor_count, "
                "parameter_count, dtypes) VALUES (1, 1, 1, :d, 'manifests/x', '', :t, 'u', 'k', "
                "1, 3, 0, 0, '')",
                {},
            ),
            (
                "INSERT INTO version_files (version_id, path, size, digest, tensor_count) "
                "VALUES (1, 'a.bin', 3, :b, 0)",
                {},
            ),
            (
                "INSERT INTO aliases (model_id, name, version_id, protected, updated_at, "
                "updated_by) VALUES (1, 'production', 1, false, :t, 'u')",
                {},
            ),
            (
                "INSERT INTO legal_holds (version_id, reason, placed_by, placed_at) "
                "VALUES (1, 'r', 'u', :t)",
                {},
            ),
        ]:
            connection.execute(text(statement), {"t": now, "d": digest, "b": blob, **params})
    migrate(engine)
    catalog = Catalog(engine)
    version = catalog.resolve(parse_reference("m:production"))
    assert (version.number, version.digest, version.expired_at) == (1, digest, None)
    assert [f.digest for f in version.files] == [blob]
    assert [h.number for h in catalog.holds()] == [1]
    # Migration 0009 starts the journal with every row the catalog held before it existed.
    entries = catalog.journal_after(0, limit=20)
    assert [seq for seq, _at, _body in entries] == list(range(1, len(entries) + 1))
    rows: dict[str, list[dict[str, object]]] = {}
    for _seq, _at, body in entries:
        for name, found in json.loads(body)["rows"].items():
            rows.setdefault(name, []).extend(found)
    assert {name: len(found) for name, found in rows.items()} == {
        "models": 1,
        "blobs": 1,
        "versions": 1,
        "version_files": 1,
        "aliases": 1,
        "legal_holds": 1,
    }
    assert rows["versions"][0]["digest"] == digest and rows["versions"][0]["expired_at"] is None
    assert datetime.fromisoformat(rows["models"][0]["created_at"]) == now
    catalog.close()
