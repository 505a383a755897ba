"""Each region's health as this process sees it: its recent read latencies (which give its latency
budget), the budgets it missed (a circuit breaker), and its outages.

A read that a region has not answered within its budget (three times its recent p95, at least
`hedge_after_seconds`) is hedged to the next region. A region that misses its budget three times
in a row is *degraded* for `degraded_seconds`: read last, and when the time is up it is tried
again first, where a single miss degrades it again (a half-open breaker). A region whose request
failed (refused, reset, timed out) is *down* for a minute: read last and skipped by writes, which
record their copies there as pending instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from registry.errors import StoreTimeoutError
from registry.storage.deadline import DeadlineSettings

DOWN = "down"
HUNG = "hung"
DEGRADED = "degraded"
# A region that failed is skipped for this long: a pull pays a lost region's time-out once, not
# once per range.
DOWN_FOR = 60.0
MISSES_TO_DEGRADE = 3
_OUTCOMES = 10  # the recent reads among which misses are counted
_SAMPLES = 64
_BUDGET_FACTOR = 3.0


@dataclass(frozen=True)
class Condition:
    """Why a region is read last: `down` (a request failed), `hung` (one timed out) or
    `degraded` (it kept missing its latency budget), since when and until when."""

    state: str
    detail: str
    since: float
    until: float

    def describe(self) -> str:
        """The detail a read report records ("unreachable: ..." or "hung: ...")."""
        kind = "unreachable" if self.state == DOWN else "hung"
        return f"{kind}: {self.detail}"


def outage(error: Exception) -> str:
    """What a read report records of a region that failed: "hung: ..." when it did not answer
    in time, "unreachable: ..." otherwise (both mean: check the copy again later)."""
    kind = "hung" if isinstance(error, StoreTimeoutError) else "unreachable"
    return f"{kind}: {error}"


class RegionHealth:
    """Health of named regions (and of their KMS endpoints, under other keys); thread-safe."""

    def __init__(self, deadlines: DeadlineSettings | None = None) -> None:
        self.deadlines = deadlines or DeadlineSettings()
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = {}
        self._outcomes: dict[str, deque[bool]] = {}  # recent reads: True for a miss
        self._last_miss: dict[str, float] = {}
        self._conditions: dict[str, Condition] = {}
        self._probing: set[str] = set()

    def budget(self, key: str) -> float:
        """Seconds a read of this region may take before it is hedged: three times its recent
        p95, but never more than three times the fastest region's (a region far slower than
        its peers is worth asking around, whatever its own history), at least the floor."""
        floor = self.deadlines.hedge_after_seconds
        with self._lock:
            own = _p95(self._samples.get(key, ()))
            others = [p for samples in self._samples.values() if (p := _p95(samples)) is not None]
        if own is None:
            return floor
        budget = _BUDGET_FACTOR * min([own, *others])
        return min(max(floor, budget), self.deadlines.request_seconds)

    def served(self, key: str, seconds: float) -> None:
        """A read of this region completed in `seconds`."""
        budget = self.budget(key)
        with self._lock:
            self._samples.setdefault(key, deque(maxlen=_SAMPLES)).append(seconds)
            if seconds <= budget:
                self._outcome(key, missed=False)
                self._probing.discard(key)
                condition = self._conditions.get(key)
                if condition is not None and condition.state == DEGRADED:
                    del self._conditions[key]

    def missed(self, key: str, budget: float) -> None:
        """A read of this region was not answered within `budget` seconds."""
        now = time.monotonic()
        with self._lock:
            self._last_miss[key] = now
            misses = self._outcome(key, missed=True)
            if misses >= MISSES_TO_DEGRADE or key in self._probing:
                self._probing.discard(key)
                if key not in self._conditions:
                    self._conditions[key] = Condition(
                        DEGRADED,
                        f"{misses} of its last reads unanswered within their {budget:.2f} s budget",
                        now,
                        now + self.deadlines.degraded_seconds,
                    )

    def _outcome(self, key: str, *, missed: bool) -> int:
        """Record a read's outcome; the misses among the recent ones (the lock is held)."""
        outcomes = self._outcomes.setdefault(key, deque(maxlen=_OUTCOMES))
        outcomes.append(missed)
        return sum(outcomes)

    def failed(self, key: str, error: Exception) -> None:
        """A request to this region failed: read last and skipped by writes for a while."""
        now = time.monotonic()
        state = HUNG if isinstance(error, StoreTimeoutError) else DOWN
        with self._lock:
            self._conditions[key] = Condition(state, str(error), now, now + DOWN_FOR)

    def recovered(self, key: str) -> None:
        with self._lock:
            self._conditions.pop(key, None)
            self._outcomes.pop(key, None)
            self._probing.discard(key)

    def condition(self, key: str) -> Condition | None:
        """Why the region is read last now, or None. A condition whose time is up is dropped,
        and a degraded region's next miss degrades it again at once (it is being probed)."""
        with self._lock:
            condition = self._conditions.get(key)
            if condition is None:
                return None
            if condition.until < time.monotonic():
                del self._conditions[key]
                if condition.state == DEGRADED:
                    self._probing.add(key)
                    self._outcomes.pop(key, None)
                return None
            return condition

    def suspect(self, key: str) -> str | None:
        """Why the region should not be waited for now (a condition, or a read that missed its
        budget within the last `degraded_seconds`), or None."""
        condition = self.condition(key)
        if condition is not None:
            return condition.describe()
        with self._lock:
            last = self._last_miss.get(key)
            misses = sum(self._outcomes.get(key, ()))
        if last is None or not misses or time.monotonic() - last > self.deadlines.degraded_seconds:
            return None
        return f"hung: {misses} recent reads missed their latency budget"

    def unavailable(self, key: str) -> Condition | None:
        """A condition that writes skip the region for: it failed (down or hung), not merely
        slow."""
        condition = self.condition(key)
        return condition if condition is not None and condition.state != DEGRADED else None


def _p95(samples: Iterable[float]) -> float | None:
    ordered = sorted(samples)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
