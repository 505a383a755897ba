"""The counts behind the rate limits and threat signals (`registry.api.limits`), per kind, key,
item and time slot: this process's, and, where `[api] shared_state` shares them, the whole
server fleet's as of the last swap.

Nothing on the request path waits for the shared store: a request counts here, in memory, and a
timer swaps (`Tally.swap`, every `[api] shared_sync_seconds`) what this process counted since
the last swap for the fleet's counts, in one round trip (`Registry.exchange_counts`). A decision
takes the fleet's count at the last swap plus this process's since (docs/operations.md, "Limits
and signals across processes", for what that lets through). When the store does not answer,
what was not sent is kept and sent at the next swap that succeeds; until then each process
limits alone (logged once, `model_registry_shared_state_up` 0).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from registry.errors import RegistryError
from registry.records import CountCell, CountSpan

Exchange = Callable[[Mapping[CountCell, int], Mapping[str, CountSpan]], dict[CountCell, int]]
# After a swap: per key, what the other processes counted since the previous swap.
Listener = Callable[[dict[str, int]], None]
MEMBER = "member"  # each swap counts one for its process: the fleet's live processes
_MAX_SERIES = 50_000  # beyond this many keys, a count prunes what aged out (bounded memory)
log = logging.getLogger("model_registry.api")


@dataclass(frozen=True)
class Kind:
    """How one kind of count is kept: slots of `slot` seconds, the newest `keep` of them."""

    slot: float
    keep: int
    listener: Listener | None = None


@dataclass
class Series:
    """The counts of one kind and key: (item, slot) -> [the fleet's as of the last swap (with
    what this process sent), this process's not sent yet]."""

    cells: dict[tuple[str, int], list[int]] = field(default_factory=dict)


class Tally:
    """Counts kept in slots, swapped with the fleet's when `exchange` is given (else this
    process's alone); see the module's docstring."""

    def __init__(
        self,
        *,
        interval: float = 0.5,
        exchange: Exchange | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.interval = interval
        self.shared = exchange is not None
        self.up = True
        self.swaps = 0  # swaps that succeeded
        self.process = uuid.uuid4().hex[:12]
        self._exchange = exchange
        self._on_state = on_state
        self._lock = threading.Lock()
        self._kinds: dict[str, Kind] = {}
        self._series: dict[tuple[str, str], Series] = {}
        self._dirty: set[tuple[str, str]] = set()  # keys a swap brought new items to
        self._active = 1
        self.add_kind(MEMBER, slot=max(1.0, 4 * interval), keep=2)

    def add_kind(
        self, kind: str, *, slot: float, keep: int, listener: Listener | None = None
    ) -> None:
        self._kinds[kind] = Kind(slot, keep, listener)

    def slot(self, kind: str, now: float) -> int:
        return int(now // self._kinds[kind].slot)

    def oldest(self, kind: str, now: float) -> int:
        """The oldest slot of `kind` that still counts at `now`."""
        return self.slot(kind, now) - self._kinds[kind].keep + 1

    @property
    def active(self) -> int:
        """How many server processes swapped lately (1 while the store does not answer)."""
        return self._active if self.shared and self.up else 1

    def count(self, kind: str, key: str, item: str, now: float, amount: int = 1) -> bool:
        """Count `amount` of `item` for `key` at Unix time `now`; whether `item` is new to
        the key's window (none counted in it before, here or, as of the last swap, anywhere)
        or a swap brought new items since the key was last counted."""
        slot = self.slot(kind, now)
        with self._lock:
            series = self._series.get((kind, key))
            if series is None:
                if len(self._series) >= _MAX_SERIES:
                    self._prune(now)
                series = self._series[(kind, key)] = Series()
            cell = series.cells.get((item, slot))
            if cell is None:
                cell = series.cells[(item, slot)] = [0, 0]
            new = not sum(cell) and not any(
                sum(series.cells.get((item, earlier), ()))
                for earlier in range(slot - self._kinds[kind].keep + 1, slot)
            )
            cell[1 if self.shared else 0] += amount
            if self._dirty and (kind, key) in self._dirty:
                self._dirty.discard((kind, key))
                new = True
            return new

    def total(self, kind: str, key: str, *, since: int) -> int:
        """The count of `key` in slots from `since` on (the fleet's, as of the last swap, and
        this process's since)."""
        with self._lock:
            series = self._series.get((kind, key))
            if series is None:
                return 0
            return sum(sum(c) for (_item, slot), c in series.cells.items() if slot >= since)

    def per_slot(self, kind: str, key: str) -> dict[int, int]:
        with self._lock:
            series = self._series.get((kind, key))
            found: dict[int, int] = {}
            for (_item, slot), cell in series.cells.items() if series else ():
                found[slot] = found.get(slot, 0) + sum(cell)
            return found

    def distinct(self, kind: str, key: str, *, since: int) -> int:
        """How many items `key` has a count of in slots from `since` on."""
        with self._lock:
            return self._distinct(kind, key, since)

    def _distinct(self, kind: str, key: str, since: int) -> int:
        series = self._series.get((kind, key))
        if series is None:
            return 0
        return len(
            {item for (item, slot), c in series.cells.items() if slot >= since and sum(c) > 0}
        )

    def swap(self, now: float | None = None) -> bool:
        """Prune what aged out; where counts are shared, send this process's since the last
        swap and take the fleet's. False when the store did not answer (nothing was lost)."""
        now = time.time() if now is None else now
        with self._lock:
            self._prune(now)
            # A process with nothing to send swaps all the same: it is one of the live
            # processes, whose shares of a limit a burst through all of them must not exceed.
            alone = self._exchange is None
        if alone:
            self._tell({})  # the limiters forget their idle buckets
            return True
        with self._lock:
            deltas: dict[CountCell, int] = {}
            for (kind, key), series in self._series.items():
                for (item, slot), cell in series.cells.items():
                    if cell[1]:
                        deltas[(kind, key, item, slot)] = cell[1]
                        cell[0], cell[1] = cell[0] + cell[1], 0
            deltas[(MEMBER, "", self.process, self.slot(MEMBER, now))] = 1
            wanted = self._wanted(now)
        try:
            assert self._exchange is not None
            fleet = self._exchange(deltas, wanted)
        except RegistryError as error:  # the store did not answer: the counts wait
            self._unsent(deltas)
            self._state(False, error)
            return False
        with self._lock:
            others = self._merge(fleet, wanted)
            self._active = max(1, self._distinct(MEMBER, "", self.oldest(MEMBER, now)))
        self._tell(others)
        self._state(True, None)
        self.swaps += 1
        return True

    def _tell(self, others: dict[str, dict[str, int]]) -> None:
        for kind, spec in list(self._kinds.items()):
            if spec.listener is not None:
                spec.listener(others.get(kind, {}))

    def _wanted(self, now: float) -> dict[str, CountSpan]:
        keys: dict[str, list[str]] = {kind: [] for kind in self._kinds}
        for kind, key in self._series:
            keys[kind].append(key)
        keys[MEMBER] = [""]
        return {
            kind: CountSpan(tuple(keys[kind]), self.oldest(kind, now), spec.slot * spec.keep)
            for kind, spec in self._kinds.items()
        }

    def _merge(
        self, fleet: dict[CountCell, int], wanted: Mapping[str, CountSpan]
    ) -> dict[str, dict[str, int]]:
        """Take the fleet's counts; per kind and key, what the others counted since the
        previous swap."""
        by_key: dict[tuple[str, str], dict[tuple[str, int], int]] = {}
        for (kind, key, item, slot), value in fleet.items():
            by_key.setdefault((kind, key), {})[(item, slot)] = value
        others: dict[str, dict[str, int]] = {}
        for kind, span in wanted.items():
            for key in span.keys:
                counts = by_key.get((kind, key), {})
                series = self._series.setdefault((kind, key), Series())
                added = 0
                for place, cell in series.cells.items():
                    value = counts.pop(place, 0)
                    added += value - cell[0]
                    cell[0] = value
                for place, value in counts.items():
                    series.cells[place] = [value, 0]
                    added += value
                if counts:
                    self._dirty.add((kind, key))
                if added > 0:
                    others.setdefault(kind, {})[key] = added
        return others

    def _unsent(self, deltas: Mapping[CountCell, int]) -> None:
        """What a failed swap did not send: counted again as this process's own."""
        with self._lock:
            for (kind, key, item, slot), amount in deltas.items():
                series = self._series.get((kind, key))
                cell = series.cells.get((item, slot)) if series else None
                if cell is not None and kind != MEMBER:
                    cell[0] -= amount
                    cell[1] += amount

    def _state(self, up: bool, error: RegistryError | None) -> None:
        if up != self.up:
            if error is not None:
                log.warning(
                    "shared limits unavailable, each server process limits alone until they "
                    "answer: %s",
                    error.message,
                )
            else:
                log.warning("shared limits available again: the fleet's limits apply")
        self.up = up
        if self._on_state is not None:
            self._on_state(up)

    def _prune(self, now: float) -> None:
        """Forget the slots that no longer count, and the keys left with none."""
        oldest = {kind: self.oldest(kind, now) for kind in self._kinds}
        for (kind, key), series in list(self._series.items()):
            bound = oldest[kind]
            stale = [place for place in series.cells if place[1] < bound]
            for place in stale:
                del series.cells[place]
            if not series.cells:
                del self._series[(kind, key)]
                self._dirty.discard((kind, key))

    def __len__(self) -> int:
        """How many keys hold counts (what memory the counts take)."""
        return len(self._series)
