"""Per-token rate limits (a token bucket each) and the threat signals the API watches: many
distinct models read in a short window, repeated 401/403 from one address, key unwraps far
above a token's usual rate. The thresholds are `[api]` settings (registry.config.ApiSettings).

What they count is kept by a `Tally`: this process's alone, or, with `[api] shared_state`, the
server fleet's, so N processes enforce one limit per token and raise each signal once per window
across them (`registry.api.tally` says how the counts meet; docs/operations.md, "Limits and
signals across processes", what a fleet may let through beyond one limit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from registry.api.tally import Tally
from registry.config import ApiSettings
from registry.errors import RateLimitedError, RegistryError

# Rate counts only tell the other processes what was spent lately: two slots of this length.
RATE_SLOT = 2.0
SIGNAL_SLOTS = 10  # a signal window is counted in tenths (the oldest counted whole)
BASELINE_WINDOWS = 20  # earlier windows a token's unwrap baseline is drawn from
# Claims a signal for a window across the fleet: (kind, key, Unix time, window) -> whether ours.
Claim = Callable[[str, str, float, float], bool]


@dataclass
class _Bucket:
    tokens: float
    last: float  # monotonic time of `tokens`
    spent: float = 0.0  # taken here since the last swap
    base: float = 0.0  # tokens at the last swap: what this process may take a share of
    synced: float = 0.0  # monotonic time of the last swap


class RateLimiter:
    """A token bucket per key: `check` takes one request or raises RateLimitedError with the
    seconds until one is available.

    Shared across processes, each process's bucket is a copy of the fleet's: it also pays for
    what the other processes took (learnt at each swap), and between two swaps it takes at most
    its share (1 / the live processes) of what the bucket held at the last swap and of what
    refills since, so a burst spread over N processes is not let through N times."""

    def __init__(
        self, rate: float, burst: int, *, name: str = "api", tally: Tally | None = None
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.kind = f"rate-{name}"
        self.tally = tally
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        if tally is not None:
            tally.add_kind(self.kind, slot=RATE_SLOT, keep=2, listener=self._settle)

    def check(self, key: str) -> None:
        now = time.monotonic()
        active = self.tally.active if self.tally is not None else 1
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(self.burst, now, base=self.burst, synced=now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.last) * self.rate)
            bucket.last = now
            if bucket.tokens < 1.0:
                self._refuse((1.0 - bucket.tokens) / self.rate)
            if active > 1:
                share = (max(bucket.base, 0.0) + (now - bucket.synced) * self.rate) / active
                if bucket.spent + 1.0 > max(1.0, share):
                    # This process's share is spent until the next swap tells what is left.
                    self._refuse(max(self.tally.interval if self.tally else 1.0, 1.0 / self.rate))
            bucket.tokens -= 1.0
            bucket.spent += 1.0
        if self.tally is not None and self.tally.shared:
            # What the other processes must pay for (alone, the bucket is the whole count).
            self.tally.count(self.kind, key, "", time.time())

    @staticmethod
    def _refuse(wait: float) -> NoReturn:
        raise RateLimitedError(
            "too many requests for this token", retry_after=wait, hint=f"retry after {wait:.1f} s"
        )

    def _settle(self, others: dict[str, int]) -> None:
        """After a swap: pay for what the other processes took, and start a new share. A full,
        idle bucket is forgotten (a new one is the same)."""
        now = time.monotonic()
        with self._lock:
            for key, bucket in list(self._buckets.items()):
                tokens = min(float(self.burst), bucket.tokens + (now - bucket.last) * self.rate)
                # In debt at most one burst: what others took long ago has refilled since.
                tokens = max(-float(self.burst), tokens - others.get(key, 0))
                if tokens >= self.burst and not others.get(key):
                    del self._buckets[key]
                    continue
                bucket.tokens, bucket.last = tokens, now
                bucket.spent, bucket.base, bucket.synced = 0.0, tokens, now


@dataclass(frozen=True)
class Signal:
    """A threat signal crossed: its kind, whose (a token's id, a client's address), and the
    count that crossed it (the fleet's, in the window: distinct models, refusals, unwraps)."""

    kind: str
    key: str
    count: int

    @property
    def detail(self) -> str:
        if self.kind == "many-models":
            return f"token {self.key} read {self.count} distinct models in this window"
        if self.kind == "unwrap-spike":
            return f"token {self.key} unwrapped {self.count} keys in this window"
        return f"{self.count} 401/403 answers to client {self.key} in this window"


class Watch:
    """The threat signals, counted in slots of a tenth of `signal_window_seconds`; `note_*`
    return the Signal when its threshold is crossed (once per window per key, across the fleet
    when counts are shared), else None. A threshold the other processes' counts cross, learnt
    at a swap, is raised then, through `on_signal`.

    Key unwraps are judged against the token's own baseline: the unwraps of its earlier
    windows, smoothed; a window counts as a spike when it exceeds both `signal_unwraps` and
    `signal_unwrap_factor` times that baseline, so a serving fleet that always loads many
    models is not flagged for doing what it always does, and a token that suddenly does is.
    Unwraps are counted in whole windows (the baseline's unit), the other two sliding."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        tally: Tally | None = None,
        claim: Claim | None = None,
        on_signal: Callable[[Signal], None] | None = None,
    ) -> None:
        self.settings = settings
        self.tally = tally if tally is not None else Tally()
        self._claim = claim
        self._on_signal = on_signal
        self._lock = threading.Lock()
        self._raised: dict[tuple[str, str], float] = {}
        tenth = self.window / SIGNAL_SLOTS
        checks = {"read": self._reads, "refusal": self._refusals, "unwrap": self._unwraps}
        for kind, slot, keep in (
            ("read", tenth, SIGNAL_SLOTS + 1),
            ("refusal", tenth, SIGNAL_SLOTS + 1),
            ("unwrap", self.window, BASELINE_WINDOWS + 1),
        ):
            self.tally.add_kind(kind, slot=slot, keep=keep, listener=self._swapped(checks[kind]))

    def _swapped(
        self, check: Callable[[str, float], Signal | None]
    ) -> Callable[[dict[str, int]], None]:
        def recheck(others: dict[str, int]) -> None:
            now = time.time()
            for key in others:
                signal = check(key, now)
                if signal is not None and self._on_signal is not None:
                    self._on_signal(signal)

        return recheck

    @property
    def window(self) -> float:
        return self.settings.signal_window_seconds

    def _once(self, kind: str, key: str, now: float, count: int) -> Signal | None:
        with self._lock:
            last = self._raised.get((kind, key))
            if last is not None and now - last < self.window:
                return None
            if len(self._raised) > 10_000:
                # Forget signals older than a window: they no longer silence anything.
                self._raised = {k: t for k, t in self._raised.items() if now - t < self.window}
            self._raised[(kind, key)] = now
        if self._claim is not None and self.tally.up:
            try:
                if not self._claim(kind, key, now, self.window):
                    return None  # another process raised it in this window
            except RegistryError:
                pass  # the store is down: this process raises what it sees, as alone
        return Signal(kind, key, count)

    def note_read(self, token: str, model: str, *, now: float | None = None) -> Signal | None:
        now = time.time() if now is None else now
        if not self.tally.count("read", token, model, now):
            return None  # no model new to the window: the distinct count did not grow
        return self._reads(token, now)

    def _reads(self, token: str, now: float) -> Signal | None:
        distinct = self.tally.distinct("read", token, since=self.tally.oldest("read", now))
        if distinct > self.settings.signal_distinct_models:
            return self._once("many-models", token, now, distinct)
        return None

    def note_refusal(self, client: str, *, now: float | None = None) -> Signal | None:
        now = time.time() if now is None else now
        self.tally.count("refusal", client, "", now)
        return self._refusals(client, now)

    def _refusals(self, client: str, now: float) -> Signal | None:
        refusals = self.tally.total("refusal", client, since=self.tally.oldest("refusal", now))
        if refusals > self.settings.signal_refusals:
            return self._once("repeated-refusals", client, now, refusals)
        return None

    def note_unwraps(self, token: str, count: int, *, now: float | None = None) -> Signal | None:
        now = time.time() if now is None else now
        self.tally.count("unwrap", token, "", now, count)
        return self._unwraps(token, now)

    def _unwraps(self, token: str, now: float) -> Signal | None:
        windows = self.tally.per_slot("unwrap", token)
        current = self.tally.slot("unwrap", now)
        limit = max(
            float(self.settings.signal_unwraps),
            self.settings.signal_unwrap_factor * _baseline(windows, current),
        )
        if windows.get(current, 0) > limit:
            return self._once("unwrap-spike", token, now, windows[current])
        return None


def _baseline(windows: dict[int, int], current: int) -> float:
    """A token's usual unwraps per window: its earlier windows (an empty one counts 0),
    smoothed, from the first it used; 0 after BASELINE_WINDOWS idle ones (judged afresh)."""
    earlier = [
        s for s, count in windows.items() if count and current - BASELINE_WINDOWS <= s < current
    ]
    if not earlier:
        return 0.0
    baseline: float | None = None
    for slot in range(min(earlier), current):
        count = windows.get(slot, 0)
        baseline = count if baseline is None else 0.7 * baseline + 0.3 * count
    return baseline or 0.0
