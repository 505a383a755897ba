"""Several regions: every push goes everywhere and is read back, reads fail over per range and
mark the copies they could not use, `replicate --repair` heals, holds reach every copy.

Local regions keep most tests fast; the fail-over and heal of the issue runs on two
`ThreadedMotoServer`s (one per region), with a region lost and rebuilt, and a corrupted object
version overwritten in moto's backend.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from cli.main import main
from registry.blobstore import BLOB, MANIFEST
from registry.config import KmsSettings, RegionSettings, load_settings, parse_region, render_config
from registry.crypto.sealed import HEADER_SIZE
from registry.crypto.signing import public_key_text
from registry.errors import ConfigurationError, InvalidInputError, NotFoundError, StorageError
from registry.ops.parallel import LOCK_REQUESTS
from registry.ops.parallel import bounded_map as _bounded_map
from registry.replication import BAD, PENDING, VERIFIED
from registry.service import Registry
from registry.storage.factory import StoreSpec
from registry.testing.models import make_model
from tests.conftest import tree

# -- local regions ---------------------------------------------------------------------------


@pytest.fixture
def two_local(home: Path, tmp_path: Path, catalog_url: str | None) -> Iterator[Registry]:
    Registry.init(
        home,
        catalog_url=catalog_url,
        store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")],
    )
    with Registry.open(home) as registry:
        yield registry


def _object_file(tmp_path: Path, region: str, registry: Registry, kind: str, digest: str) -> Path:
    return tmp_path / region / "objects" / registry.store.object_name(kind, digest)


def _states(registry: Registry) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in registry.catalog.placements():
        found.setdefault(row.region, set()).add(row.state)
    return found


def test_push_writes_and_verifies_every_region(
    two_local: Registry, model_dir: Path, tmp_path: Path
) -> None:
    result = two_local.push("llama", model_dir)
    assert result.pending_regions == ()
    placements = two_local.catalog.placements()
    # Every blob and the manifest, in both regions, read back with one ciphertext checksum.
    objects = {(e.digest, BLOB) for e in result.version.files} | {(result.version.digest, MANIFEST)}
    assert {(p.digest, p.purpose, p.region) for p in placements} == {
        (d, k, r) for d, k in objects for r in ("region-1", "region-2")
    }
    assert {p.state for p in placements} == {VERIFIED}
    for digest, kind in objects:
        sums = {p.checksum for p in placements if p.digest == digest and p.purpose == kind}
        assert len(sums) == 1 and None not in sums
        a = _object_file(tmp_path, "region-a", two_local, kind, digest).read_bytes()
        b = _object_file(tmp_path, "region-b", two_local, kind, digest).read_bytes()
        assert a == b  # byte-identical copies: one sealing, written twice
    status = {r.name: r for r in two_local.regions_status()}
    assert all(r.complete and r.verified == len(objects) for r in status.values())


def test_missing_object_is_read_from_the_next_region_and_repaired(
    two_local: Registry, model_dir: Path, tmp_path: Path
) -> None:
    version = two_local.push("llama", model_dir).version
    entry = version.files[1]
    lost = _object_file(tmp_path, "region-a", two_local, BLOB, entry.digest)
    lost.unlink()
    pulled = two_local.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)
    assert len(pulled.bad_copies) == 1 and "region-1" in pulled.bad_copies[0]
    bad = [p for p in two_local.catalog.placements() if p.state == BAD]
    assert [(p.digest, p.region) for p in bad] == [(entry.digest, "region-1")]
    status = {r.name: r for r in two_local.regions_status()}
    assert status["region-1"].bad == 1 and not status["region-1"].complete

    plain = two_local.replicate()
    assert not plain.ok and "--repair" in plain.problems[0]
    assert not lost.exists()
    report = two_local.replicate(repair=True)
    assert report.ok and report.repaired == 1, report
    assert lost.exists()
    assert _states(two_local) == {"region-1": {VERIFIED}, "region-2": {VERIFIED}}
    assert two_local.verify("llama", read_data=True).ok


def test_corrupted_copy_fails_over_per_range_and_is_repaired(
    two_local: Registry, model_dir: Path, tmp_path: Path
) -> None:
    version = two_local.push("llama", model_dir).version
    entry = max(version.files, key=lambda f: f.size)
    path = _object_file(tmp_path, "region-a", two_local, BLOB, entry.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    pulled = two_local.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)
    assert any("failed authentication" in copy for copy in pulled.bad_copies)
    report = two_local.verify("llama", read_data=True)
    assert not report.ok
    assert {p.path for p in report.problems} == {entry.path}

    assert two_local.replicate(repair=True).ok
    assert (
        path.read_bytes()
        == _object_file(tmp_path, "region-b", two_local, BLOB, entry.digest).read_bytes()
    )
    assert two_local.verify("llama", read_data=True).ok


def test_damage_in_every_region_is_an_integrity_error_and_nothing_is_written(
    two_local: Registry, model_dir: Path, tmp_path: Path
) -> None:
    version = two_local.push("llama", model_dir).version
    entry = max(version.files, key=lambda f: f.size)
    for region in ("region-a", "region-b"):
        path = _object_file(tmp_path, region, two_local, BLOB, entry.digest)
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[-100] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="failed authentication"):
        two_local.pull("llama", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # No good copy to repair from: repair says so and leaves both as they are.
    report = two_local.replicate(repair=True)
    assert not report.ok


def test_region_added_later_is_filled_by_replicate(
    home: Path, tmp_path: Path, model_dir: Path
) -> None:
    Registry.init(home, store=str(tmp_path / "only"))
    with Registry.open(home) as registry:
        registry.push("llama", model_dir)
    # The single [store] becomes two regions: the old one and a new, empty one.
    settings = load_settings(home)
    text = render_config(
        registry_id=settings.registry_id,
        catalog_url=settings.catalog_url,
        regions=(
            settings.regions[0],
            RegionSettings("second", StoreSpec(path=tmp_path / "second"), 1),
        ),
        kek_file=str(settings.kek_file),
        naming_key_file=str(settings.naming_key_file),
        signing_key_file=str(settings.signing_key_file),
        trusted_signers=[(s.name, public_key_text(s.public_key)) for s in settings.trusted_signers],
    )
    assert "[[store.regions]]" in text
    (home / "config.toml").write_text(text)
    with Registry.open(home) as registry:
        status = {r.name: r for r in registry.regions_status()}
        assert status["second"].missing > 0
        report = registry.replicate()
        assert report.ok and report.copied == status["second"].missing
        assert all(r.complete for r in registry.regions_status())
        assert registry.verify("llama", read_data=True).ok


def test_write_quorum_is_validated(two_local: Registry, model_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="write quorum"):
        two_local.push("llama", model_dir, write_quorum=3)
    assert two_local.models() == []


def test_config_and_store_url_options(tmp_path: Path, home: Path) -> None:
    region = parse_region(
        "s3://bucket-a?region=eu-west-1&kms=arn:aws:kms:eu-west-1:111122223333:key/k1&name=eu&priority=5",
        index=0,
        count=2,
    )
    assert (region.name, region.priority) == ("eu", 5)
    assert region.kms is not None and region.kms.region == "eu-west-1"
    with pytest.raises(InvalidInputError, match="region"):
        parse_region("s3://bucket-a?kms=key-id", index=0, count=2)
    with pytest.raises(InvalidInputError, match="region name"):
        parse_region("s3://bucket-a?region=x&name=Bad_Name")
    with pytest.raises(InvalidInputError, match="distinct"):
        Registry.init(
            home, store=["s3://bucket-a?region=eu-west-1", "s3://bucket-b?region=eu-west-1"]
        )
    assert not (home / "config.toml").exists()
    with pytest.raises(InvalidInputError, match="write quorum"):
        Registry.init(home, store=[str(tmp_path / "a"), str(tmp_path / "b")], write_quorum=3)
    with pytest.raises(InvalidInputError, match="--kms-key"):
        Registry.init(
            home,
            store=[str(tmp_path / "a"), str(tmp_path / "b")],
            kms=KmsSettings("arn", "us-east-1"),
        )
    assert not (home / "config.toml").exists()
    Registry.init(home, store=[str(tmp_path / "a"), str(tmp_path / "b")], write_quorum=1)
    settings = load_settings(home)
    assert [r.name for r in settings.regions] == ["region-1", "region-2"]
    assert settings.write_quorum == 1
    text = (home / "config.toml").read_text()
    (home / "config.toml").write_text(text.replace("[store]", "[store]\nbucket = 'x'"))
    with pytest.raises(ConfigurationError, match="belong in each"):
        load_settings(home)


def test_cli_regions_replicate_and_holds_on_local_regions(
    home: Path, tmp_path: Path, model_dir: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["init", "--store", str(tmp_path / "a"), "--store", str(tmp_path / "b"), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["push", "m", str(model_dir), "-q"]).exit_code == 0
    status = runner.invoke(main, ["regions", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert [r["complete"] for r in json.loads(status.output)] == [True, True]
    with Registry.open(home) as registry:
        digest = registry.resolve("m").files[0].digest
        name = registry.store.object_name(BLOB, digest)
    (tmp_path / "a" / "objects" / name).unlink()
    pull = runner.invoke(main, ["pull", "m", str(tmp_path / "out"), "--json"])
    assert pull.exit_code == 0, pull.output
    assert "replicate --repair" in pull.stderr
    status = runner.invoke(main, ["regions", "status"])
    assert status.exit_code == StorageError.exit_code
    repair = runner.invoke(main, ["replicate", "--repair", "--json"])
    assert repair.exit_code == 0, repair.output
    assert json.loads(repair.stdout)["repaired"] == 1
    assert runner.invoke(main, ["regions", "status"]).exit_code == 0

    held = runner.invoke(main, ["hold", "set", "m@1", "--reason", "litigation 42"])
    assert held.exit_code == 0, held.output
    listing = runner.invoke(main, ["hold", "ls", "--json"])
    assert json.loads(listing.stdout)[0]["reason"] == "litigation 42"
    no_reason = runner.invoke(main, ["hold", "release", "m@1", "--reason", " "])
    assert no_reason.exit_code == InvalidInputError.exit_code
    released = runner.invoke(main, ["hold", "release", "m@1", "--reason", "settled"])
    assert released.exit_code == 0, released.output
    assert json.loads(runner.invoke(main, ["hold", "ls", "--json"]).stdout) == []
    again = runner.invoke(main, ["hold", "release", "m@1", "--reason", "settled"])
    assert again.exit_code == 4  # not found: not under hold


# -- two moto servers, one per region ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Regions:
    """Two S3 regions, each behind its own ThreadedMotoServer (moto's state is per process, so
    each region has its own bucket; a lost region is its server stopped and its bucket gone)."""

    def __init__(self) -> None:
        self.ports = {"a": _free_port(), "b": _free_port()}
        self.buckets = {k: f"region-{k}-{uuid.uuid4().hex[:8]}" for k in self.ports}
        self.servers: dict[str, ThreadedMotoServer] = {}
        for key in self.ports:
            self.start(key)

    def endpoint(self, key: str) -> str:
        return f"http://127.0.0.1:{self.ports[key]}"

    def start(self, key: str) -> None:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.ports[key], verbose=False)
        server.start()
        self.servers[key] = server

    def stop(self, key: str) -> None:
        self.servers.pop(key).stop()

    def lose(self, key: str) -> None:
        """The region is gone: its server stopped and its bucket with every object lost."""
        from moto.s3.models import s3_backends

        self.stop(key)
        backend = s3_backends["123456789012"]["aws"]
        backend.get_bucket(self.buckets[key]).keys.clear()
        assert backend.delete_bucket(self.buckets[key]) is not None

    def client(self, key: str) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint(key), region_name="us-east-1"
        )

    def store(self, key: str, region: str) -> str:
        return (
            f"s3://{self.buckets[key]}?region={region}&endpoint={self.endpoint(key)}"
            f"&retention_days=1&name={region}"
        )

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture
def regions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Regions]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    found = Regions()
    try:
        yield found
    finally:
        found.close()


def _corrupt_in_backend(bucket: str, key: str) -> None:
    """Flip bytes of the newest version of an object inside moto, behind S3's back."""
    from moto.s3.models import s3_backends

    backend = s3_backends["123456789012"]["aws"]
    fake = backend.get_object(bucket, key)
    assert fake is not None
    data = bytearray(fake.value)
    data[len(data) // 2] ^= 0xFF
    data[-20] ^= 0xFF
    fake.value = bytes(data)


def test_lost_region_pull_verify_then_rebuilt_by_replicate_repair(
    regions: Regions, home: Path, tmp_path: Path
) -> None:
    Registry.init(home, store=[regions.store("a", "us-east-1"), regions.store("b", "us-west-2")])
    model = make_model(tmp_path / "model", shards=2, shard_size=600_000, seed=11)
    with Registry.open(home) as registry:
        version = registry.push("team/llama", model).version
        assert {p.state for p in registry.catalog.placements()} == {VERIFIED}
    # Names and slots in both buckets reveal neither digests nor model names.
    for key in ("a", "b"):
        listing = "\n".join(
            o["Key"]
            for o in regions.client(key).list_objects_v2(Bucket=regions.buckets[key])["Contents"]
        )
        assert "llama" not in listing
        assert all(f.digest[7:] not in listing for f in version.files)

    regions.lose("a")
    with Registry.open(home) as registry:
        registry.pull("team/llama", tmp_path / "out")
        assert tree(tmp_path / "out") == tree(model)
        report = registry.verify("team/llama", read_data=True)
        assert report.ok, report.problems
        assert report.unchecked and report.unchecked[0].startswith("us-east-1")
        status = {r.name: r for r in registry.regions_status()}
        assert not status["us-east-1"].reachable and status["us-west-2"].complete
        # The default quorum is every region: a push now fails and records nothing.
        other = make_model(tmp_path / "other", shards=1, shard_size=100_000, seed=12)
        with pytest.raises(StorageError, match="nothing was committed"):
            registry.push("team/other", other)
        assert [m.name for m in registry.models()] == ["team/llama"]
        pushed = registry.push("team/other", other, write_quorum=1)
        assert pushed.pending_regions == ("us-east-1",)

    regions.start("a")  # a fresh, empty server for the lost region
    runner = CliRunner()
    result = runner.invoke(main, ["replicate", "--repair", "--json"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["ok"] and outcome["copied"] + outcome["repaired"] > 0
    # The rebuilt bucket has Object Lock, and every copy is back.
    lock = regions.client("a").get_object_lock_configuration(Bucket=regions.buckets["a"])
    assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    with Registry.open(home) as registry:
        assert all(r.complete for r in registry.regions_status())
        for ref in ("team/llama", "team/other"):
            report = registry.verify(ref, read_data=True)
            assert report.ok and not report.unchecked, report


def test_corrupted_object_in_region_a_is_read_from_b_reported_and_repaired(
    regions: Regions, home: Path, tmp_path: Path
) -> None:
    Registry.init(home, store=[regions.store("a", "us-east-1"), regions.store("b", "us-west-2")])
    model = make_model(tmp_path / "model", shards=2, shard_size=900_000, seed=13)
    with Registry.open(home) as registry:
        version = registry.push("llama", model).version
        entry = max(version.files, key=lambda f: f.size)
        name = registry.store.object_name(BLOB, entry.digest)
    _corrupt_in_backend(regions.buckets["a"], name)

    runner = CliRunner()
    pulled = runner.invoke(main, ["pull", "llama", str(tmp_path / "out"), "--json"])
    assert pulled.exit_code == 0, pulled.output
    assert tree(tmp_path / "out") == tree(model)
    bad = json.loads(pulled.stdout)["bad_copies"]
    assert len(bad) == 1 and bad[0].startswith("us-east-1") and "authentication" in bad[0]
    with Registry.open(home) as registry:
        rows = [p for p in registry.catalog.placements() if p.state == BAD]
        assert [(p.digest, p.region) for p in rows] == [(entry.digest, "us-east-1")]
    status = runner.invoke(main, ["regions", "status", "--json"])
    assert [r["bad"] for r in json.loads(status.stdout)] == [1, 0]

    assert runner.invoke(main, ["replicate", "--repair"]).exit_code == 0
    verify = runner.invoke(main, ["verify", "llama", "--read-data", "--json"])
    assert verify.exit_code == 0, verify.output
    # The repair is a new object version; the damaged one is kept, still locked.
    versions = regions.client("a").list_object_versions(Bucket=regions.buckets["a"], Prefix=name)
    kept = sorted(versions["Versions"], key=lambda v: v["LastModified"])
    assert len(kept) == 2
    for item in kept:
        head = regions.client("a").head_object(
            Bucket=regions.buckets["a"], Key=name, VersionId=item["VersionId"]
        )
        assert head["ObjectLockMode"] == "COMPLIANCE"


def test_legal_hold_reaches_every_object_in_every_region(
    regions: Regions, home: Path, tmp_path: Path
) -> None:
    Registry.init(home, store=[regions.store("a", "us-east-1"), regions.store("b", "us-west-2")])
    model = make_model(tmp_path / "model", shards=2, shard_size=100_000, seed=14)
    with Registry.open(home) as registry:
        v1 = registry.push("llama", model).version
        (model / "config.json").write_text('{"changed": true}')
        v2 = registry.push("llama", model).version
        shared = {f.digest for f in v1.files} & {f.digest for f in v2.files}
        assert shared
        names = {d: registry.store.object_name(BLOB, d) for d in shared}
        registry.hold("llama@1", reason="audit")
        registry.hold("llama@2", reason="audit")
        for key in ("a", "b"):
            for name in names.values():
                head = regions.client(key).head_object(Bucket=regions.buckets[key], Key=name)
                assert head["ObjectLockLegalHoldStatus"] == "ON"
        released = registry.release_hold("llama@1", reason="done")
        assert released.failed_regions == ()
        # Shared with the still-held @2: still held.
        for name in names.values():
            head = regions.client("a").head_object(Bucket=regions.buckets["a"], Key=name)
            assert head["ObjectLockLegalHoldStatus"] == "ON"
        registry.release_hold("llama@2", reason="done")
        for name in names.values():
            head = regions.client("b").head_object(Bucket=regions.buckets["b"], Key=name)
            assert head.get("ObjectLockLegalHoldStatus", "OFF") == "OFF"
        events = [e.action for e in registry.audit_events(subject="llama")]
        assert events.count("hold") == 2 and events.count("release-hold") == 2


class SlowHolds:
    """Every region's `set_legal_hold` made slow (a cross-region round trip), counting the
    calls in flight per region and in all, and failing where told to."""

    def __init__(self, registry: Registry, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_all = 0
        self.calls: dict[str, list[tuple[str, bool]]] = {}
        # (region, name, on) -> the exception that call raises instead of reaching the store
        self.faults: dict[tuple[str, str, bool], Exception] = {}
        for region in registry.replicas.regions:
            driver = region.store.driver
            monkeypatch.setattr(
                driver, "set_legal_hold", self._counted(region.name, driver.set_legal_hold)
            )

    def _counted(self, region: str, original: Any) -> Any:
        def set_legal_hold(name: str, on: bool) -> None:
            with self.lock:
                self.calls.setdefault(region, []).append((name, on))
                self.running[region] = self.running.get(region, 0) + 1
                self.peak[region] = max(self.peak.get(region, 0), self.running[region])
                self.peak_all = max(self.peak_all, sum(self.running.values()))
            try:
                time.sleep(self.delay)
                fault = self.faults.get((region, name, on))
                if fault is not None:
                    raise fault
                original(name, on)
            finally:
                with self.lock:
                    self.running[region] -= 1

        return set_legal_hold


def test_bounded_map_keeps_order_bounds_concurrency_and_stops_after_a_failure() -> None:
    lock = threading.Lock()
    running = peak = 0
    started: list[int] = []

    def work(item: int) -> int:
        nonlocal running, peak
        with lock:
            started.append(item)
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.01)
            if item in (5, 7):
                raise StorageError(f"item {item}")
            return item * 2
        finally:
            with lock:
                running -= 1

    assert _bounded_map(work, [0, 1, 2, 3, 4], limit=3, name="t") == [0, 2, 4, 6, 8]
    assert 1 < peak <= 3
    started.clear()
    # The earliest item's failure is raised; nothing starts after a failure.
    with pytest.raises(StorageError, match="item 5"):
        _bounded_map(work, list(range(40)), limit=3, name="t")
    assert 5 in started and len(started) < 12


def test_legal_holds_change_in_parallel_with_the_same_outcome(
    regions: Regions, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Registry.init(home, store=[regions.store("a", "us-east-1"), regions.store("b", "us-west-2")])
    model = make_model(tmp_path / "model", shards=6, shard_size=20_000, seed=15)
    with Registry.open(home) as registry:
        version = registry.push("llama", model).version
        objects = [(MANIFEST, version.digest)] + [(BLOB, f.digest) for f in version.files]
        names = {
            name
            for kind, digest in objects
            for name in (
                registry.store.object_name(kind, digest),
                registry.store.slot_name(kind, digest, registry.keys.kek_id),
            )
        }
        slow = SlowHolds(registry, monkeypatch, delay=0.05)

        def states(key: str) -> set[str]:
            client = regions.client(key)
            return {
                client.head_object(Bucket=regions.buckets[key], Key=name).get(
                    "ObjectLockLegalHoldStatus", "OFF"
                )
                for name in names
            }

        manifest = registry.store.object_name(MANIFEST, version.digest)
        # A region that fails is reported as "region: problem", the others are held.
        slow.faults[("us-west-2", manifest, True)] = StorageError("connection reset")
        # A copy that is missing is skipped, as replicate holds it when it restores it.
        blob = registry.store.object_name(BLOB, version.files[0].digest)
        slow.faults[("us-east-1", blob, True)] = NotFoundError("gone")
        first = registry.hold("llama@1", reason="audit")
        assert first.changed and first.objects == len(objects)
        assert first.failed_regions == ("us-west-2: connection reset",)
        assert states("a") == {"ON", "OFF"}  # all held but the "missing" blob
        # Every name was asked once in the region that did not fail.
        assert sorted(n for n, _on in slow.calls["us-east-1"]) == sorted(names)

        # Run again without the faults: every copy everywhere, several at a time per region
        # (never more than LOCK_REQUESTS) and both regions at once.
        slow.faults.clear()
        slow.calls.clear()
        slow.peak.clear()
        slow.peak_all = 0
        again = registry.hold("llama@1", reason="audit")
        assert not again.changed and again.failed_regions == ()
        assert states("a") == states("b") == {"ON"}
        assert {r: sorted(n for n, _on in c) for r, c in slow.calls.items()} == {
            "us-east-1": sorted(names),
            "us-west-2": sorted(names),
        }
        assert 1 < slow.peak["us-east-1"] <= LOCK_REQUESTS
        assert 1 < slow.peak["us-west-2"] <= LOCK_REQUESTS
        assert slow.peak_all > max(slow.peak.values())

        # A release that fails in one region is all or nothing: every copy is held again, in
        # the failing region too, and the hold stays recorded.
        slow.faults[("us-west-2", manifest, False)] = StorageError("connection reset")
        with pytest.raises(StorageError, match="could not be released in us-west-2: connection"):
            registry.release_hold("llama@1", reason="done")
        assert states("a") == states("b") == {"ON"}
        assert [h.ref for h in registry.holds()] == ["llama@1"]
        slow.faults.clear()
        released = registry.release_hold("llama@1", reason="done")
        assert released.failed_regions == ()
        assert states("a") == states("b") == {"OFF"}
        assert registry.holds() == []


def test_pending_copies_after_a_quorum_push_are_counted(
    regions: Regions, home: Path, tmp_path: Path
) -> None:
    Registry.init(
        home,
        store=[regions.store("a", "us-east-1"), regions.store("b", "us-west-2")],
        write_quorum=1,
    )
    regions.stop("b")
    model = make_model(tmp_path / "model", shards=1, shard_size=100_000, seed=15)
    with Registry.open(home) as registry:
        result = registry.push("llama", model)
        assert result.pending_regions == ("us-west-2",)
        status = {r.name: r for r in registry.regions_status()}
        assert status["us-west-2"].pending == result.version.file_count + 1
        assert status["us-east-1"].complete
    regions.start("b")
    with Registry.open(home) as registry:
        report = registry.replicate()
        assert report.ok and report.copied == result.version.file_count + 1
        assert {p.state for p in registry.catalog.placements()} == {VERIFIED}
        assert PENDING not in {p.state for p in registry.catalog.placements()}


# -- one KMS key per region ------------------------------------------------------------------


def test_each_region_wraps_with_its_own_kms_key_and_survives_the_other_kms(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import mock_aws

    from registry.errors import KeyAccessError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        key_a = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
        kms_b = boto3.client("kms", region_name="us-west-2")
        key_b = kms_b.create_key()["KeyMetadata"]["Arn"]
        Registry.init(
            home,
            store=[
                f"s3://kms-region-a?region=us-east-1&kms={key_a}&name=east",
                f"s3://kms-region-b?region=us-west-2&kms={key_b}&name=west",
            ],
        )
        assert not (home / "keys" / "kek.key").exists()  # every region has its KMS key
        model = make_model(tmp_path / "model", shards=2, shard_size=200_000, seed=16)
        with Registry.open(home) as registry:
            version = registry.push("llama", model).version
            entry = version.files[0]
            owners = sorted(registry.catalog.key_slot_owners(entry.digest, BLOB))
            assert owners == sorted([f"aws-kms:{key_a}", f"aws-kms:{key_b}"])
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket, key in (("kms-region-a", key_a), ("kms-region-b", key_b)):
            slots = [
                o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="slots/")["Contents"]
            ]
            kinds = {
                json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())["kek_id"]
                for k in slots
            }
            assert kinds == {f"aws-kms:{key}"}  # each bucket holds its own region's slots

        # Region east's KMS is unreachable: west's slot opens every copy.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
        config = (home / "config.toml").read_text()
        marker = 'kms_region = "us-east-1"\n'
        assert marker in config
        (home / "config.toml").write_text(
            config.replace(marker, marker + f'kms_endpoint_url = "{dead}"\n')
        )
        with Registry.open(home) as registry:
            registry.pull("llama", tmp_path / "out")
            assert tree(tmp_path / "out") == tree(model)
            report = registry.verify("llama", read_data=True)
            assert report.ok and report.unchecked and report.unchecked[0].startswith("east")
        # And with west's key disabled too, nothing opens and nothing is written.
        kms_b.disable_key(KeyId=key_b.rsplit("/", 1)[1])
        with pytest.raises(KeyAccessError), Registry.open(home) as registry:
            registry.pull("llama", tmp_path / "again")
        assert not (tmp_path / "again").exists()


# -- found in review -------------------------------------------------------------------------


def test_damaged_manifest_header_fails_over(
    two_local: Registry, model_dir: Path, tmp_path: Path
) -> None:
    version = two_local.push("llama", model_dir).version
    path = _object_file(tmp_path, "region-a", two_local, MANIFEST, version.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF  # the magic: the header itself is damaged
    path.write_bytes(bytes(data))
    pulled = two_local.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)
    assert any(copy.startswith("region-1: manifest") for copy in pulled.bad_copies)
    assert two_local.replicate(repair=True).ok
    assert two_local.verify("llama", read_data=True).ok


def test_a_damaged_source_never_spreads_and_repair_converges(
    two_local: Registry, model_dir: Path, tmp_path: Path
) -> None:
    version = two_local.push("llama", model_dir).version
    entry = max(version.files, key=lambda f: f.size)
    damaged = _object_file(tmp_path, "region-a", two_local, BLOB, entry.digest)
    os.chmod(damaged, 0o644)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0x10
    damaged.write_bytes(bytes(data))
    _object_file(tmp_path, "region-b", two_local, BLOB, entry.digest).unlink()

    # Region-1's copy is still recorded verified; copying from it fails authentication, so
    # region-2 gets a new sealing instead, and the push says region-1 is bad (quorum: all).
    with pytest.raises(StorageError, match="region-1: bad"):
        two_local.push("other", model_dir)
    fresh = _object_file(tmp_path, "region-b", two_local, BLOB, entry.digest)
    assert fresh.exists() and fresh.read_bytes() != bytes(data)
    report = two_local.replicate(repair=True)
    assert report.ok, report.problems
    # Both copies valid and identical again.
    assert damaged.read_bytes() == fresh.read_bytes()
    assert two_local.push("other", model_dir).created
    assert two_local.verify("llama", read_data=True).ok


def test_a_network_failure_during_a_read_leaves_the_copy_pending_not_bad(
    two_local: Registry, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_local.push("llama", model_dir)
    driver = two_local.replicas.regions[0].store.driver
    original = driver.read_into
    failures = iter([True])

    def flaky(name: str, offset: int, buffer: memoryview) -> int:
        if next(failures, False):
            raise StorageError("connection reset")
        return original(name, offset, buffer)

    monkeypatch.setattr(driver, "read_into", flaky)
    pulled = two_local.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)
    states = {p.state for p in two_local.catalog.placements(region="region-1")}
    assert PENDING in states and BAD not in states
    monkeypatch.setattr(driver, "read_into", original)
    two_local.replicas.mark_up(two_local.replicas.regions[0])
    assert pulled.bad_copies and two_local.replicate().ok
    assert {p.state for p in two_local.catalog.placements()} == {VERIFIED}


def test_write_quorum_zero_is_refused(two_local: Registry, model_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="write quorum"):
        two_local.push("llama", model_dir, write_quorum=0)
    assert two_local.models() == []


def test_release_clears_the_hold_of_a_repaired_objects_old_version(
    regions: Regions, home: Path, tmp_path: Path
) -> None:
    Registry.init(home, store=[regions.store("a", "us-east-1"), regions.store("b", "us-west-2")])
    model = make_model(tmp_path / "model", shards=1, shard_size=300_000, seed=17)
    with Registry.open(home) as registry:
        version = registry.push("llama", model).version
        entry = max(version.files, key=lambda f: f.size)
        name = registry.store.object_name(BLOB, entry.digest)
        registry.hold("llama@1", reason="audit")
    _corrupt_in_backend(regions.buckets["a"], name)
    with Registry.open(home) as registry:
        assert registry.verify("llama", read_data=True).problems
        assert registry.replicate(repair=True).ok
        client = regions.client("a")
        listed = client.list_object_versions(Bucket=regions.buckets["a"], Prefix=name)
        ids = [v["VersionId"] for v in listed["Versions"]]
        assert len(ids) == 2

        def holds() -> list[str]:
            return [
                client.head_object(Bucket=regions.buckets["a"], Key=name, VersionId=i).get(
                    "ObjectLockLegalHoldStatus", "OFF"
                )
                for i in ids
            ]

        assert holds() == ["ON", "ON"]  # the repaired copy got the hold too
        registry.release_hold("llama@1", reason="done")
        assert holds() == ["OFF", "OFF"]


def test_one_region_repush_heals_a_copy_recorded_bad(
    registry: Registry, model_dir: Path, tmp_path: Path, home: Path
) -> None:
    version = registry.push("llama", model_dir).version
    entry = max(version.files, key=lambda f: f.size)
    path = home / "store" / "objects" / registry.store.object_name(BLOB, entry.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="failed authentication"):
        registry.pull("llama", tmp_path / "out")
    assert BAD in {p.state for p in registry.catalog.placements(digest=entry.digest)}
    # The re-push reads the suspect copy back instead of trusting it, and seals it anew from
    # the local file it has just verified.
    result = registry.push("llama", model_dir)
    assert not result.created and result.uploaded_bytes == entry.size
    assert {p.state for p in registry.catalog.placements(digest=entry.digest)} == {VERIFIED}
    registry.pull("llama", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model_dir)


def test_an_outage_of_the_source_during_a_copy_does_not_blame_its_copy(
    two_local: Registry, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = two_local.push("llama", model_dir).version
    entry = max(version.files, key=lambda f: f.size)
    _object_file(tmp_path, "region-b", two_local, BLOB, entry.digest).unlink()
    source = two_local.replicas.regions[0].store.driver
    original = source.get_range
    target = two_local.store.object_name(BLOB, entry.digest)
    failures = iter([True])

    def flaky(name: str, offset: int = 0, length: int | None = None) -> bytes:
        # The copy's first range after the header (read-backs start at 0, not there).
        if name == target and offset == HEADER_SIZE and next(failures, False):
            raise StorageError("connection reset")
        return original(name, offset, length)

    monkeypatch.setattr(source, "get_range", flaky)
    report = two_local.replicate(repair=True)
    assert not report.ok
    rows = {p.region: p.state for p in two_local.catalog.placements(digest=entry.digest)}
    assert rows["region-1"] == VERIFIED and rows["region-2"] != VERIFIED
    monkeypatch.setattr(source, "get_range", original)
    two_local.replicas.mark_up(two_local.replicas.regions[0])
    assert two_local.replicate(repair=True).ok
    assert two_local.verify("llama", read_data=True).ok
