"""Disaster recovery with an S3 Object Lock region (moto, in process): the journal segments and
version records a region holds are locked like its blobs; a lost catalog is rebuilt from the S3
region alone, identical table by table; `keys rotate` finishes although Object Lock keeps the old
key's slot objects, and once the old key file is destroyed everything still pulls and verifies.

moto keeps Object Lock settings and refuses to delete a locked object version (AccessDenied), but
lets a retention be shortened (tests/test_s3_lock.py); the refusals checked here are both the
registry's own (`S3Driver.delete` reads the lock and refuses first) and the bucket's."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from registry import journal
from registry.blobstore import BLOB, MANIFEST
from registry.errors import RetentionError
from registry.ops import journaling
from registry.replication import VERIFIED
from registry.service import Registry
from registry.storage.lock import COMPLIANCE
from registry.storage.s3 import S3Driver
from registry.testing.models import make_model
from tests.conftest import LOCKED_BUCKET, tree
from tests.test_rebuild import RESTORED, _cli, _dump

PREFIX = "vault"
S3_REGION = "vault"
LOCAL_REGION = "region-1"
STORE = f"s3://{LOCKED_BUCKET}/{PREFIX}?region=us-east-1&retention_days=1&name={S3_REGION}"


def _keys(client: Any, under: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=LOCKED_BUCKET, Prefix=f"{PREFIX}/{under}"
    )
    return sorted(entry["Key"] for page in pages for entry in page.get("Contents", []))


def _locked_for_a_day(client: Any, key: str) -> None:
    head = client.head_object(Bucket=LOCKED_BUCKET, Key=key)
    assert head["ObjectLockMode"] == COMPLIANCE, key
    floor = datetime.now(UTC) + timedelta(days=1) - timedelta(minutes=5)
    assert head["ObjectLockRetainUntilDate"] >= floor, key


def _region(registry: Registry, name: str) -> Any:
    return next(r for r in registry.replicas.regions if r.name == name)


@pytest.fixture
def s3(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return moto_s3


@pytest.fixture
def models(s3: Any, home: Path, tmp_path: Path) -> dict[str, Path]:
    """A local region and an S3 Object Lock region, with pushes, promotes, a rollback, holds
    placed and released, and a retention policy behind them."""
    Registry.init(home, store=[str(tmp_path / "region-a"), STORE])
    pushed = {
        "org/llama@1": make_model(tmp_path / "m1", shards=2, shard_size=100_000, seed=1),
        "org/llama@2": make_model(tmp_path / "m2", shards=2, shard_size=100_000, seed=2),
        "org/tiny@1": make_model(tmp_path / "m3", shards=1, shard_size=30_000, seed=3),
        "org/tiny@2": make_model(tmp_path / "m4", shards=1, shard_size=40_000, seed=4),
    }
    with Registry.open(home) as registry:
        for ref, path in pushed.items():
            registry.push(ref.split("@")[0], path, message=f"cut {ref}")
        registry.promote("org/llama@1", "production", reason="launch")
        registry.promote("org/llama@2", "production", reason="better evals")
        registry.rollback("org/llama", "production", reason="regression")
        registry.promote("org/llama@2", "staging")
        registry.hold("org/llama@2", reason="litigation")
        registry.hold("org/tiny@1", reason="audit")
        registry.release_hold("org/tiny@1", reason="audit closed")
        registry.set_retention("org/tiny", keep_last=5)
        # (A delete is refused here: the S3 region's Object Lock keeps every version a day.)
        with pytest.raises(RetentionError, match="Object Lock"):
            registry.delete("org/tiny@1", reason="superseded")
    return pushed


def test_journal_and_records_are_locked_and_the_catalog_is_rebuilt_from_s3(
    models: dict[str, Path], s3: Any, home: Path, tmp_path: Path
) -> None:
    with Registry.open(home) as registry:
        head = registry.catalog.journal_head()
        status = {s.region: (s.mark, s.behind, s.error) for s in registry.journal_status()}
        assert status == {LOCAL_REGION: (head, 0, ""), S3_REGION: (head, 0, "")}
        driver = _region(registry, S3_REGION).store.driver
        assert isinstance(driver, S3Driver)
        catalog_url = registry.settings.catalog_url
        held_blob = _region(registry, S3_REGION).store.object_name(
            BLOB, registry.resolve("org/llama@2").files[0].digest
        )

        # In the bucket: segments covering the whole journal, one record per push, sealed.
        segments = [k for k in _keys(s3, "journal/") if not k.endswith("/start")]
        assert len(_keys(s3, "journal/")) == len(segments) + 1  # one epoch, its marker
        records = [k for k in _keys(s3, "records/") if not k.endswith(".void")]
        assert segments and len(records) == 4
        covered = [tuple(map(int, key.rsplit("/", 1)[1].split("-"))) for key in segments]
        assert covered[0][0] == 1 and max(last for _first, last in covered) == head
        for key in segments + records:
            body = s3.get_object(Bucket=LOCKED_BUCKET, Key=key)["Body"].read()
            assert b"llama" not in body and b"tiny" not in body and b"tester" not in body
        # Locked like the blobs, manifests and key slots beside them (COMPLIANCE, a day).
        others = [k for k in _keys(s3, "") if k.split("/")[1] in ("blobs", "manifests", "slots")]
        assert others
        for key in segments + records + others:
            _locked_for_a_day(s3, key)
        # The registry refuses to delete them, and so does the bucket when asked behind its back.
        for key in (segments[0], records[0]):
            with pytest.raises(RetentionError, match="COMPLIANCE"):
                driver.delete(key.removeprefix(f"{PREFIX}/"))
            version = s3.head_object(Bucket=LOCKED_BUCKET, Key=key)["VersionId"]
            with pytest.raises(ClientError, match="AccessDenied"):
                s3.delete_object(Bucket=LOCKED_BUCKET, Key=key, VersionId=version)
            assert s3.head_object(Bucket=LOCKED_BUCKET, Key=key)["VersionId"] == version
        assert (
            s3.head_object(Bucket=LOCKED_BUCKET, Key=f"{PREFIX}/{held_blob}")[
                "ObjectLockLegalHoldStatus"
            ]
            == "ON"
        )

    # The catalog is lost, and the local region's journal with it: the S3 region's must do.
    database = Path(catalog_url.split("///", 1)[1])
    lost = tmp_path / "lost-catalog.db"
    os.replace(database, lost)
    shutil.move(tmp_path / "region-a" / "objects" / "journal", tmp_path / "lost-journal")
    before = _dump(f"sqlite:///{lost}")
    result = _cli("catalog", "rebuild", "--from", S3_REGION, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["region"] == S3_REGION
    assert report["journal_entries"] == head and report["journal_segments"] >= 1
    assert report["restored_from_version_records"] == [] and report["not_restored"] == []
    assert report["bad_copies"] == [] and report["regions_unreachable"] == []
    assert sorted(report["regions_probed"]) == sorted([LOCAL_REGION, S3_REGION])
    after = _dump(catalog_url)
    for name in RESTORED:
        assert after[name] == before[name], name
    assert before["legal_holds"] and before["aliases"] and before["key_slots"]
    placements = {(row[2], row[4]) for row in after["placements"]}
    assert placements == {(LOCAL_REGION, VERIFIED), (S3_REGION, VERIFIED)}

    with Registry.open(home) as registry:
        # The rebuild wrote the new catalog's journal, its own audit entry included, to both
        # regions under a new epoch (the S3 region keeps the old one beside it, locked).
        marks = {s.region: (s.mark, s.behind) for s in registry.journal_status()}
        assert marks == {S3_REGION: (head + 1, 0), LOCAL_REGION: (head + 1, 0)}
        assert sorted(report["journal_written_to"]) == sorted([LOCAL_REGION, S3_REGION])
        epochs, _segments = journal.epochs(_region(registry, S3_REGION).store)
        assert len(epochs) == 2 and epochs[1].parent == epochs[0].epoch
        assert registry.resolve("org/llama:production").number == 1
        assert registry.resolve("org/llama:staging").number == 2
        assert registry.resolve("org/llama@1").message == "cut org/llama@1"
        assert [(h.name, h.number) for h in registry.holds()] == [("org/llama", 2)]
        for ref, source in models.items():
            target = tmp_path / "out" / ref.replace("/", "_").replace("@", "_")
            registry.pull(ref, target)
            assert tree(target) == tree(source)
            verified = registry.verify(ref, read_data=True)
            assert verified.ok and not verified.unchecked, verified
        held = s3.head_object(Bucket=LOCKED_BUCKET, Key=f"{PREFIX}/{held_blob}")
        assert held["ObjectLockLegalHoldStatus"] == "ON"
        # Numbers go on; the S3 region's journal continues without a gap, and the local
        # region's lost one is written again from the start.
        extra = make_model(tmp_path / "m5", shards=1, shard_size=20_000, seed=5)
        assert registry.push("org/llama", extra).version.number == 3
        new_head = registry.catalog.journal_head()
        assert new_head > head
        assert all(s.behind == 0 and not s.error for s in registry.journal_status())
        for name in (S3_REGION, LOCAL_REGION):
            read = journal.read(_region(registry, name).store)
            assert read.epoch is not None and read.epoch.epoch == epochs[1].epoch
            assert [e.seq for e in read.entries] == list(range(1, new_head + 1)), name


def test_a_push_the_journal_never_reached_comes_back_from_its_s3_version_record(
    models: dict[str, Path], s3: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    late = make_model(tmp_path / "late", shards=1, shard_size=50_000, seed=9)
    # The process dies right after the push's commit: nothing copies its journal entry out,
    # not even the handle's close.
    with monkeypatch.context() as patch:
        patch.setattr(journaling, "drain_journal", lambda ctx: [])
        with Registry.open(home) as registry:
            registry.push("org/tiny", late, message="just before the disaster")
            assert {s.region: s.behind for s in registry.journal_status()} == {
                LOCAL_REGION: 1,
                S3_REGION: 1,
            }
            catalog_url = registry.settings.catalog_url
    assert len(_keys(s3, "records/")) == 5
    os.replace(catalog_url.split("///", 1)[1], tmp_path / "lost-catalog.db")
    result = _cli("catalog", "rebuild", "--from", S3_REGION, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["restored_from_version_records"] == ["org/tiny@3"]
    with Registry.open(home) as registry:
        restored = registry.resolve("org/tiny@3")
        assert restored.message == "just before the disaster"
        registry.pull("org/tiny@3", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(late)
        assert registry.verify("org/tiny@3", read_data=True).ok


def _slot_keks(client: Any) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for key in _keys(client, "slots/"):
        kek = json.loads(client.get_object(Bucket=LOCKED_BUCKET, Key=key)["Body"].read())["kek_id"]
        kinds[kek] = kinds.get(kek, 0) + 1
    return kinds


def test_rotation_with_an_s3_lock_region_keeps_locked_old_slots_and_everything_still_loads(
    models: dict[str, Path], s3: Any, home: Path, tmp_path: Path
) -> None:
    old_key = home / "keys" / "kek.key"
    new_key = tmp_path / "keys" / "kek-2026-12.key"
    with Registry.open(home) as registry:
        old_id = registry.keys.kek_id
        objects = len(registry.catalog.slotted_objects())
    assert _slot_keks(s3) == {old_id: objects}
    naming = [k.rsplit("/", 1)[1] for k in _keys(s3, "registry/naming-key/")]
    assert len(naming) == 1

    result = _cli("keys", "rotate", "--to", str(new_key), "--json", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    new_id = report["to"]
    assert report["retired"] == [old_id] and new_id != old_id
    assert sorted(report["regions"]) == sorted([LOCAL_REGION, S3_REGION])
    assert report["objects"] == objects and report["slots_written"] == 2 * objects
    assert report["catalog_slots_retired"] == objects
    # Per region, every old slot object and the naming key wrapped by the old key: the local
    # region deletes them, the S3 region's stay under Object Lock (the report does not say which
    # region kept what; the counts do).
    assert report["old_slot_objects_deleted"] == objects + 1
    assert report["old_slot_objects_locked"] == objects + 1
    local_slots = tmp_path / "region-a" / "objects" / "slots"
    local = [json.loads(p.read_bytes())["kek_id"] for p in local_slots.rglob("*") if p.is_file()]
    assert local == [new_id] * objects
    assert _slot_keks(s3) == {old_id: objects, new_id: objects}
    for key in _keys(s3, "slots/") + _keys(s3, "registry/naming-key/"):
        _locked_for_a_day(s3, key)
    assert len(_keys(s3, "registry/naming-key/")) == 2
    assert "previous_kek_files" not in (home / "config.toml").read_text()
    # org/llama@2 is held: its objects' new slots carry the hold, the old slots no longer do
    # (a hold nobody would ever release there), and releasing the version releases them all.
    with Registry.open(home) as registry:
        held = registry.resolve("org/llama@2")
        s3_store = _region(registry, S3_REGION).store
        digest = held.files[0].digest

        def hold_of(name: str) -> str:
            return str(
                s3.head_object(Bucket=LOCKED_BUCKET, Key=f"vault/{name}").get(
                    "ObjectLockLegalHoldStatus", "OFF"
                )
            )

        old_slot = s3_store.slot_name("blob", digest, old_id)
        new_slot = s3_store.slot_name("blob", digest, new_id)
        assert (hold_of(new_slot), hold_of(old_slot)) == ("ON", "OFF")
        registry.release_hold("org/llama@2", reason="case closed")
        assert hold_of(new_slot) == "OFF"
        assert hold_of(s3_store.object_name("blob", digest)) == "OFF"

    # The old key destroyed: every version pulls and verifies in both regions, then from the
    # S3 region alone, and the old slots left there confuse nothing.
    old_key.unlink()
    with Registry.open(home) as registry:
        assert registry.keys.kek_ids == (new_id,)
        for ref, source in models.items():
            target = tmp_path / "after" / ref.replace("/", "_").replace("@", "_")
            registry.pull(ref, target)
            assert tree(target) == tree(source)
            verified = registry.verify(ref, read_data=True)
            assert verified.ok and not verified.unchecked, verified
        assert registry.scrub(read_data=True).ok
        store = _region(registry, S3_REGION).store
        digest = registry.resolve("org/llama@1").digest
        slot = store.read_slot(MANIFEST, digest, what="manifest")
        assert slot is not None and slot.kek_id == new_id
    shutil.rmtree(tmp_path / "region-a")
    with Registry.open(home) as registry:
        for ref, source in models.items():
            target = tmp_path / "s3-only" / ref.replace("/", "_").replace("@", "_")
            registry.pull(ref, target)
            assert tree(target) == tree(source)
    again = _cli("keys", "rotate", "--to", str(new_key))
    assert again.exit_code == 0 and "nothing to rotate" in again.output
