"""Per-token rate limits (a token bucket each) and the threat signals the API watches: many
distinct models pulled in a short window, repeated 401/403, key unwraps far above a token's
usual rate. In memory, per server process: each process enforces its share. The thresholds are
`[api]` settings (registry.config.ApiSettings)."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

from registry.config import ApiSettings
from registry.errors import RateLimitedError


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


@dataclass
class _UnwrapWindow:
    start: float
    count: float = 0.0
    baseline: float | None = None  # None: no earlier window yet


class Watch:
    """Sliding-window counters of the threat signals; `note_*` return the signal's name when
    its threshold is crossed (once per window per key), else None.

    Key unwraps are judged against the token's own baseline: the unwraps of its earlier
    windows, smoothed; a window counts as a spike when it exceeds both `signal_unwraps` and
    `signal_unwrap_factor` times that baseline, so a serving fleet that always loads many
    models is not flagged for doing what it always does, and a token that suddenly does is."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._models: dict[str, deque[tuple[float, str]]] = defaultdict(deque)
        # Per token, how many reads of each model the deque holds (a read is O(1), not O(window)).
        self._model_counts: dict[str, Counter[str]] = defaultdict(Counter)
        self._refusals: dict[str, deque[float]] = defaultdict(deque)
        self._unwraps: dict[str, _UnwrapWindow] = {}
        self._raised: dict[tuple[str, str], float] = {}

    @property
    def window(self) -> float:
        return self.settings.signal_window_seconds

    def _once(self, kind: str, key: str, now: float) -> str | None:
        last = self._raised.get((kind, key))
        if last is not None and now - last < self.window:
            return None
        if len(self._raised) > 10_000:
            # Forget signals older than a window: they no longer silence anything.
            self._raised = {k: t for k, t in self._raised.items() if now - t < self.window}
        self._raised[(kind, key)] = now
        return kind

    def note_read(self, token: str, model: str, *, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            seen, counts = self._models[token], self._model_counts[token]
            seen.append((now, model))
            counts[model] += 1
            while seen and now - seen[0][0] > self.window:
                _t, old = seen.popleft()
                counts[old] -= 1
                if not counts[old]:
                    del counts[old]
            if len(counts) > self.settings.signal_distinct_models:
                return self._once("many-models", token, now)
        return None

    def note_refusal(self, client: str, *, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._refusals[client]
            times.append(now)
            while times and now - times[0] > self.window:
                times.popleft()
            if len(self._refusals) > 10_000:
                # Addresses whose refusals all aged out are forgotten (bounded memory).
                for address in [a for a, t in self._refusals.items() if not t]:
                    del self._refusals[address]
            if len(times) > self.settings.signal_refusals:
                return self._once("repeated-refusals", client, now)
        return None

    def note_unwraps(self, token: str, count: int, *, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            w = self._unwraps.setdefault(token, _UnwrapWindow(now))
            while now - w.start >= self.window:
                # Close the window: it joins the baseline (a window with no use counts as 0).
                w.baseline = w.count if w.baseline is None else 0.7 * w.baseline + 0.3 * w.count
                w.start, w.count = w.start + self.window, 0.0
                if now - w.start >= 20 * self.window:
                    # Idle for long: 20 empty windows more would bring the baseline to ~0.
                    w.start, w.baseline = now, 0.0
            w.count += count
            limit = max(
                float(self.settings.signal_unwraps),
                self.settings.signal_unwrap_factor * (w.baseline or 0.0),
            )
            if w.count > limit:
                return self._once("unwrap-spike", token, now)
        return None
