"""Real faults in front of real S3 servers: each region behind its own fault-injecting proxy
(tests/faultproxy.py) that freezes (TCP up, nothing answered), trickles, resets mid-body, answers
503 to everything, refuses, or comes back.

A hung region must cost seconds, not minutes: reads are hedged to the next region, a region that
keeps missing its budget is read last, commands that need only the catalog never touch a store,
`regions status` tells hung from unreachable, and a push finishes with its quorum (or fails fast
without one), nothing committed. The deadlines here are small ([deadlines] in config.toml) so the
whole file stays within the suite's time budget; the bounds asserted on elapsed time are several
times what hedging needs and well below what waiting out the deadlines would take.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from cli.main import main
from registry.config import load_settings
from registry.errors import StorageError
from registry.replication import PENDING, VERIFIED
from registry.service import Registry
from registry.testing.models import make_model
from tests.conftest import tree
from tests.faultproxy import FaultProxy

REQUEST_SECONDS = 3.0
DEADLINES = f"""
[deadlines]
request_seconds = {REQUEST_SECONDS}
hedge_after_seconds = 0.25
degraded_seconds = 2.0
transfer_bytes_per_second = 1048576.0
"""


class Faulty:
    """Regions a, b, c: one bucket each on one S3 server, each reached through its own proxy."""

    def __init__(self, endpoint: str, names: tuple[str, ...] = ("a", "b", "c")) -> None:
        host, port = endpoint.removeprefix("http://").split(":")
        self.proxies = {name: FaultProxy((host, int(port))).start() for name in names}
        self.buckets = {name: f"faults-{name}-{uuid.uuid4().hex[:8]}" for name in names}

    def stores(self) -> list[str]:
        return [
            f"s3://{self.buckets[name]}?region=us-east-1&endpoint={proxy.url}"
            f"&retention_days=1&name=region-{name}"
            for name, proxy in self.proxies.items()
        ]

    def heal(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def connections(self) -> dict[str, int]:
        return {name: proxy.connections for name, proxy in self.proxies.items()}

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def faulty(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Faulty]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    found = Faulty(moto_endpoint)
    try:
        yield found
    finally:
        found.close()


def _init(home: Path, stores: list[str], *, quorum: int | None = None) -> None:
    Registry.init(home, store=stores, write_quorum=quorum)
    config = home / "config.toml"
    config.write_text(config.read_text() + DEADLINES)
    assert load_settings(home).deadlines.request_seconds == REQUEST_SECONDS


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "model", shards=3, shard_size=700_000, seed=11)


@pytest.fixture
def pushed(faulty: Faulty, home: Path, model: Path) -> Faulty:
    _init(home, faulty.stores())
    with Registry.open(home) as registry:
        registry.push("org/llama", model)
        registry.promote("org/llama@1", "production")
    return faulty


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def _pull(home: Path, dest: Path) -> tuple[Any, float]:
    started = time.monotonic()
    with Registry.open(home) as registry:
        result = registry.pull("org/llama:production", dest)
    return result, time.monotonic() - started


def _states(home: Path, region: str) -> set[str]:
    with Registry.open(home) as registry:
        return {p.state for p in registry.catalog.placements() if p.region == region}


def test_catalog_only_commands_never_touch_a_store(pushed: Faulty, home: Path) -> None:
    for proxy in pushed.proxies.values():
        proxy.freeze()
    before = pushed.connections()
    for command in (
        ["ls"],
        ["ls", "org/llama"],
        ["show", "org/llama@1"],
        ["history", "org/llama", "production"],
        ["audit"],
        ["alias", "ls", "org/llama"],
        ["hold", "ls"],
        ["retention", "show", "org/llama"],
        ["retention", "plan", "org/llama"],
    ):
        result = _cli(*command)
        assert result.exit_code == 0, (command, result.output)
    assert pushed.connections() == before  # not one connection to any region
    # `audit verify` holds the chain against each region's journal: with none answering, it
    # cannot, and says so (exit 6) rather than vouch for the catalog alone.
    result = _cli("audit", "verify")
    assert result.exit_code == 6, result.output
    assert "its journal could not be read" in result.output


def test_a_pull_with_the_preferred_region_frozen_is_hedged_and_reports_it(
    pushed: Faulty, home: Path, model: Path, tmp_path: Path
) -> None:
    _healthy, healthy_seconds = _pull(home, tmp_path / "healthy")
    pushed.proxies["a"].freeze()
    result, seconds = _pull(home, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    # Waiting out the deadline once per range would take several times REQUEST_SECONDS.
    assert seconds < 1.5 * healthy_seconds + REQUEST_SECONDS, (seconds, healthy_seconds)
    hung = [line for line in result.bad_copies if line.startswith("region-a: ")]
    assert hung and all("hung" in line for line in hung), result.bad_copies
    assert not [line for line in result.bad_copies if not line.startswith("region-a: ")]
    assert PENDING in _states(home, "region-a")
    assert _states(home, "region-b") == {VERIFIED}


def test_the_cli_names_a_region_that_was_down_from_the_start(
    pushed: Faulty, home: Path, model: Path, tmp_path: Path
) -> None:
    pushed.proxies["a"].refuse()
    result = _cli("pull", "org/llama:production", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "out") == tree(model)
    assert "warning: region region-a was read around (unreachable" in result.output
    assert "replicate" in result.output
    # Every copy the pull read is recorded for `replicate`, not only the first one tried.
    with Registry.open(home) as registry:
        version = registry.resolve("org/llama:production")
        pending = {
            p.digest
            for p in registry.catalog.placements()
            if p.region == "region-a"
            if p.state == PENDING
        }
    assert {f.digest for f in version.files} <= pending


def test_every_region_but_one_frozen(
    pushed: Faulty, home: Path, model: Path, tmp_path: Path
) -> None:
    _healthy, healthy_seconds = _pull(home, tmp_path / "healthy")
    pushed.proxies["a"].freeze()
    pushed.proxies["b"].freeze()
    result, seconds = _pull(home, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    assert seconds < 2 * healthy_seconds + REQUEST_SECONDS + 2, (seconds, healthy_seconds)
    regions = {line.split(":", 1)[0] for line in result.bad_copies}
    assert regions == {"region-a", "region-b"}, result.bad_copies


@pytest.mark.parametrize("fault", ["trickle", "reset", "503"])
def test_a_misbehaving_region_is_read_around(
    pushed: Faulty, home: Path, model: Path, tmp_path: Path, fault: str
) -> None:
    proxy = pushed.proxies["a"]
    if fault == "trickle":
        proxy.trickle(10_000)
    elif fault == "reset":
        proxy.reset_after(50_000)
    else:
        proxy.fail_503()
    result, seconds = _pull(home, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(model)
    assert seconds < 3 * REQUEST_SECONDS, seconds
    assert any(line.startswith("region-a: ") for line in result.bad_copies), result.bad_copies


def test_a_region_that_comes_back_is_read_again(
    pushed: Faulty, home: Path, model: Path, tmp_path: Path
) -> None:
    with Registry.open(home) as registry:
        pushed.proxies["a"].freeze()
        registry.pull("org/llama:production", tmp_path / "one")
        condition = registry.replicas.condition(registry.replicas.regions[0])
        assert condition is not None and condition.state in ("degraded", "hung")
        pushed.proxies["a"].heal()
        time.sleep(registry.settings.deadlines.degraded_seconds + 0.2)
        registry.replicas.mark_up(registry.replicas.regions[0])  # a new process would too
        before = pushed.proxies["a"].bytes_to_client
        registry.pull("org/llama:production", tmp_path / "two")
        assert pushed.proxies["a"].bytes_to_client > before + 500_000
    assert tree(tmp_path / "two") == tree(model)


def test_regions_status_probes_in_parallel_and_tells_hung_from_unreachable(
    pushed: Faulty, home: Path
) -> None:
    pushed.proxies["a"].freeze()
    pushed.proxies["b"].refuse()
    started = time.monotonic()
    result = _cli("regions", "status", "--json")
    elapsed = time.monotonic() - started
    assert result.exit_code == StorageError.exit_code, result.output
    states = {r["name"]: r["state"] for r in json.loads(result.stdout)}
    assert states == {"region-a": "hung", "region-b": "unreachable", "region-c": "ok"}
    assert elapsed < 2 * REQUEST_SECONDS  # one deadline, not one per region


def test_a_push_with_a_frozen_region_meets_its_quorum_and_records_pending_copies(
    faulty: Faulty, home: Path, model: Path, tmp_path: Path
) -> None:
    _init(home, faulty.stores(), quorum=2)
    faulty.proxies["c"].freeze()
    started = time.monotonic()
    with Registry.open(home) as registry:
        result = registry.push("org/llama", model)
    assert time.monotonic() - started < 4 * REQUEST_SECONDS
    assert result.pending_regions == ("region-c",)
    assert _states(home, "region-c") == {PENDING}
    faulty.heal()
    with Registry.open(home) as registry:
        report = registry.replicate()
        assert report.ok, report.problems
        registry.pull("org/llama", tmp_path / "out")
    assert _states(home, "region-c") == {VERIFIED}
    assert tree(tmp_path / "out") == tree(model)


def test_a_push_without_its_quorum_fails_fast_and_commits_nothing(
    faulty: Faulty, home: Path, model: Path
) -> None:
    _init(home, faulty.stores())  # every region is needed
    faulty.proxies["b"].freeze()
    started = time.monotonic()
    result = _cli("push", "org/llama", str(model))
    assert result.exit_code == StorageError.exit_code, result.output
    assert "nothing was committed" in result.output
    assert time.monotonic() - started < 3 * REQUEST_SECONDS
    faulty.heal()
    with Registry.open(home) as registry:
        assert registry.models() == []


@pytest.mark.ceph
@pytest.mark.xdist_group("ceph")
def test_a_frozen_ceph_rgw_region_is_read_around_and_reported_hung(
    ceph_rgw: Any,
    moto_endpoint: str,
    home: Path,
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real S3 with Object Lock (Ceph RGW) as the preferred region, frozen behind the proxy;
    moto (which takes any credentials) as the other."""
    from tests.ceph_rgw import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    host, port = ceph_rgw.endpoint.removeprefix("http://").split(":")
    moto_host, moto_port = moto_endpoint.removeprefix("http://").split(":")
    with (
        FaultProxy((host, int(port))) as ceph,
        FaultProxy((moto_host, int(moto_port))) as moto,
    ):
        suffix = uuid.uuid4().hex[:8]
        _init(
            home,
            [
                f"s3://faults-ceph-{suffix}?region=us-east-1&endpoint={ceph.url}"
                "&retention_days=1&name=ceph",
                f"s3://faults-moto-{suffix}?region=us-east-1&endpoint={moto.url}"
                "&retention_days=1&name=moto",
            ],
        )
        with Registry.open(home) as registry:
            registry.push("org/llama", model)
        ceph.freeze()
        started = time.monotonic()
        with Registry.open(home) as registry:
            pulled = registry.pull("org/llama", tmp_path / "out")
        assert time.monotonic() - started < 2 * REQUEST_SECONDS
        assert tree(tmp_path / "out") == tree(model)
        assert pulled.bad_copies and all(
            line.startswith("ceph: ") and "hung" in line for line in pulled.bad_copies
        ), pulled.bad_copies
        status = _cli("regions", "status", "--json")
        states = {r["name"]: r["state"] for r in json.loads(status.stdout)}
        assert states == {"ceph": "hung", "moto": "ok"}, status.output


def test_a_load_with_a_frozen_region_is_hedged_recorded_and_warned_about(
    pushed: Faulty, home: Path, model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from registry import loader

    pushed.proxies["a"].freeze()
    with Registry.open(home) as registry, caplog.at_level("WARNING", logger="model_registry"):
        state = loader.load("org/llama:production", registry=registry, cache=False)
        assert state.stats.regions and "region-a" not in state.stats.regions
    assert len(state) > 0
    assert any("region-a: " in r.getMessage() and "hung" in r.getMessage() for r in caplog.records)
    assert PENDING in _states(home, "region-a")


def test_verify_calls_a_hung_region_unchecked_not_damaged(pushed: Faulty, home: Path) -> None:
    pushed.proxies["a"].freeze()
    for args in (["verify", "org/llama@1"], ["verify", "org/llama@1", "--read-data"]):
        result = _cli(*args)
        assert result.exit_code == 0, result.output
        assert "BAD" not in result.output
        warnings = [line for line in result.output.splitlines() if "not checked" in line]
        assert len(warnings) == 1 and "region-a" in warnings[0] and "hung" in warnings[0]
    scrub = _cli("verify", "--all")
    assert scrub.exit_code == StorageError.exit_code, scrub.output
    assert scrub.output.startswith("incomplete:") and "0 bad" in scrub.output
