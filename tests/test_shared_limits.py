"""One limit across the fleet: three server apps on one PostgreSQL catalog (its `limit_counts`)
or one Redis enforce one rate limit per token (a burst through all three is let through about
once, not three times) and raise each threat signal once, counting every app's events; what
aged out is pruned; a shared store that stops answering leaves each app limiting alone, logged
and counted, and loses no count."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
from litestar.testing import TestClient
from sqlalchemy import create_engine, func, select

from registry.api.app import create_app
from registry.api.tally import Tally
from registry.catalog.counters import CatalogCounters
from registry.catalog.models import LimitCount
from registry.config import ApiSettings
from registry.errors import InvalidInputError
from registry.records import CountSpan
from registry.redis_counters import RedisCounters
from registry.service import READER, Registry
from registry.testing.models import make_model

REDIS_URL = os.environ.get("MODEL_REGISTRY_TEST_REDIS", "redis://127.0.0.1:6379/11")
SYNC = 0.1  # [api] shared_sync_seconds of these apps
BURST = 30


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The Redis of these tests (database 11: apart from other users of a shared Redis)."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        message = f"Redis at {REDIS_URL} is not available: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (under CI=true Redis tests must run, not skip)")
        pytest.skip(message)
    return REDIS_URL


def _forget(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(params=["catalog", "redis"])
def shared(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_server"))
    return "catalog"


class Fleet:
    """Three apps, each over its own open registry, sharing one catalog (and, for Redis, one
    Redis): three server processes as far as their limits can tell."""

    def __init__(self, clients: list[TestClient[Any]], tokens: dict[str, str]) -> None:
        self.clients = clients
        self.tokens = tokens

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def state(self, index: int) -> Any:
        return self.clients[index].app.state["registry_state"]

    def settle(self) -> None:
        """Until every app has swapped its counts twice more (each saw the others')."""
        for _round in range(2):
            tallies = [self.state(i).tally for i in range(3)]
            started = [t.swaps for t in tallies]
            deadline = time.monotonic() + 10
            while any(t.swaps <= s for t, s in zip(tallies, started, strict=True)):
                assert time.monotonic() < deadline, "the apps stopped swapping"
                time.sleep(SYNC / 4)

    def events(self, kind: str) -> float:
        total = 0.0
        for client in self.clients:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith(f'model_registry_security_events_total{{kind="{kind}"}}'):
                    total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def fleet(home: Path, tmp_path: Path, postgres_url: str, shared: str) -> Iterator[Fleet]:
    Registry.init(home, catalog_url=postgres_url)
    config = home / "config.toml"
    config.write_text(
        config.read_text() + f'\n[api]\nshared_state = "{shared}"\nshared_sync_seconds = {SYNC}\n'
        f"burst = {BURST}\nrequests_per_second = 0.01\n"
        "signal_distinct_models = 3\nsignal_refusals = 5\nsignal_unwraps = 8\n"
    )
    with Registry.open(home) as registry:
        for i in range(6):
            model = make_model(tmp_path / f"m{i}", shards=2, shard_size=400, seed=i)
            registry.push(f"org/m{i}", model)
        tokens = {
            name: registry.create_token(name, role=READER, models=["org/*"])[1]
            for name in ("burst", "browser", "loader")
        }
        prefix = f"model-registry:{registry.settings.registry_id}:"
    with ExitStack() as stack:
        clients = []
        for _index in range(3):
            opened = stack.enter_context(Registry.open(home))
            app = create_app(opened)
            clients.append(stack.enter_context(TestClient(app)))
        try:
            fleet = Fleet(clients, tokens)
            fleet.settle()
            yield fleet
        finally:
            if shared != "catalog":
                _forget(prefix)


@pytest.mark.postgres
def test_a_burst_through_three_apps_is_let_through_once(fleet: Fleet) -> None:
    """Alone, each app would let BURST requests through (3 x BURST in all); together they let
    through one BURST, give or take the documented bound (one request per app and swap)."""
    assert all(fleet.state(i).tally.active == 3 for i in range(3))
    answers = [
        fleet.clients[n % 3].get("/v1/models", headers=fleet.auth("burst")).status_code
        for n in range(3 * BURST)
    ]
    fleet.settle()
    answers += [
        fleet.clients[n % 3].get("/v1/models", headers=fleet.auth("burst")).status_code
        for n in range(BURST)
    ]
    assert set(answers) == {200, 429}
    allowed = answers.count(200)
    assert BURST // 2 <= allowed <= BURST + 6, answers
    # Another token has a bucket of its own, full.
    assert fleet.clients[0].get("/v1/models", headers=fleet.auth("browser")).status_code == 200


@pytest.mark.postgres
def test_signals_are_raised_once_across_the_fleet_counting_every_app(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="model_registry.security")
    browser, loader = fleet.auth("browser"), fleet.auth("loader")
    # Two distinct models read through each app: 2 <= 3 on its own, 6 across the fleet.
    for n in range(6):
        reply = fleet.clients[n % 3].get(
            "/v1/version", params={"ref": f"org/m{n}@1"}, headers=browser
        )
        assert reply.status_code == 200
    # Two refusals through each app: 2 <= 5 on its own, 6 across the fleet.
    for n in range(6):
        assert (
            fleet.clients[n % 3]
            .get("/v1/models", headers={"Authorization": "Bearer x"})
            .status_code
            == 401
        )
    # One key broker call (6 keys) through the first app: 6 <= 8.
    assert fleet.clients[0].post("/v1/keys", json={"ref": "org/m0@1"}, headers=loader).is_success
    assert fleet.events("unwrap-spike") == 0
    fleet.settle()
    # Every app now sees the fleet's counts (a swap may already have crossed a threshold: the
    # apps swap every 0.1 s); one more event anywhere crosses each, and one app (whichever
    # claims it first) raises the signal, once.
    for client in fleet.clients:
        assert client.get("/v1/version", params={"ref": "org/m0@1"}, headers=browser).is_success
        assert client.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
    assert fleet.clients[1].post("/v1/keys", json={"ref": "org/m0@1"}, headers=loader).is_success
    fleet.settle()
    assert fleet.clients[2].post("/v1/keys", json={"ref": "org/m0@1"}, headers=loader).is_success
    assert fleet.events("many-models") == 1
    assert fleet.events("repeated-refusals") == 1
    assert fleet.events("unwrap-spike") == 1
    spikes = [r.getMessage() for r in caplog.records if "unwrap-spike" in r.getMessage()]
    # The window's total across the fleet (6 + 6), not the call's own 6.
    assert len(spikes) == 1 and "unwrapped 12 keys in this window" in spikes[0], spikes
    # Each app alone read 2 distinct models (<= 3): the signal counted the others' reads.
    models = [r.getMessage() for r in caplog.records if "many-models" in r.getMessage()]
    assert len(models) == 1
    assert int(models[0].split(" read ")[1].split()[0]) > 3, models


def test_processes_on_one_catalog_share_counts_through_the_facade(
    home: Path, catalog_url: str | None
) -> None:
    """SQLite (several processes of one host) and PostgreSQL alike: two handles, as two
    processes would, add to one count; a signal is claimed once per window."""
    Registry.init(home, catalog_url=catalog_url)
    config = home / "config.toml"
    config.write_text(config.read_text() + '\n[api]\nshared_state = "catalog"\n')
    cell = ("rate-api", "token1", "", 7)
    wanted = {"rate-api": CountSpan(("token1",), 6, 4.0)}
    with Registry.open(home) as first, Registry.open(home) as second:
        assert first.exchange_counts({cell: 3}, wanted) == {cell: 3}
        assert second.exchange_counts({cell: 2}, wanted) == {cell: 5}
        assert first.exchange_counts({}, wanted) == {cell: 5}
        now = time.time()
        assert second.claim_signal("many-models", "token1", now=now, window=300.0)
        assert not first.claim_signal("many-models", "token1", now=now + 1, window=300.0)
        assert first.claim_signal("many-models", "token1", now=now + 301, window=300.0)


def _span(keys: tuple[str, ...], oldest: int) -> dict[str, CountSpan]:
    return {"refusal": CountSpan(keys, oldest, 60.0)}


@pytest.mark.postgres
def test_the_catalog_prunes_counts_and_signals_that_aged_out(postgres_url: str, home: Path) -> None:
    Registry.init(home, catalog_url=postgres_url)
    engine = create_engine(postgres_url)
    try:
        counters = CatalogCounters(engine)
        fleet = counters.exchange({("refusal", "10.0.0.1", "", 5): 2}, _span(("10.0.0.1",), 0))
        assert fleet == {("refusal", "10.0.0.1", "", 5): 2}  # pruned right away: nothing old
        both = counters.exchange({("refusal", "10.0.0.1", "", 5): 3}, _span(("10.0.0.1",), 0))
        assert both == {("refusal", "10.0.0.1", "", 5): 5}  # added to, not replaced
        assert counters.claim("many-models", "t", now=time.time() - 120, window=60.0)
        counters._next_prune = 0.0
        assert counters.exchange({}, _span(("10.0.0.1",), 6)) == {}
        with engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(LimitCount)) == 0
        # The signal raised 120 s ago is older than any count's life (60 s): gone, so it
        # may be raised again at once.
        assert counters.claim("many-models", "t", now=time.time(), window=3600.0)
        assert not counters.claim("many-models", "t", now=time.time(), window=3600.0)
    finally:
        engine.dispose()


def test_redis_keeps_only_live_slots(redis_server: str) -> None:
    prefix = f"model-registry:test-{uuid.uuid4().hex[:8]}:"
    counters = RedisCounters(redis_server, prefix=prefix)
    client = redis.Redis.from_url(redis_server)
    try:
        counters.exchange({("refusal", "c", "", 5): 2}, _span(("c",), 0))
        assert 0 < client.ttl(f"{prefix}c:refusal:c") <= 60
        counters.exchange({("refusal", "c", "", 7): 1}, _span(("c",), 6))  # slot 5 aged out
        counters.exchange({}, _span(("c",), 6))  # ...and is deleted by the next swap
        assert client.hgetall(f"{prefix}c:refusal:c") == {b"7:": b"1"}
        assert counters.claim("unwrap-spike", "t", now=1.0, window=60.0)
        assert not counters.claim("unwrap-spike", "t", now=2.0, window=60.0)
        assert 0 < client.pttl(f"{prefix}s:unwrap-spike:t") <= 60_000
    finally:
        counters.close()
        _forget(prefix)
        client.close()


def test_a_redis_that_stops_answering_loses_no_count(
    redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is down each process limits alone (logged once, the state told to the
    metrics); what it counted meanwhile reaches the fleet's counts once Redis answers again."""
    prefix = f"model-registry:test-{uuid.uuid4().hex[:8]}:"
    counters = RedisCounters(redis_server, prefix=prefix)
    states: list[bool] = []
    tally = Tally(interval=SYNC, exchange=counters.exchange, on_state=states.append)
    tally.add_kind("refusal", slot=30.0, keep=11)
    other = RedisCounters(redis_server, prefix=prefix)  # a second process's view
    try:
        now = time.time()
        tally.count("refusal", "10.0.0.7", "", now)
        assert tally.swap(now)
        working = counters._client
        counters._client = redis.Redis(port=_closed_port(), socket_connect_timeout=0.2)
        caplog.set_level(logging.WARNING, logger="model_registry.api")
        tally.count("refusal", "10.0.0.7", "", now, 4)
        assert not tally.swap(now) and not tally.swap(now)
        assert not tally.up and tally.active == 1
        assert tally.total("refusal", "10.0.0.7", since=0) == 5  # still counted here
        warned = [r.getMessage() for r in caplog.records if "shared limits" in r.getMessage()]
        assert len(warned) == 1 and "unavailable" in warned[0]  # once, not per swap
        counters._client = working
        assert tally.swap(now) and tally.up
        assert states == [True, False, False, True]
        slot = tally.slot("refusal", now)
        seen = other.exchange({}, _span(("10.0.0.7",), 0))
        assert seen == {("refusal", "10.0.0.7", "", slot): 5}  # nothing lost, nothing twice
    finally:
        counters.close()
        other.close()
        _forget(prefix)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_an_app_whose_redis_is_down_limits_alone(home: Path, tmp_path: Path) -> None:
    Registry.init(home)
    config = home / "config.toml"
    config.write_text(
        config.read_text() + f'\n[api]\nshared_state = "redis://127.0.0.1:{_closed_port()}/0"\n'
        f"shared_sync_seconds = {SYNC}\nburst = 3\nrequests_per_second = 0.01\n"
    )
    records = _Records()
    logging.getLogger("model_registry.api").addHandler(records)
    try:
        with Registry.open(home) as registry:
            _record, token = registry.create_token("ci", role=READER, models=["*"])
            with TestClient(create_app(registry)) as client:
                auth = {"Authorization": f"Bearer {token}"}
                answers = [client.get("/v1/models", headers=auth).status_code for _ in range(5)]
                assert answers == [200, 200, 200, 429, 429]  # this process's own limit, exactly
                deadline = time.monotonic() + 10
                while "model_registry_shared_state_up 0.0" not in client.get("/metrics").text:
                    assert time.monotonic() < deadline
                    time.sleep(SYNC)
                scraped = client.get("/metrics").text
                assert "model_registry_shared_state_failures_total 0.0" not in scraped
    finally:
        logging.getLogger("model_registry.api").removeHandler(records)
    assert any("shared limits unavailable" in m for m in records.messages), records.messages


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_where_counts_are_shared_by_default_and_by_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    postgres, sqlite = "postgresql+psycopg://h/db", "sqlite:////tmp/catalog.db"
    assert ApiSettings().shared_store(postgres) == "catalog"  # a fleet is right by default
    assert ApiSettings().shared_store(sqlite) == "memory"
    assert ApiSettings(shared_state="memory").shared_store(postgres) == "memory"
    assert ApiSettings(shared_state="catalog").shared_store(sqlite) == "catalog"
    monkeypatch.setenv("MODEL_REGISTRY_SHARED_STATE", "redis://cache:6379/2")
    assert ApiSettings(shared_state="memory").shared_store(sqlite) == "redis://cache:6379/2"
    monkeypatch.setenv("MODEL_REGISTRY_SHARED_STATE", "memcached://x")
    with pytest.raises(InvalidInputError, match="MODEL_REGISTRY_SHARED_STATE must be memory"):
        ApiSettings().shared_store(sqlite)
    with pytest.raises(InvalidInputError, match=r"api\.shared_state must be memory, catalog"):
        ApiSettings(shared_state="postgres")
    with pytest.raises(InvalidInputError, match=r"api\.shared_sync_seconds must be from"):
        ApiSettings(shared_sync_seconds=0)
