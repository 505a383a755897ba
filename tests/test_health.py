"""Deadlines on store calls (registry.storage.deadline), region health
(registry.replication.health: latency budgets, the circuit breaker, outages), and the hedged read
of registry.replication over a store that hangs, with no network at all: a driver whose reads
block until told otherwise."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from registry.errors import InvalidInputError, StorageError, StoreTimeoutError
from registry.replication import ReadReport, Region, ReplicaSet
from registry.replication.health import DEGRADED, DOWN, HUNG, MISSES_TO_DEGRADE, RegionHealth
from registry.storage.deadline import DeadlineSettings, call_with_deadline, submit

FAST = DeadlineSettings(
    request_seconds=1.0,
    hedge_after_seconds=0.05,
    degraded_seconds=0.3,
    transfer_bytes_per_second=1e6,
)


def test_a_call_that_answers_in_time_gives_its_result_or_its_error() -> None:
    assert call_with_deadline(lambda _b: 42, seconds=1, what="x") == 42
    with pytest.raises(KeyError):
        call_with_deadline(lambda _b: dict[str, int]()["missing"], seconds=1, what="x")


def test_a_hung_call_is_abandoned_at_its_deadline_and_told_so() -> None:
    release = threading.Event()
    seen: list[bool] = []

    def hang(budget: object) -> None:
        release.wait(5)
        seen.append(budget.cancelled.is_set())  # type: ignore[attr-defined]

    started = time.monotonic()
    with pytest.raises(StoreTimeoutError, match=r"read of x: no answer within 0\.2 s"):
        call_with_deadline(hang, seconds=0.2, what="read of x")
    assert time.monotonic() - started < 1.0
    release.set()
    for _ in range(50):
        if seen:
            break
        time.sleep(0.02)
    assert seen == [True]


def test_bytes_moved_extend_the_deadline_and_a_trickle_still_times_out() -> None:
    def steady(budget: object) -> str:
        for _ in range(10):  # 0.5 s in all, 100 KB every 50 ms: 2 MB/s
            time.sleep(0.05)
            budget.moved(100_000)  # type: ignore[attr-defined]
        return "done"

    assert call_with_deadline(steady, seconds=0.2, rate=1e6, what="x") == "done"

    def trickle(budget: object) -> None:
        for _ in range(100):  # 1 KB every 50 ms: 20 KB/s
            time.sleep(0.05)
            budget.moved(1_000)  # type: ignore[attr-defined]
            if budget.cancelled.is_set():  # type: ignore[attr-defined]
                return

    with pytest.raises(StoreTimeoutError, match="too slow"):
        call_with_deadline(trickle, seconds=0.2, rate=1e6, what="x")


def test_a_hung_call_never_holds_the_process_open(tmp_path: Path) -> None:
    script = (
        "import threading\n"
        "from registry.storage.deadline import call_with_deadline\n"
        "from registry.errors import StoreTimeoutError\n"
        "try:\n"
        "    call_with_deadline(lambda b: threading.Event().wait(60), seconds=0.1, what='x')\n"
        "except StoreTimeoutError:\n"
        "    print('timed out')\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stdout.strip() == "timed out", done.stderr
    assert time.monotonic() - started < 10  # not the 60 s the abandoned call sleeps


def test_the_pool_grows_past_stuck_workers() -> None:
    release = threading.Event()
    stuck = [submit(lambda: release.wait(5)) for _ in range(20)]
    assert submit(lambda: "free").result(timeout=2) == "free"
    release.set()
    assert all(future.result(timeout=5) for future in stuck)


def test_deadline_settings_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="positive"):
        DeadlineSettings(request_seconds=0)
    with pytest.raises(InvalidInputError, match="up to 3600"):
        DeadlineSettings(request_seconds=float("inf"))
    with pytest.raises(InvalidInputError, match="must not exceed"):
        DeadlineSettings(request_seconds=1, hedge_after_seconds=2)
    with pytest.raises(InvalidInputError, match="unknown"):
        DeadlineSettings.from_config({"request_second": 3})
    assert DeadlineSettings.from_config({"request_seconds": 3}).config_lines() == [
        "",
        "[deadlines]",
        "request_seconds = 3",
    ]
    assert DeadlineSettings().transfer_seconds(10 << 20) == pytest.approx(20.0)


def test_the_budget_follows_recent_latencies_between_its_floor_and_the_deadline() -> None:
    health = RegionHealth(FAST)
    assert health.budget("a") == FAST.hedge_after_seconds  # nothing known yet: the floor
    for _ in range(40):
        health.served("a", 0.001)
    assert health.budget("a") == FAST.hedge_after_seconds
    alone = RegionHealth(FAST)
    for _ in range(40):
        alone.served("b", 0.1)
    assert alone.budget("b") == pytest.approx(0.3)  # 3 x p95
    for _ in range(40):
        alone.served("c", 5.0)
    assert alone.budget("c") == pytest.approx(0.3)  # never more than 3 x the fastest region's
    slow = RegionHealth(FAST)
    for _ in range(40):
        slow.served("c", 5.0)
    assert slow.budget("c") == FAST.request_seconds  # and never more than a request's deadline


def test_misses_among_recent_reads_degrade_a_region_that_answers_small_reads_in_time() -> None:
    """A trickling region answers small reads in time and misses every large one."""
    health = RegionHealth(FAST)
    for _ in range(MISSES_TO_DEGRADE):
        health.served("a", 0.001)
        health.missed("a", 0.05)
    condition = health.condition("a")
    assert condition is not None and condition.state == DEGRADED
    assert health.suspect("a") is not None and health.suspect("b") is None


def test_a_region_that_keeps_missing_its_budget_is_degraded_then_probed_again() -> None:
    health = RegionHealth(FAST)
    for _ in range(MISSES_TO_DEGRADE - 1):
        health.missed("a", 0.05)
    assert health.condition("a") is None
    health.missed("a", 0.05)
    condition = health.condition("a")
    assert condition is not None and condition.state == DEGRADED
    assert condition.describe().startswith("hung: ")
    assert health.unavailable("a") is None  # degraded: read last, still written to
    time.sleep(FAST.degraded_seconds + 0.05)
    assert health.condition("a") is None  # probed again
    health.missed("a", 0.05)  # half-open: one miss degrades it again
    assert health.condition("a") is not None
    time.sleep(FAST.degraded_seconds + 0.05)
    assert health.condition("a") is None
    health.served("a", 0.001)  # a good answer closes the breaker
    health.missed("a", 0.05)
    assert health.condition("a") is None


def test_failures_mark_a_region_down_or_hung_until_it_recovers() -> None:
    health = RegionHealth(FAST)
    health.failed("a", StorageError("connection refused"))
    health.failed("b", StoreTimeoutError("no answer within 1 s"))
    a, b = health.unavailable("a"), health.unavailable("b")
    assert a is not None and a.state == DOWN and a.describe() == "unreachable: connection refused"
    assert b is not None and b.state == HUNG and b.describe().startswith("hung: ")
    health.recovered("a")
    assert health.unavailable("a") is None


# -- hedged reads over a store that hangs, no network ---------------------------------------


class _Hanging:
    """A driver whose reads block while `hung` is set (like a frozen region), counted."""

    latency_bound = True

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.hung = threading.Event()
        self.reads = 0

    def get_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.reads += 1
        if self.hung.is_set():
            time.sleep(FAST.request_seconds)  # what a request to a frozen region costs
            raise StoreTimeoutError("no answer within 1 s")
        end = len(self.data) if length is None else offset + length
        return self.data[offset:end]

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        raise AssertionError("hedged reads never read into the caller's buffer")

    def close(self) -> None:
        pass


class _Store:
    def __init__(self, driver: _Hanging) -> None:
        self.driver = driver

    def object_name(self, kind: str, digest: str) -> str:
        return f"{kind}/{digest}"


def _replicas(drivers: Iterable[_Hanging]) -> ReplicaSet:
    regions = [Region(f"r{i}", _Store(d)) for i, d in enumerate(drivers)]  # type: ignore[arg-type]
    return ReplicaSet(regions, deadlines=FAST)


def test_a_hedged_read_takes_the_first_good_answer_and_reports_the_hung_region() -> None:
    data = bytes(range(256)) * 64
    first, second = _Hanging(data), _Hanging(data)
    first.hung.set()
    replicas = _replicas([first, second])
    assert replicas.hedging
    report = ReadReport()
    source = replicas.source("blob", "d", report, what="f")
    started = time.monotonic()
    buffer = bytearray(1000)
    assert source.read_into(10, memoryview(buffer)) == 1000
    assert bytes(buffer) == data[10:1010]
    assert time.monotonic() - started < FAST.request_seconds / 2  # hedged, not waited out
    assert source.regions_used() == ["r1"]
    # The abandoned read times out later: the region is then down, and reported as hung.
    time.sleep(FAST.request_seconds + 0.3)
    report.settle()
    assert report.bad == {("blob", "d", "r0"): report.bad[("blob", "d", "r0")]}
    assert report.bad[("blob", "d", "r0")].startswith("hung")
    assert replicas.is_down(replicas.regions[0])
    # Known down: later reads go to r1 first, and still report r0 for the object they read.
    later = ReadReport()
    reads = first.reads
    replicas.source("blob", "e", later, what="g").read_into(0, memoryview(bytearray(10)))
    assert first.reads == reads and ("blob", "e", "r0") in later.bad


def test_a_misspelt_table_in_config_toml_is_refused(tmp_path: Path) -> None:
    """`[deadline]` for `[deadlines]` must not pass silently for the defaults."""
    from registry.config import load_settings
    from registry.errors import ConfigurationError
    from registry.service import Registry

    Registry.init(tmp_path / "home")
    config = tmp_path / "home" / "config.toml"
    config.write_text(config.read_text() + "\n[deadline]\nrequest_seconds = 2\n")
    with pytest.raises(ConfigurationError, match=r"unknown settings \['deadline'\]"):
        load_settings(tmp_path / "home")
