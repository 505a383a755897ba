"""Per-token rate limits (a token bucket each) and the threat signals the API watches: many
distinct models pulled in a short window, repeated 401/403, key unwraps far above a token's
usual rate. In memory, per server process: each process enforces its share."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from registry.errors import RateLimitedError


@dataclass(frozen=True)
class Thresholds:
    """What counts as unusual (configurable in config.toml `[api]`, docs/security.md)."""

    requests_per_second: float = 50.0
    burst: int = 200
    distinct_models: int = 20  # distinct models read by one token within `window`
    refusals: int = 20  # 401/403 answers to one client within `window`
    unwraps: int = 500  # key unwraps by one token within `window`
    window: float = 300.0  # seconds


class RateLimiter:
    """A token bucket per key: `check` takes one request or raises RateLimitedError with the
    seconds until one is available."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimitedError(
                    "too many requests for this token",
                    retry_after=wait,
                    hint=f"retry after {wait:.1f} s",
                )
            self._buckets[key] = (tokens - 1.0, now)


class Watch:
    """Sliding-window counters of the threat signals; `note_*` return the signal's name when
    its threshold is crossed (once per window per key), else None."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._lock = threading.Lock()
        self._models: dict[str, deque[tuple[float, str]]] = defaultdict(deque)
        self._refusals: dict[str, deque[float]] = defaultdict(deque)
        self._unwraps: dict[str, deque[float]] = defaultdict(deque)
        self._raised: dict[tuple[str, str], float] = {}

    def _once(self, kind: str, key: str, now: float) -> str | None:
        last = self._raised.get((kind, key))
        if last is not None and now - last < self.thresholds.window:
            return None
        self._raised[(kind, key)] = now
        return kind

    def note_read(self, token: str, model: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            seen = self._models[token]
            seen.append((now, model))
            while seen and now - seen[0][0] > self.thresholds.window:
                seen.popleft()
            if len({m for _t, m in seen}) > self.thresholds.distinct_models:
                return self._once("many-models", token, now)
        return None

    def note_refusal(self, client: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            times = self._refusals[client]
            times.append(now)
            while times and now - times[0] > self.thresholds.window:
                times.popleft()
            if len(times) > self.thresholds.refusals:
                return self._once("repeated-refusals", client, now)
        return None

    def note_unwraps(self, token: str, count: int) -> str | None:
        now = time.monotonic()
        with self._lock:
            times = self._unwraps[token]
            times.extend([now] * count)
            while times and now - times[0] > self.thresholds.window:
                times.popleft()
            if len(times) > self.thresholds.unwraps:
                return self._once("unwrap-spike", token, now)
        return None
