"""`drill`: restoring from one region alone passes on a healthy region, fails naming the file
on a region with a corrupted chunk (the other region still fine), times every model, samples
chunks, and is audited."""

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
        first = registry.push(
            "org/llama", make_model(tmp_path / "m1", shards=2, shard_size=3_000_000, seed=1)
        )
        registry.push(
            "org/llama", make_model(tmp_path / "m2", shards=2, shard_size=3_000_000, seed=2)
        )
        registry.promote(first.version.ref, "production")
        registry.push("org/tiny", make_model(tmp_path / "m3", shards=1, shard_size=50_000, seed=3))
        yield registry


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_a_drill_passes_on_healthy_regions_and_is_recorded(
    two_regions: Registry, tmp_path: Path
) -> None:
    for region in ("region-1", "region-2"):
        result = _cli("drill", "--region", region, "--json", "-q")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] and report["region"] == region and report["mode"] == "all"
        models = {m["name"]: m for m in report["models"]}
        assert models["org/llama"]["ref"] == "org/llama@1"  # the production alias, not newest
        assert models["org/llama"]["via"] == "production"
        assert models["org/tiny"]["via"] == "newest"
        assert models["org/llama"]["bytes"] > 5_000_000
        assert all(m["seconds"] > 0 for m in report["models"]) and report["seconds"] > 0
    event = two_regions.audit_events(limit=1)[0]
    assert event.action == "drill" and event.details["ok"] is True
    assert event.details["region"] == "region-2"
    text = _cli("drill")
    assert text.exit_code == 0 and "drill from region-2 (all): passed" in text.output
    # The server's /metrics shows when the backups were last proven (from the audit trail).
    from litestar.testing import TestClient

    from registry.api.app import create_app

    two_regions.scrub()
    with TestClient(create_app(two_regions)) as client:
        scraped = client.get("/metrics").text
    assert 'model_registry_last_drill_ok{region="region-2"} 1.0' in scraped
    assert 'model_registry_last_drill_ok{region="region-1"} 1.0' in scraped
    assert "model_registry_last_drill_duration_seconds" in scraped
    assert 'model_registry_last_scrub_problems{scope="full"} 0.0' in scraped


def test_a_drill_fails_on_a_corrupted_chunk_and_names_it(
    two_regions: Registry, tmp_path: Path
) -> None:
    version = two_regions.resolve("org/llama:production")
    shard = next(f for f in version.files if f.path == "model-00002-of-00002.safetensors")
    name = two_regions.store.object_name("blob", shard.digest)
    path = tmp_path / "region-b" / "objects" / name
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[SealedHeader.unpack(bytes(data)).chunk_offset(2) + 11] ^= 1
    path.write_bytes(bytes(data))
    failed = _cli("drill", "--region", "region-2")
    assert failed.exit_code == 6
    assert "BAD org/llama: model-00002-of-00002.safetensors" in failed.output
    assert "chunk 2 failed authentication" in failed.output
    # The damage is in region-2 only: a drill from region-1 passes.
    assert _cli("drill", "--region", "region-1", "-q").exit_code == 0
    event = two_regions.audit_events(limit=1)[0]
    assert event.details["ok"] is True
    failing = [e for e in two_regions.audit_events(limit=3) if e.action == "drill"][1]
    assert failing.details["ok"] is False and failing.details["problems"]


def test_a_sampled_drill_reads_less_and_still_checks_headers(
    two_regions: Registry, tmp_path: Path
) -> None:
    whole = two_regions.drill(region="region-1")
    sampled = two_regions.drill(region="region-1", sample=1)
    llama = {m.name: m for m in whole.models}["org/llama"]
    small = {m.name: m for m in sampled.models}["org/llama"]
    assert sampled.ok and sampled.mode == "sample:1"
    assert 0 < small.bytes < llama.bytes * 0.8  # 2 of the 3 chunks of each shard
    # A header that no longer matches the manifest fails even a sample (chunk 0 is always read).
    version = two_regions.resolve("org/llama:production")
    shard = next(f for f in version.files if f.path == "model-00001-of-00002.safetensors")
    path = tmp_path / "region-a" / "objects" / two_regions.store.object_name("blob", shard.digest)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[SealedHeader.unpack(bytes(data)).chunk_offset(0) + 20] ^= 1
    path.write_bytes(bytes(data))
    broken = two_regions.drill(region="region-1", sample=1)
    assert not broken.ok
    assert any("chunk 0" in p for m in broken.models for p in m.problems)
    with pytest.raises(Exception, match="no region 'nowhere'"):
        two_regions.drill(region="nowhere")


def test_a_drill_skips_empty_models_and_refuses_what_it_cannot_do(
    two_regions: Registry, tmp_path: Path
) -> None:
    two_regions.delete("org/tiny@1", reason="retired")
    report = two_regions.drill(region="region-1")
    assert report.ok and {m.name for m in report.models} == {"org/llama"}
    assert _cli("drill", "--alias", "Bad Alias!").exit_code == 3
    # A sampled drill still sees a truncated file (its size is checked against its header).
    version = two_regions.resolve("org/llama:production")
    shard = version.files[0]
    path = tmp_path / "region-b" / "objects" / two_regions.store.object_name("blob", shard.digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-100])
    assert not two_regions.drill(region="region-2", sample=1).ok
    # A region that cannot be reached is exit 9 with its name, not a list of "missing" files.
    for entry in (tmp_path / "region-b").iterdir():
        os.chmod(entry, 0o755)
    import shutil

    shutil.rmtree(tmp_path / "region-b")
    gone = _cli("drill", "--region", "region-2")
    assert gone.exit_code == 9 and "region region-2 cannot be drilled" in gone.output


def test_a_drill_of_an_empty_registry_is_refused(home: Path) -> None:
    Registry.init(home)
    answer = _cli("drill")
    assert answer.exit_code == 4 and "no versions to drill" in answer.output
