"""The regions of a replica set and what they share: the region list and its lifecycle, each
region's claim check (is it this registry's store), its down and health marks, and the states a
region's copy of an object can be in."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from registry.blobstore import BlobStore
from registry.errors import KmsUnreachableError, StorageError, StoreTimeoutError
from registry.replication.health import Condition, RegionHealth
from registry.storage import deadline
from registry.storage.deadline import DeadlineSettings, carried

VERIFIED = "verified"
PENDING = "pending"
BAD = "bad"


@dataclass(frozen=True)
class Region:
    name: str
    store: BlobStore


@dataclass(frozen=True)
class Outcome:
    """What one region holds of an object after a write, check or repair."""

    region: str
    state: str
    checksum: str | None = None
    detail: str = ""
    uploaded: bool = False


class Regions:
    """The regions of a registry, in read preference order: the core every job of a
    `ReplicaSet` builds on."""

    def __init__(
        self,
        regions: Sequence[Region],
        *,
        workers: int = 4,
        deadlines: DeadlineSettings | None = None,
        check_claim: Callable[[Region], None] | None = None,
    ) -> None:
        """`check_claim(region)` raises unless the region is this registry's store: it runs
        once per region, in the background, before the region's first use."""
        if not regions:
            raise ValueError("a replica set needs at least one region")
        self.regions = tuple(regions)
        self.workers = workers
        self.deadlines = deadlines or DeadlineSettings()
        self.health = RegionHealth(self.deadlines)
        # Reads are hedged only where a request can hang: a local directory answers or fails.
        self.hedging = len(self.regions) > 1 and any(
            r.store.driver.latency_bound for r in self.regions
        )
        self._check_claim = check_claim
        self._claims: dict[str, Future[None]] = {}
        self._claims_lock = threading.Lock()

    @property
    def primary(self) -> BlobStore:
        return self.regions[0].store

    def close(self) -> None:
        for region in self.regions:
            region.store.driver.close()

    # -- region health -----------------------------------------------------------------------

    def mark_down(self, region: Region, error: Exception) -> None:
        self.health.failed(region.name, error)

    def mark_up(self, region: Region) -> None:
        self.health.recovered(region.name)

    def is_down(self, region: Region) -> bool:
        """Whether a request to the region failed a moment ago (writes skip it)."""
        return self.health.unavailable(region.name) is not None

    def expect_writes(self) -> None:
        """Writes to the regions follow soon: a driver that prepares for them in the
        background (S3: the probe of the server's write-once behaviour) starts now, so that
        the first writes do not wait for it or take a longer path meanwhile."""
        for region in self.regions:
            prepare = getattr(region.store.driver, "expect_writes", None)
            if prepare is not None and not self.is_down(region):
                prepare()

    def condition(self, region: Region) -> Condition | None:
        """Why the region is read last now (down, hung or degraded), or None."""
        return self.health.condition(region.name)

    def _kms_down(self, region: Region) -> bool:
        return self.health.unavailable(f"kms:{region.name}") is not None

    def _mark_kms_down(self, region: Region, error: Exception) -> None:
        self.health.failed(f"kms:{region.name}", error)

    # -- claims --------------------------------------------------------------------------------

    def start_claims(self) -> None:
        """Check in the background, once, that every region is this registry's store: reads
        start at once and wait only for the regions they use."""
        if self._check_claim is None:
            return
        check = self._check_claim
        with self._claims_lock:
            for region in self.regions:
                if region.name not in self._claims:
                    self._claims[region.name] = deadline.submit(functools.partial(check, region))

    def claim(self, region: Region, *, timeout: float | None = None) -> None:
        """Wait for the region's claim check (started if it was not): its error is raised, a
        `StoreTimeoutError` after `timeout` (default: a request's deadline). A check that
        failed for want of an answer is made again once the region's time out is over (at once
        when it is the only region); until then `ClaimPendingError` says so, without marking
        the region down again."""
        self.start_claims()
        with self._claims_lock:
            future = self._claims.get(region.name)
            if future is not None and future.done() and _transient(future.exception()):
                if (
                    len(self.regions) == 1 or self.health.unavailable(region.name) is None
                ) and self._check_claim is not None:
                    future = deadline.submit(functools.partial(self._check_claim, region))
                    self._claims[region.name] = future
                else:
                    raise ClaimPendingError(
                        f"region {region.name} did not answer its claim check a moment ago "
                        f"({future.exception()}); it is asked again once its time out is over"
                    )
        if future is None:
            return
        limit = self.deadlines.request_seconds if timeout is None else timeout
        wait([future], timeout=limit)
        if not future.done():
            raise StoreTimeoutError(
                f"region {region.name}: its registry marker was not read within {limit:g} s"
            )
        future.result()

    def settle_claims(self) -> dict[str, str | None]:
        """Every region's claim check, waited for together: all within a request's deadline,
        and once one region answered, the others within its latency budget more (a hung region
        then costs a budget, not a deadline). Returns, per region, None when it is this
        registry's store, else why not (not answered yet: counted as a missed budget). A store
        that is not this registry's raises."""
        self.start_claims()
        with self._claims_lock:
            futures = dict(self._claims)
        started = time.monotonic()
        until = started + self.deadlines.request_seconds
        graced = False
        while True:
            pending = [future for future in futures.values() if not future.done()]
            now = time.monotonic()
            if not pending or now >= until:
                break
            if not graced:
                answered = [
                    name for name, f in futures.items() if f.done() and f.exception() is None
                ]
                if answered:
                    graced = True
                    until = min(until, now + self.health.budget(answered[0]))
            wait(pending, timeout=max(0.0, until - now), return_when=FIRST_COMPLETED)
        outcome: dict[str, str | None] = {}
        for region in self.regions:
            try:
                self.claim(region, timeout=0)
                outcome[region.name] = None
            except StoreTimeoutError:
                self.health.missed(region.name, self.deadlines.hedge_after_seconds)
                outcome[region.name] = (
                    f"hung: its registry marker was not read within "
                    f"{time.monotonic() - started:.1f} s"
                )
            except StorageError as error:
                outcome[region.name] = str(error)
        return outcome

    def _stat_available(self, region: Region, name: str) -> object:
        """The object's info in a region that is up and claimed; a region that failed a moment
        ago is not asked again (its copy is recorded pending and `replicate` writes it)."""
        condition = self.health.unavailable(region.name)
        if condition is not None:
            ago = time.monotonic() - condition.since
            raise _SkippedError(f"{condition.detail} ({ago:.0f} s ago; not asked again yet)")
        self.claim(region)
        return region.store.driver.stat(name)

    def _each(
        self, regions: Sequence[Region], work: Callable[[Region], object]
    ) -> list[object | BaseException]:
        """`work` on every region at once; a region's StorageError is its result."""

        def guarded(region: Region) -> object:
            try:
                return work(region)
            except StorageError as error:
                return error

        if len(regions) == 1:
            return [guarded(regions[0])]
        with ThreadPoolExecutor(len(regions), thread_name_prefix="region") as pool:
            # In the caller's context: key unwraps on these threads are the caller's.
            futures = [pool.submit(carried(functools.partial(guarded, r))) for r in regions]
            return [future.result() for future in futures]


class _SkippedError(StorageError):
    """A region left out because it failed a moment ago (not a new failure)."""


class ClaimPendingError(StorageError):
    """A region whose claim check failed a moment ago, not asked again yet (not a new
    failure: it must not extend the region's time out)."""


def _transient(error: BaseException | None) -> bool:
    """A claim check's failure that may pass (no answer, KMS away), not a wrong store."""
    return isinstance(error, StorageError | KmsUnreachableError)


def fresh_failure(error: BaseException) -> bool:
    """Whether an error is news about a region (marks it down), not a known outage again."""
    return not isinstance(error, _SkippedError | ClaimPendingError)
