"""The API's limits and threat signals: `[api]` settings are read, validated and kept when
config.toml is rewritten; each signal fires once its threshold is crossed (and not before), is
logged as a security event and counted in /metrics; key unwraps are judged against the token's
own baseline."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from registry.api.app import create_app
from registry.api.limits import RateLimiter, Signal, Watch
from registry.config import ApiSettings, load_settings
from registry.errors import ConfigurationError, RateLimitedError
from registry.service import ADMIN, READER, Registry
from registry.testing.models import make_model

WINDOW = 300.0


def _watch(**changes: Any) -> Watch:
    return Watch(dataclasses.replace(ApiSettings(), **changes))


# -- settings -------------------------------------------------------------------------------------


def test_api_settings_are_read_from_config_and_survive_a_rewrite(home: Path) -> None:
    Registry.init(home)
    config = home / "config.toml"
    config.write_text(
        config.read_text()
        + "\n[api]\nrequests_per_second = 7.5\nburst = 9\nsignal_distinct_models = 3\n"
        'part_size = 4194304\nstaging_dir = "spool"\nstaging_bytes_per_token = 1073741824\n'
    )
    settings = load_settings(home).api
    assert (settings.requests_per_second, settings.burst) == (7.5, 9)
    assert settings.signal_distinct_models == 3
    assert settings.part_size == 4 * 1024 * 1024
    assert settings.staging_dir == home / "spool"
    assert settings.staging_bytes_per_token == 1 << 30
    assert settings.signal_refusals == ApiSettings().signal_refusals  # the rest: defaults
    with Registry.open(home) as registry:
        registry.add_webhook("https://hooks.example/registry")  # rewrites config.toml
    assert load_settings(home).api == settings


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("burst = 0", "api.burst"),
        ("requests_per_second = -1", "api.requests_per_second must be a positive number"),
        ("signal_refusals = 2.5", "api.signal_refusals must be a whole number"),
        ("part_size = 1000", "api.part_size must be a whole number of MiB"),
        ("part_size = 1073741824", "api.part_size must be a whole number of MiB"),
        ("speed = 3", "unknown [api] settings ['speed']"),
        ('burst = "many"', "api.burst must be a positive number"),
        ('shared_state = "postgres"', "api.shared_state must be memory, catalog or a Redis URL"),
        ("shared_sync_seconds = 60", "api.shared_sync_seconds must be from 0.05 to 10"),
        ("staging_bytes_per_token = -1", "api.staging_bytes_per_token must be a whole number"),
        ("staging_bytes_per_token = 1.5e9", "api.staging_bytes_per_token must be a whole number"),
        ("staging_bytes_per_token = true", "api.staging_bytes_per_token must be a whole number"),
    ],
)
def test_invalid_api_settings_are_refused_with_the_setting_named(
    home: Path, line: str, complaint: str
) -> None:
    Registry.init(home)
    config = home / "config.toml"
    config.write_text(config.read_text() + f"\n[api]\n{line}\n")
    with pytest.raises(ConfigurationError, match=rf"config\.toml: .*{_escape(complaint)}"):
        load_settings(home)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


# -- the signals, one by one ----------------------------------------------------------------------


def _kinds(signals: list[Signal | None]) -> list[str | None]:
    return [None if signal is None else signal.kind for signal in signals]


def test_many_distinct_models_fire_once_per_window() -> None:
    watch = _watch(signal_distinct_models=3)
    fired = [watch.note_read("t1", f"org/m{i}", now=float(i)) for i in range(6)]
    assert _kinds(fired) == [None, None, None, "many-models", None, None]
    assert fired[3] == Signal("many-models", "t1", 4)  # the count that crossed the threshold
    assert watch.note_read("t2", "org/m0", now=6.0) is None  # another token: its own count
    # The same few models read again and again are not "many".
    calm = _watch(signal_distinct_models=3)
    assert all(calm.note_read("t", f"org/m{i % 3}", now=float(i)) is None for i in range(50))
    # Once the window has passed, old reads no longer count and the signal may fire again.
    later = [watch.note_read("t1", f"org/n{i}", now=WINDOW + 40 + i) for i in range(5)]
    assert _kinds(later).count("many-models") == 1
    assert [s.count for s in later if s] == [4]  # the reads of the first window aged out


def test_repeated_refusals_fire_per_client() -> None:
    watch = _watch(signal_refusals=4)
    fired = [watch.note_refusal("10.0.0.9", now=float(i)) for i in range(6)]
    assert _kinds(fired) == [None, None, None, None, "repeated-refusals", None]
    assert watch.note_refusal("10.0.0.10", now=6.0) is None
    spread = _watch(signal_refusals=4)  # the same count spread over many windows: no signal
    assert all(spread.note_refusal("c", now=i * WINDOW) is None for i in range(20))


def test_unwrap_spike_is_judged_against_the_tokens_baseline() -> None:
    watch = _watch(signal_unwraps=50, signal_unwrap_factor=10.0)
    # A fleet token that unwraps 40 keys every window: below the floor, and it becomes its
    # baseline, so 300 in one window (< 10 x 40) is still its normal business.
    for window in range(10):
        assert watch.note_unwraps("fleet", 40, now=window * WINDOW + 1) is None
    assert watch.note_unwraps("fleet", 300, now=10 * WINDOW + 1) is None
    # 600 (> 10 x its baseline) is a spike, and the signal names the window's total.
    assert watch.note_unwraps("fleet", 300, now=10 * WINDOW + 2) == Signal(
        "unwrap-spike", "fleet", 600
    )
    # A quiet token: 2 keys a window, then 60 at once: above the floor and 10 x baseline.
    quiet = _watch(signal_unwraps=50, signal_unwrap_factor=10.0)
    for window in range(5):
        assert quiet.note_unwraps("ci", 2, now=window * WINDOW + 1) is None
    assert quiet.note_unwraps("ci", 60, now=5 * WINDOW + 1) == Signal("unwrap-spike", "ci", 60)
    # Never below the floor, whatever the baseline (a first use has none).
    fresh = _watch(signal_unwraps=50, signal_unwrap_factor=10.0)
    assert fresh.note_unwraps("new", 50, now=1.0) is None
    assert fresh.note_unwraps("new", 1, now=2.0) == Signal("unwrap-spike", "new", 51)


def test_a_baseline_fades_while_a_token_is_idle() -> None:
    """A busy token gone quiet for long (20 windows or 100) is judged afresh: its old baseline
    must not hide a burst from a token stolen while it was idle."""
    for idle in (25, 100):
        watch = _watch(signal_unwraps=500, signal_unwrap_factor=10.0)
        for window in range(10):
            assert watch.note_unwraps("fleet", 400, now=window * WINDOW + 1) is None
        # Busy as usual, 3000 would be below 10 x its baseline of 400.
        assert watch.note_unwraps("fleet", 3000, now=10 * WINDOW + 1) is None
        later = (10 + idle) * WINDOW + 1
        signal = watch.note_unwraps("fleet", 3000, now=later)
        assert signal == Signal("unwrap-spike", "fleet", 3000), idle


def test_many_reads_in_a_window_stay_cheap_and_old_windows_are_forgotten() -> None:
    """note_read runs on every ciphertext range: what it keeps grows with the models and the
    window's slots, not with the reads; what aged out is pruned."""
    watch = _watch(signal_distinct_models=5)
    for i in range(100_000):
        watch.note_read("fleet", f"org/m{i % 3}", now=i * 0.001)
    assert watch.tally.total("read", "fleet", since=0) == 100_000
    cells = watch.tally._series[("read", "fleet")].cells
    assert len(cells) == 3 * 4  # 3 models x the 4 tenths of a window the 100 s spanned
    assert watch.note_read("fleet", "org/m4", now=100.0) is None
    late = [watch.note_read("fleet", f"org/n{i}", now=WINDOW + 200 + i) for i in range(7)]
    assert _kinds(late).count("many-models") == 1
    counted = watch.tally.total("read", "fleet", since=watch.tally.oldest("read", WINDOW + 206))
    assert counted == 7  # the first 100 s aged out of the window
    for i in range(1000):
        watch.note_refusal(f"10.1.{i // 250}.{i % 250}", now=float(i))
    assert len(watch.tally) == 1000 + 1
    watch.tally.swap(now=5 * WINDOW)  # the timer's prune: every key aged out
    assert len(watch.tally) == 0


def test_rate_limiter_refills_at_its_rate() -> None:
    limiter = RateLimiter(1000.0, 2)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimitedError) as refused:
        limiter.check("a")
    assert 0 < refused.value.retry_after <= 0.001
    limiter.check("b")  # another token has its own bucket


# -- through the API ------------------------------------------------------------------------------


@pytest.fixture
def watched(home: Path, tmp_path: Path) -> Iterator[tuple[TestClient[Any], dict[str, str]]]:
    Registry.init(home)
    config = home / "config.toml"
    config.write_text(
        config.read_text()
        + "\n[api]\nsignal_distinct_models = 2\nsignal_refusals = 3\nsignal_unwraps = 8\n"
        "key_burst = 3\nkey_requests_per_second = 0.01\n"
    )
    with Registry.open(home) as registry:
        for i in range(4):
            model = make_model(tmp_path / f"m{i}", shards=2, shard_size=500, seed=i)
            registry.push(f"org/m{i}", model)
        _record, reader = registry.create_token("fleet", role=READER, models=["org/*"])
        _record, admin = registry.create_token("root", role=ADMIN, models=["*"])
        with TestClient(create_app(registry)) as client:
            yield client, {"reader": reader, "admin": admin}


def _security_events(client: TestClient[Any]) -> dict[str, float]:
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("model_registry_security_events_total{"):
            kind = line.split('kind="')[1].split('"')[0]
            counts[kind] = float(line.rsplit(" ", 1)[1])
    return counts


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def security_log() -> Iterator[_Records]:
    logger = logging.getLogger("model_registry.security")
    handler = _Records()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_signals_are_logged_and_counted_with_the_configured_thresholds(
    watched: tuple[TestClient[Any], dict[str, str]], security_log: _Records
) -> None:
    client, tokens = watched
    reader = {"Authorization": f"Bearer {tokens['reader']}"}
    assert _security_events(client) == {}
    for i in range(3):  # a third distinct model crosses signal_distinct_models = 2
        assert client.get("/v1/version", params={"ref": f"org/m{i}@1"}, headers=reader).is_success
    assert _security_events(client) == {"many-models": 1.0}
    # Unwraps: a version has 6 keys (its files and manifest); the second call crosses 8.
    first = client.post("/v1/keys", json={"ref": "org/m0@1"}, headers=reader)
    assert first.is_success and len(first.json()["keys"]) == 6
    assert "unwrap-spike" not in _security_events(client)
    assert client.post("/v1/keys", json={"ref": "org/m1@1"}, headers=reader).is_success
    assert _security_events(client)["unwrap-spike"] == 1.0
    # The broker's own, tighter bucket (key_burst = 3): the fourth call is refused.
    assert client.post("/v1/keys", json={"ref": "org/m2@1"}, headers=reader).is_success
    refused = client.post("/v1/keys", json={"ref": "org/m3@1"}, headers=reader)
    assert refused.status_code == 429
    # Refusals from one address: the fourth 401 crosses signal_refusals = 3.
    for _ in range(4):
        assert client.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
    assert _security_events(client)["repeated-refusals"] == 1.0
    logged = security_log.messages
    assert {m.split()[2] for m in logged} == {"many-models", "unwrap-spike", "repeated-refusals"}
    # The spike names the window's total of unwraps (6 + 6), not the last call's 6.
    assert any("unwrapped 12 keys in this window" in m for m in logged), logged
