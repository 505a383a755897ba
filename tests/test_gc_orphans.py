"""gc reclaims orphans: the objects an interrupted push uploaded that no catalog row names,
in every region, once older than the grace window, never while a push in flight may reuse
them, never before a store's Object Lock lets go (reported as kept), reported like everything
else it deletes (and by a dry run)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from registry.errors import ConflictError
from registry.ops.gc import ORPHAN
from registry.service import Registry
from registry.testing.models import make_model
from tests.conftest import tree
from tests.test_gc import _objects, moto_endpoint  # noqa: F401 - a fixture


class CrashError(Exception):
    """The push dies after its uploads, before its commit."""


def interrupted_push(registry: Registry, name: str, model: Path) -> None:
    def crash() -> None:
        raise CrashError

    registry.checkpoints["push-stored"] = crash
    try:
        with pytest.raises(CrashError):
            registry.push(name, model)
    finally:
        del registry.checkpoints["push-stored"]


@pytest.fixture
def two_regions(home: Path, tmp_path: Path) -> Iterator[Registry]:
    Registry.init(home, store=[str(tmp_path / "east"), str(tmp_path / "west")])
    with Registry.open(home) as registry:
        yield registry


def test_gc_reclaims_an_interrupted_push_in_every_region(
    two_regions: Registry, tmp_path: Path
) -> None:
    registry = two_regions
    kept_model = make_model(tmp_path / "kept", shards=1, shard_size=50_000, seed=1)
    registry.push("llama", kept_model)
    before = {region: _objects(tmp_path / region) for region in ("east", "west")}
    lost = make_model(tmp_path / "lost", shards=2, shard_size=200_000, seed=2)
    interrupted_push(registry, "llama", lost)
    leftover = {
        region: set(_objects(tmp_path / region)) - set(before[region])
        for region in ("east", "west")
    }
    assert all(leftover.values()), "the interrupted push left nothing behind to reclaim"

    young = registry.gc(grace="24h")
    assert not [s for s in young.swept if s.purpose == ORPHAN]
    assert {k.digest for k in young.kept if k.purpose == ORPHAN} == leftover["east"]
    assert all("grace window" in k.reason for k in young.kept if k.purpose == ORPHAN)

    preview = registry.gc(grace="0h", dry_run=True)
    previewed = {s.digest: dict(s.sizes) for s in preview.swept if s.purpose == ORPHAN}
    assert set(previewed) == leftover["east"] == leftover["west"]
    assert all(len(sizes) == 2 for sizes in previewed.values())  # both regions
    assert {region: _objects(tmp_path / region) for region in ("east", "west")} != before

    report = registry.gc(grace="0h")
    swept = {s.digest: s for s in report.swept if s.purpose == ORPHAN}
    assert set(swept) == set(previewed)
    assert sum(s.bytes for s in swept.values()) > 2 * 400_000
    assert report.bytes_reclaimed >= sum(s.bytes for s in swept.values())
    assert {region: _objects(tmp_path / region) for region in ("east", "west")} == before
    entry = registry.audit_events(limit=1)[0]
    assert entry.action == "gc" and entry.details["swept"] >= len(swept)

    # What stays is intact, and the same content pushes again from scratch.
    registry.pull("llama@1", tmp_path / "out")
    assert tree(tmp_path / "out") == tree(kept_model)
    assert registry.push("llama", lost).version.number == 2
    assert registry.verify("llama@2", read_data=True).ok
    assert not [s for s in registry.gc(grace="0h").swept if s.purpose == ORPHAN]


def test_a_push_in_flight_keeps_its_uploads_and_waits_out_an_orphan_sweep(
    registry: Registry, tmp_path: Path
) -> None:
    model = make_model(tmp_path / "m", shards=1, shard_size=50_000, seed=3)
    interrupted_push(registry, "llama", model)
    # The retry reuses what the interrupted push uploaded; a gc between its lease and its
    # commit must leave those objects alone.
    swept_during: list[set[str]] = []

    def collect() -> None:
        report = registry.gc(grace="0h")
        swept_during.append({s.digest for s in report.swept if s.purpose == ORPHAN})

    registry.checkpoints["push-stored"] = collect
    try:
        pushed = registry.push("llama", model)
    finally:
        del registry.checkpoints["push-stored"]
    assert swept_during == [set()]
    assert registry.verify(pushed.version.ref, read_data=True).ok

    # While a gc deletes orphans, no push takes a lease (it could start to reuse one).
    assert registry.catalog.claim_orphans(run="gc-1", stale_before=datetime.now(UTC))
    registry.sweep_wait = 0.3
    other = make_model(tmp_path / "other", shards=1, shard_size=20_000, seed=4)
    with pytest.raises(ConflictError, match="being deleted by a garbage collection"):
        registry.push("other", other)
    assert not registry.catalog.claim_orphans(
        run="gc-2", stale_before=datetime.now(UTC) - timedelta(minutes=15)
    )
    registry.catalog.drop_orphans_claim(run="gc-1")
    assert registry.push("other", other).version.number == 1


def test_a_locked_orphan_waits_for_its_lock_and_is_reported(
    home: Path,
    moto_endpoint: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    Registry.init(
        home,
        store=f"s3://orphans/r?region=us-east-1&endpoint={moto_endpoint}&retention_days=1",
    )
    with Registry.open(home) as registry:
        model = make_model(tmp_path / "m", shards=1, shard_size=30_000, seed=5)
        interrupted_push(registry, "llama", model)
        report = registry.gc(grace="0h")
        orphans = [k for k in report.kept if k.purpose == ORPHAN]
        assert orphans and not [s for s in report.swept if s.purpose == ORPHAN]
        assert all("Object Lock (COMPLIANCE) until" in k.reason for k in orphans)
        assert all(k.regions for k in orphans)
        # Still there, and a later push of the same content reuses them.
        assert registry.push("llama", model).version.number == 1
        assert registry.verify("llama@1", read_data=True).ok


def test_the_cli_reports_orphans_it_deletes(registry: Registry, tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shards=1, shard_size=30_000, seed=6)
    interrupted_push(registry, "llama", model)
    runner = CliRunner()
    dry = runner.invoke(main, ["gc", "--dry-run", "--grace", "0h"])
    assert dry.exit_code == 0, dry.output
    assert "orphan" in dry.output
    done = runner.invoke(main, ["gc", "--yes", "--grace", "0h", "--json"])
    assert done.exit_code == 0, done.output
    assert '"orphan"' in done.output
