"""Scrub (`verify --all`): every object of every version in every region, a flipped bit and a
missing object found with the versions they break and repaired by `replicate`, orphans (objects
no catalog row knows) listed and left alone, samples and single regions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.crypto.sealed import SealedHeader
from registry.service import Registry
from registry.testing.models import make_model


@pytest.fixture
def two_regions(home: Path, tmp_path: Path) -> Iterator[Registry]:
    Registry.init(home, store=[str(tmp_path / "region-a"), str(tmp_path / "region-b")])
    with Registry.open(home) as registry:
        first = make_model(tmp_path / "m1", shards=2, shard_size=2_500_000, seed=1)
        registry.push("org/llama", first)
        second = make_model(tmp_path / "m2", shards=2, shard_size=2_500_000, seed=2)
        registry.push("org/llama", second)
        registry.push("org/other", make_model(tmp_path / "m3", shards=1, shard_size=100_000))
        yield registry


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def test_scrub_finds_a_flipped_bit_a_missing_object_and_an_orphan(
    two_regions: Registry, tmp_path: Path
) -> None:
    registry = two_regions
    healthy = _cli("verify", "--all", "--read-data", "--json", "-q")
    assert healthy.exit_code == 0, healthy.output
    clean = json.loads(healthy.stdout)
    assert clean["ok"] and clean["orphans"] == [] and clean["copies"] == 2 * clean["objects"]

    v1 = registry.resolve("org/llama@1")
    shard = next(f for f in v1.files if f.path == "model-00001-of-00002.safetensors")
    flipped = _writable(
        tmp_path / "region-a" / "objects" / registry.store.object_name("blob", shard.digest)
    )
    data = bytearray(flipped.read_bytes())
    data[SealedHeader.unpack(bytes(data)).chunk_offset(1) + 7] ^= 0x10
    flipped.write_bytes(bytes(data))
    missing = tmp_path / "region-b" / "objects" / registry.store.object_name("manifest", v1.digest)
    _writable(missing).unlink()
    orphan = tmp_path / "region-a" / "objects" / "blobs" / "ff" / ("f" * 64)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a push that crashed")

    # Without --read-data the missing object is found; the flipped bit needs the data read.
    quick = json.loads(_cli("verify", "--all", "--json", "-q").stdout)
    assert [(p["region"], p["kind"]) for p in quick["problems"]] == [("region-2", "manifest")]
    assert quick["problems"][0]["problem"].endswith("is missing")
    result = _cli("verify", "--all", "--read-data", "--json", "-q")
    assert result.exit_code == 6
    report = json.loads(result.stdout)
    found = {(p["region"], p["kind"], p["digest"]): p for p in report["problems"]}
    assert set(found) == {
        ("region-1", "blob", shard.digest),
        ("region-2", "manifest", v1.digest),
    }
    assert found[("region-1", "blob", shard.digest)]["versions"] == ["org/llama@1"]
    assert "authentication" in found[("region-1", "blob", shard.digest)]["problem"]
    assert [o["object"] for o in report["orphans"]] == ["blobs/ff/" + "f" * 64]
    text = _cli("verify", "--all", "--read-data")
    assert text.exit_code == 6
    assert "BAD region-1: blob" in text.output and "breaks org/llama@1" in text.output
    assert "orphan region-1: blobs/ff/" in text.output

    # The bad copies are recorded (the repair queue `regions status` shows)...
    bad = {(p.region, p.digest) for p in registry.catalog.placements() if p.state == "bad"}
    assert bad == {("region-1", shard.digest), ("region-2", v1.digest)}
    # ...and replicate --repair replaces them from the good region.
    repaired = _cli("replicate", "--repair")
    assert repaired.exit_code == 0, repaired.output
    after = json.loads(_cli("verify", "--all", "--read-data", "--json", "-q").stdout)
    assert after["ok"] and after["problems"] == []
    assert len(after["orphans"]) == 1 and orphan.exists()  # reported, never deleted
    assert registry.audit_events(limit=1)[0].action == "scrub"


def test_scrub_of_one_region_and_a_sample(two_regions: Registry, tmp_path: Path) -> None:
    report = two_regions.scrub(region="region-2")
    assert report.ok and report.copies == report.objects
    sampled = two_regions.scrub(sample=25, read_data=True)
    everything = two_regions.scrub()
    assert sampled.sampled == 25 and 1 <= sampled.objects < everything.objects
    assert sampled.orphans == ()  # a sample does not list the stores
    for args, message in (
        (("verify", "--all", "--region", "nowhere"), "no region 'nowhere'"),
        (("verify", "org/llama", "--all"), "not both"),
        (("verify", "org/llama", "--sample", "5"), "go with --all"),
        (("verify", "--all", "--sample", "0"), "0<x<=100"),
    ):
        answer = _cli(*args)
        assert answer.exit_code != 0 and message in answer.output, (args, answer.output)


def test_scrub_checks_key_slots_and_manifest_sizes_in_both_modes(
    two_regions: Registry, tmp_path: Path
) -> None:
    registry = two_regions
    v2 = registry.resolve("org/llama@2")
    blob = v2.files[0]
    object_id = registry.store.object_name("blob", blob.digest).rsplit("/", 1)[1]
    slot_dir = tmp_path / "region-b" / "objects" / "slots" / object_id[:2] / object_id
    for slot in slot_dir.iterdir():
        _writable(slot).unlink()
    manifest = _writable(
        tmp_path / "region-a" / "objects" / registry.store.object_name("manifest", v2.digest)
    )
    manifest.write_bytes(manifest.read_bytes()[:-10])
    for read_data in (False, True):
        report = registry.scrub(read_data=read_data)
        found = {(p.region, p.kind, p.digest): p.problem for p in report.problems}
        assert "key slot missing" in found[("region-2", "blob", blob.digest)], read_data
        assert ("region-1", "manifest", v2.digest) in found, read_data


def test_an_object_of_a_push_in_flight_is_not_an_orphan(
    two_regions: Registry, tmp_path: Path
) -> None:
    import uuid
    from datetime import timedelta

    registry = two_regions
    digest = "blake3:" + "ab" * 32
    stored = tmp_path / "region-a" / "objects" / registry.store.object_name("blob", digest)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"sealed bytes of a push not committed yet")
    lease = str(uuid.uuid4())
    assert registry.catalog.take_lease(lease, [(digest, "blob")], ttl=timedelta(hours=1)) == []
    assert registry.scrub().orphans == ()
    registry.catalog.drop_lease(lease)  # the push died: now nothing claims it
    assert [o.name for o in registry.scrub().orphans] == [
        registry.store.object_name("blob", digest)
    ]
