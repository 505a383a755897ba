"""Copies of the store in several regions: written together, read back, read with fail-over,
and repaired from a good copy. One `BlobStore` per region (its driver and its key provider).

Every region holds byte-identical ciphertext of an object: it is sealed once and the same bytes go
to every region, and a region that lacks an object (or holds a damaged one) gets a copy of another
region's bytes, authenticated chunk by chunk on the way. One data key therefore opens every copy,
each region keeps that key wrapped by its own key-encryption key (its KMS key), and a range one
region cannot serve can be read from the next. A copy counts as verified only after it was read
back and its ciphertext checksum (BLAKE3 of the stored bytes) matched.

A region that is down or hung costs little: reads of remote regions are hedged (a range not
served within the region's latency budget is asked of the next region too, the first good
answer wins), a region that keeps missing its budget is read last for a while
(`registry.health`), and writes skip a region that failed and record its copies as pending. A
region read around is reported in the read's `ReadReport`, whether it failed mid-way or was
already known to be down.
"""

from __future__ import annotations

import functools
import hmac
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import blake3

from registry.blobstore import BlobStore
from registry.crypto import sealed
from registry.crypto.keys import WrappedKey
from registry.digest import Hasher
from registry.errors import (
    IntegrityError,
    KeyAccessError,
    KmsUnreachableError,
    NotFoundError,
    RegistryError,
    StorageError,
    StoreTimeoutError,
)
from registry.health import DEGRADED, Condition, RegionHealth, outage
from registry.storage import deadline
from registry.storage.deadline import DeadlineSettings

VERIFIED = "verified"
PENDING = "pending"
BAD = "bad"
_RANGE = 8 * 1024 * 1024
MAX_SMALL_OBJECT = 64 * 1024 * 1024

Chunks = Iterable[bytes | bytearray | memoryview]
T = TypeVar("T")


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


@dataclass(frozen=True)
class Replicated:
    """An object as the regions hold it: the data key's slots and each region's outcome."""

    kind: str
    digest: str
    object_name: str
    header: sealed.SealedHeader | None
    slots: tuple[WrappedKey, ...]
    outcomes: tuple[Outcome, ...]

    @property
    def uploaded(self) -> bool:
        return any(outcome.uploaded for outcome in self.outcomes)

    @property
    def verified(self) -> list[str]:
        return [o.region for o in self.outcomes if o.state == VERIFIED]


@dataclass(frozen=True)
class _Written:
    """What a fan-out wrote: per target (error, checksum), the sources found damaged on the way,
    and whether the bytes came from a new sealing."""

    results: dict[str, tuple[Exception | None, str | None]]
    bad_sources: dict[str, str]
    sealed: bool


@dataclass
class ReadReport:
    """Copies a read found missing, damaged or unreachable (it was served from another)."""

    bad: dict[tuple[str, str, str], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Reads that lost to a hedge: (kind, digest, region, attempt, when it started).
    _outstanding: list[tuple[str, str, str, Future[Any], float]] = field(
        default_factory=list, repr=False
    )

    def add(self, kind: str, digest: str, region: str, detail: str) -> None:
        with self._lock:
            self.bad.setdefault((kind, digest, region), detail)

    def hedged(
        self, kind: str, digest: str, region: str, attempt: Future[Any], started: float
    ) -> None:
        """A region's read lost to a hedge: a failure it ends with is reported (as the
        failure), and one still unanswered when the read settles is reported as hung."""
        with self._lock:
            self._outstanding.append((kind, digest, region, attempt, started))

    def settle(self) -> None:
        """At the end of a pull or load: every hedged-away read that never answered makes its
        region's copy count as hung (pending), like a read that failed mid-way."""
        now = time.monotonic()
        with self._lock:
            outstanding, self._outstanding = self._outstanding, []
        for kind, digest, region, attempt, started in outstanding:
            if not attempt.done():
                self.add(kind, digest, region, f"hung: no answer after {now - started:.1f} s")


class ReplicaSet:
    """The regions of a registry, in read preference order."""

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

    # -- keys --------------------------------------------------------------------------------

    def unwrap_any(
        self, kind: str, digest: str, *, known: Sequence[WrappedKey], what: str
    ) -> tuple[bytes, dict[str, WrappedKey]]:
        """The data key of an object from the first region whose slot opens it (the catalog's
        copy of the slot first, else the region's own), and the slots seen on the way (by
        key-encryption key id). A KMS that does not answer moves on to the next region; any
        other refusal is raised."""
        by_kek = {slot.kek_id: slot for slot in known}
        seen: dict[str, WrappedKey] = {}
        unreachable: list[KeyAccessError] = []
        deferred: list[tuple[Region, WrappedKey]] = []
        for region in self.regions:
            store = region.store
            slot = next((by_kek[k] for k in store.keys.kek_ids if k in by_kek), None)
            if slot is None and not self.is_down(region):
                try:
                    slot = store.read_slot(kind, digest, what=what)
                except StorageError as error:
                    self.mark_down(region, error)
            if slot is None:
                continue
            seen[slot.kek_id] = slot
            if self._kms_down(region):
                deferred.append((region, slot))
                continue
            try:
                return store.unwrap(kind, digest, slot, what=what), seen
            except KmsUnreachableError as error:
                self._mark_kms_down(region, error)
                unreachable.append(error)
        # A KMS that failed a moment ago is tried last, not never: it may be all there is.
        for region, slot in deferred:
            try:
                return region.store.unwrap(kind, digest, slot, what=what), seen
            except KmsUnreachableError as error:
                unreachable.append(error)
        if unreachable:
            raise unreachable[0]
        owners = sorted(by_kek)
        if owners:
            raise KeyAccessError(
                f"{what}: its data key is wrapped by {', '.join(owners)}, but the configured "
                f"keys are {', '.join(sorted({r.store.keys.kek_id for r in self.regions}))} "
                "(wrong key file)",
                hint="point keys.kek_file at the key file this registry was created with; "
                "after `keys rotate`, restart this process (it read the old config.toml)",
            )
        raise IntegrityError(f"{what}: its key slot is missing from the store", path=what)

    def _choose_key(
        self,
        kind: str,
        digest: str,
        *,
        known: Sequence[WrappedKey],
        reachable: Sequence[Region],
        stored: set[str],
        what: str,
        retired: frozenset[str] = frozenset(),
    ) -> tuple[bytes, dict[str, WrappedKey]]:
        """The data key an object is (or will be) sealed with: an existing slot's, or a new
        one whose slot won the first reachable region (a concurrent push's slot wins there).
        Given the `retired` keys (a push holding the verified file), a stored object whose every
        slot, recorded or in any region, is under a retired key that nothing configured opens
        (an orphan of a process refused after a key rotation, or content only a lost key opened)
        gets a new key: its copies then fail the key check and are sealed anew."""
        try:
            return self.unwrap_any(kind, digest, known=known, what=what)
        except KmsUnreachableError:
            raise
        except (IntegrityError, KeyAccessError) as error:
            # Every slot, recorded or stored, under a retired key: either an orphan of a refused
            # process, or content only a lost key opened (a push of the same file repairs it).
            orphan = (
                bool(retired)
                and all(slot.kek_id in retired for slot in known)
                and len(reachable) == len(self.regions)
                and self._only_retired_slots(kind, digest, retired)
            )
            if isinstance(error, KeyAccessError) and not orphan:
                raise
            if stored and not orphan:
                raise IntegrityError(
                    f"{what}: the stored object's key slot is lost; it cannot be decrypted",
                    hint="restore the slot from a backup of the store or the catalog",
                    path=what,
                ) from None
        context = self.primary.context(kind, digest)
        errors: list[RegistryError] = []
        for region in reachable:
            store = region.store
            try:
                data_key, slot = store.keys.generate(context=context)
                name = store.slot_name(kind, digest, slot.kek_id)
                if store.driver.put_if_absent(name, [slot.to_json()]):
                    return data_key, {slot.kek_id: slot}
                # A concurrent push stored its slot first: its data key is the one that counts.
                existing = store.read_slot(kind, digest, what=what)
                if existing is None:
                    raise StorageError(f"{what}: key slot vanished while it was being written")
                return store.unwrap(kind, digest, existing, what=what), {existing.kek_id: existing}
            except (KmsUnreachableError, StorageError) as error:
                errors.append(error)
        raise StorageError(
            f"{what}: no region could store a new key slot ({'; '.join(map(str, errors))})"
            if errors
            else f"{what}: no region is reachable",
            hint="check the regions (`model-registry regions status`)",
        )

    def _only_retired_slots(self, kind: str, digest: str, retired: frozenset[str]) -> bool:
        """Whether every region's slots of an object are under retired keys (and exist)."""
        found = 0
        for region in self.regions:
            for slot in region.store.stored_slots(kind, digest):
                if slot.kek_id not in retired:
                    return False
                found += 1
        return found > 0

    def _region_slot(
        self, region: Region, kind: str, digest: str, data_key: bytes, slots: dict[str, WrappedKey]
    ) -> WrappedKey:
        """The region's own slot of `data_key`, written when missing; IntegrityError when the
        region already holds a slot of another data key (a concurrent first push elsewhere)."""
        store = region.store
        what = f"{kind} {digest} in {region.name}"
        existing = store.read_slot(kind, digest, what=what)
        if existing is None:
            slot = slots.get(store.keys.kek_id) or store.keys.wrap(
                data_key, context=store.context(kind, digest)
            )
            name = store.slot_name(kind, digest, slot.kek_id)
            if store.driver.put_if_absent(name, [slot.to_json()]):
                slots[slot.kek_id] = slot
                return slot
            existing = store.read_slot(kind, digest, what=what)
            if existing is None:
                raise StorageError(f"{what}: key slot vanished while it was being written")
        if slots.get(existing.kek_id) != existing:
            theirs = store.unwrap(kind, digest, existing, what=what)
            if not hmac.compare_digest(theirs, data_key):
                raise IntegrityError(f"{what}: its key slot holds another data key", path=what)
        slots[existing.kek_id] = existing
        return existing

    def _replace_slot(
        self, region: Region, kind: str, digest: str, data_key: bytes, slots: dict[str, WrappedKey]
    ) -> None:
        """Before a damaged copy is replaced: the region's slot must hold this data key (a
        region that was sealed with another key by a concurrent first push gets it rewritten)."""
        store = region.store
        what = f"{kind} {digest} in {region.name}"
        try:
            existing = store.read_slot(kind, digest, what=what)
            if existing is not None and hmac.compare_digest(
                store.unwrap(kind, digest, existing, what=what), data_key
            ):
                return
        except IntegrityError:
            pass  # a damaged slot is replaced like a damaged object
        slot = slots.get(store.keys.kek_id) or store.keys.wrap(
            data_key, context=store.context(kind, digest)
        )
        store.driver.replace(store.slot_name(kind, digest, slot.kek_id), [slot.to_json()])
        slots[slot.kek_id] = slot

    # -- write, copy, check ------------------------------------------------------------------

    def replicate(
        self,
        kind: str,
        digest: str,
        *,
        what: str,
        known: Sequence[WrappedKey] = (),
        seal: Callable[[bytes], Chunks] | None = None,
        checksum: str | None = None,
        trusted: frozenset[str] = frozenset(),
        repair: bool = False,
        only: frozenset[str] | None = None,
        on_progress: Callable[[int], None] | None = None,
        size: int = 0,
        read_back: bool = True,
        suspect: frozenset[str] = frozenset(),
        retired: frozenset[str] = frozenset(),
    ) -> Replicated:
        """Bring the object to every region (or those in `only`) and report each one's state.

        `seal(data_key)` yields a new sealed object, used when no region holds a good one yet (a
        push, which also replaces damaged copies); otherwise missing copies are copied from a
        good one. `checksum` is the ciphertext
        checksum recorded before; copies in `trusted` regions (verified before) are checked for
        presence and key only, every other copy is read back (unless `read_back` is off: one
        region, where the write's own checks stand in; copies in `suspect` regions, recorded bad
        or pending, are read back whatever `read_back` says). With `repair`, a damaged copy is
        replaced by a good one (a new version where the store keeps versions). A region that
        fails gets a `pending` or `bad` outcome; nothing here raises for one region's failure.
        """
        regions = [r for r in self.regions if only is None or r.name in only]
        name = self.primary.object_name(kind, digest)
        outcomes: dict[str, Outcome] = {}
        stored: set[str] = set()
        reachable: list[Region] = []
        for region, result in zip(
            regions, self._each(regions, lambda r: self._stat_available(r, name)), strict=True
        ):
            if isinstance(result, Exception):
                if fresh_failure(result):
                    self.mark_down(region, result)
                outcomes[region.name] = Outcome(region.name, PENDING, detail=outage(result))
                continue
            reachable.append(region)
            if result is not None:
                stored.add(region.name)
        # Regions outside `only` may hold the copy to start from.
        for region in self.regions:
            if region not in regions and not self.is_down(region):
                try:
                    if region.store.driver.stat(name) is not None:
                        stored.add(region.name)
                except StorageError as error:
                    self.mark_down(region, error)
        data_key, slots = self._choose_key(
            kind,
            digest,
            known=known,
            reachable=reachable,
            stored=stored,
            what=what,
            retired=retired if seal is not None else frozenset(),
        )
        sources: list[Region] = []
        targets: list[Region] = []
        damaged: list[Region] = []
        for region in reachable:
            try:
                self._region_slot(region, kind, digest, data_key, slots)
                if region.name in stored:
                    region.store.check_key(kind, digest, data_key, what=what)
                    region.store.keep_locked(kind, digest)
                    if region.name in trusted:
                        outcomes[region.name] = Outcome(region.name, VERIFIED, checksum)
                    sources.append(region)
                else:
                    targets.append(region)
            except KmsUnreachableError as error:
                outcomes[region.name] = Outcome(region.name, PENDING, detail=str(error))
            except IntegrityError as error:
                outcomes[region.name] = Outcome(region.name, BAD, detail=str(error))
                damaged.append(region)
            except (StorageError, KeyAccessError) as error:
                outcomes[region.name] = Outcome(region.name, PENDING, detail=str(error))
        # Copies elsewhere (outside `only`) can serve as sources too.
        extra_sources = [
            r for r in self.regions if r not in regions and r.name in stored and not self.is_down(r)
        ]
        # Stored copies not yet trusted are read back now: a damaged one is no source.
        for region in [r for r in sources if r.name not in outcomes]:
            if not read_back and region.name not in suspect:
                outcomes[region.name] = Outcome(region.name, VERIFIED, checksum)
                continue
            outcome = self._check(region, kind, digest, data_key, checksum, what=what)
            outcomes[region.name] = outcome
            if outcome.state == VERIFIED:
                checksum = checksum or outcome.checksum
            else:
                sources.remove(region)
                damaged.append(region)
        if repair and sources:
            # Valid copies with other ciphertext (two first pushes raced, or one sealed anew
            # over damage) are made identical to the preferred one: ranges stay interchangeable.
            reference = outcomes[sources[0].name].checksum
            for region in list(sources[1:]):
                if reference and outcomes[region.name].checksum not in (None, reference):
                    sources.remove(region)
                    damaged.append(region)
            checksum = reference or checksum
        if repair or seal is not None:
            # A repair, or a push holding the verified local file: damaged copies are replaced
            # (from a good copy when there is one, else by sealing the file anew).
            targets += damaged
        header: sealed.SealedHeader | None = None
        sealed_now = False
        if targets:
            written = self._write(
                targets,
                kind,
                digest,
                data_key,
                sources=sources + extra_sources,
                seal=seal,
                replace={r.name for r in damaged},
                slots=slots,
                what=what,
                checksums=read_back,
            )
            sealed_now = written.sealed
            for source_name, detail in written.bad_sources.items():
                outcomes[source_name] = Outcome(source_name, BAD, detail=detail)
            for region in targets:
                failure, new_checksum = written.results[region.name]
                if failure is not None:
                    state = BAD if isinstance(failure, IntegrityError) else PENDING
                    outcomes[region.name] = Outcome(region.name, state, detail=str(failure))
                    continue
                # What was written is what must be read back; a copy another push wrote
                # meanwhile is authenticated in full instead.
                if read_back:
                    expected = new_checksum or checksum
                    outcome = self._check(region, kind, digest, data_key, expected, what=what)
                else:
                    outcome = Outcome(region.name, VERIFIED, new_checksum)
                repaired = region in damaged
                outcomes[region.name] = Outcome(
                    region.name,
                    outcome.state,
                    outcome.checksum,
                    (
                        "repaired from a good copy; the damaged version stays locked until it "
                        "expires"
                        if repaired and outcome.state == VERIFIED
                        else outcome.detail
                    ),
                    uploaded=outcome.state == VERIFIED,
                )
                checksum = checksum or outcome.checksum
        if on_progress is not None and not sealed_now:
            on_progress(size)  # sealing reports its own progress; a copy or a reuse does not
        for region in self.regions:
            if region.name in outcomes and outcomes[region.name].state == VERIFIED:
                try:
                    header = region.store.header(kind, digest, what=what)
                    break
                except RegistryError:
                    continue
        # A copy outside `only` found damaged while copying from it is reported too.
        ordered = tuple(outcomes[r.name] for r in self.regions if r.name in outcomes)
        return Replicated(kind, digest, name, header, tuple(slots.values()), ordered)

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
            return list(pool.map(guarded, regions))

    def _write(
        self,
        targets: Sequence[Region],
        kind: str,
        digest: str,
        data_key: bytes,
        *,
        sources: Sequence[Region],
        seal: Callable[[bytes], Chunks] | None,
        replace: set[str],
        slots: dict[str, WrappedKey],
        what: str,
        checksums: bool = True,
    ) -> _Written:
        """Write one stream to every target in parallel: a good copy's bytes (authenticated on
        the way) when a region has one, the next copy when one turns out damaged, a new sealing
        when none is left and `seal` is given. Never raises for a damaged source or a target."""
        name = self.primary.object_name(kind, digest)
        attempts: list[tuple[Region | None, Callable[[], Chunks]]] = [
            (
                source,
                functools.partial(self._authenticated, source, kind, digest, data_key, what=what),
            )
            for source in sources
        ]
        if seal is not None:
            attempts.append((None, functools.partial(seal, data_key)))

        def write(region: Region, chunks: Chunks) -> bool:
            """Whether the region now holds these very bytes."""
            driver = region.store.driver
            if region.name in replace:
                self._replace_slot(region, kind, digest, data_key, slots)
                driver.replace(name, chunks)
                return True
            if driver.put_if_absent(name, chunks):
                return True
            # Written meanwhile by a concurrent push: what counts is that it opens.
            region.store.check_key(kind, digest, data_key, what=what)
            return False

        bad_sources: dict[str, str] = {}
        failure: Exception = IntegrityError(
            f"{what}: no region holds a good copy to copy from", path=what
        )
        for source, stream in attempts:
            try:
                results = self._fan_out(targets, stream, write, checksum=checksums)
                return _Written(results, bad_sources, sealed=source is None)
            except (IntegrityError, StorageError, KeyAccessError) as error:
                if source is None:
                    raise  # the local file changed or cannot be read: the push's own problem
                # Nothing was published (a copy's last bytes are withheld until it all
                # checked), so the next copy can serve every target. Only damage blames the
                # source; an outage says nothing about its copy.
                failure = error
                if isinstance(error, IntegrityError):
                    bad_sources[source.name] = str(error)
                else:
                    self.mark_down(source, error)
        return _Written({r.name: (failure, None) for r in targets}, bad_sources, sealed=False)

    def _fan_out(
        self,
        targets: Sequence[Region],
        stream: Callable[[], Chunks],
        write: Callable[[Region, Chunks], bool],
        *,
        checksum: bool = True,
    ) -> dict[str, tuple[Exception | None, str | None]]:
        """`write` every target from one pass over `stream`; the stream's own errors are
        raised, a target's errors are its result (with the written bytes' checksum when
        `checksum`: hashing costs a push about a tenth of its speed when nothing reads back)."""
        results: dict[str, tuple[Exception | None, str | None]] = {}
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if checksum else None
        source_failed: list[BaseException] = []

        def hashed() -> Iterator[bytes | bytearray | memoryview]:
            try:
                for chunk in stream():
                    if hasher is not None:
                        hasher.update(chunk)
                    yield chunk
            except BaseException as error:
                source_failed.append(error)
                raise

        if len(targets) == 1:
            region = targets[0]
            try:
                ours = write(region, hashed())
                results[region.name] = (None, _hex(hasher) if ours else None)
            except (StorageError, KeyAccessError, IntegrityError) as error:
                if source_failed:
                    raise
                results[region.name] = (error, None)
            return results
        # A region whose writer falls below the slowest acceptable rate (a request's deadline,
        # plus what it took so far at that rate) is dropped, so that one hung region does not
        # hold the others' writes; a writer that takes data in bursts (parts) is not.
        fanout = _Fanout(len(targets), deadlines=self.deadlines)
        futures = [
            deadline.submit(functools.partial(fanout.consume, index, functools.partial(write, r)))
            for index, r in enumerate(targets)
        ]
        try:
            for chunk in hashed():
                fanout.feed(chunk)
            fanout.finish()
        except BaseException as error:
            fanout.fail(error)
            for index, future in enumerate(futures):
                if not fanout.stalled(index):
                    future.exception()
            raise
        for index, (region, future) in enumerate(zip(targets, futures, strict=True)):
            if fanout.stalled(index):
                stalled = StoreTimeoutError(f"{region.name} stopped taking data (a stalled write)")
                # The next objects of this push skip it instead of waiting on it again.
                self.mark_down(region, stalled)
                results[region.name] = (stalled, None)
                continue
            failure = future.exception()
            if failure is None:
                ours = future.result()
                results[region.name] = (None, _hex(hasher) if ours else None)
            elif isinstance(failure, (StorageError, KeyAccessError, IntegrityError)):
                results[region.name] = (failure, None)
            else:
                raise failure
        return results

    def _check(
        self,
        region: Region,
        kind: str,
        digest: str,
        data_key: bytes | Callable[[], bytes],
        expected: str | None,
        *,
        what: str,
    ) -> Outcome:
        """Read a region's copy back: its ciphertext checksum against `expected` (the fast
        path), else, when none is known or it differs, every chunk authenticated (which gives
        the copy's own checksum). A copy that authenticates is good even when its bytes differ
        from the expected ones (a concurrent first push sealed it, or a push sealed anew while
        the other copies were damaged); only one that does not is bad."""
        if expected is not None:
            try:
                actual = self.checksum(region, kind, digest)
            except NotFoundError:
                return Outcome(region.name, BAD, detail="missing")
            except IntegrityError as error:
                return Outcome(region.name, BAD, detail=str(error))
            except StorageError as error:
                self.mark_down(region, error)
                return Outcome(region.name, PENDING, detail=f"unreachable: {error}")
            if actual == expected:
                return Outcome(region.name, VERIFIED, actual)
        # A key that cannot be had says nothing about the copy: that error is the caller's.
        key = data_key() if callable(data_key) else data_key
        try:
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            for chunk in self._authenticated(region, kind, digest, key, what=what):
                hasher.update(chunk)
            return Outcome(region.name, VERIFIED, "blake3:" + hasher.hexdigest())
        except NotFoundError:
            return Outcome(region.name, BAD, detail="missing")
        except IntegrityError as error:
            return Outcome(region.name, BAD, detail=str(error))
        except KmsUnreachableError as error:
            return Outcome(region.name, PENDING, detail=f"key unavailable: {error}")
        except (StorageError, KeyAccessError) as error:
            self.mark_down(region, error)
            return Outcome(region.name, PENDING, detail=f"unreachable: {error}")

    def check(
        self,
        region: Region,
        kind: str,
        digest: str,
        *,
        known: Sequence[WrappedKey],
        checksum: str | None,
        what: str,
    ) -> Outcome:
        """Read one region's copy back (see `_check`); its data key from any region, fetched
        only when the copy has to be authenticated in full."""

        def data_key() -> bytes:
            return self.unwrap_any(kind, digest, known=known, what=what)[0]

        return self._check(region, kind, digest, data_key, checksum, what=what)

    def checksum(self, region: Region, kind: str, digest: str) -> str:
        """BLAKE3 of the copy's stored bytes, read back in parallel ranges."""
        driver = region.store.driver
        name = region.store.object_name(kind, digest)
        info = driver.stat(name)
        if info is None:
            raise NotFoundError(f"{name} is missing in {region.name}")
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for data in _ranges(lambda o, n: driver.get_range(name, o, n), info.size, self.workers):
            hasher.update(data)
        return "blake3:" + hasher.hexdigest()

    def _authenticated(
        self, region: Region, kind: str, digest: str, data_key: bytes, *, what: str
    ) -> Iterator[bytes]:
        """A region's copy as stored bytes, every chunk authenticated (and, for blobs, the whole
        plaintext re-hashed) before the last bytes are released: a damaged copy never spreads."""
        store = region.store
        name = store.object_name(kind, digest)
        driver = store.driver
        header_bytes = driver.get_range(name, 0, sealed.HEADER_SIZE)
        opener = sealed.Opener(data_key, digest, header_bytes, what=what)
        header = opener.header
        info = driver.stat(name)
        if info is None or info.size != header.sealed_size:
            raise IntegrityError(
                f"{what}: the copy in {region.name} has {info.size if info else 0} bytes, "
                f"its header says {header.sealed_size}",
                path=what,
            )
        step = header.chunk_size + sealed.TAG_SIZE
        per_range = max(1, _RANGE // step)
        hasher = Hasher() if kind == "blob" else None

        def fetch(first: int) -> tuple[bytes, list[bytearray]]:
            last = min(first + per_range, header.chunk_count) - 1
            offset, length = header.chunk_range(first, last)
            data = driver.get_range(name, offset, length)
            if len(data) != length:
                raise IntegrityError(f"{what}: the copy in {region.name} is truncated", path=what)
            plain: list[bytearray] = []
            position = 0
            for index in range(first, last + 1):
                size = header.chunk_plain_size(index)
                out = bytearray(size)
                opener.open_chunk(
                    index, memoryview(data)[position : position + size + sealed.TAG_SIZE], out
                )
                position += size + sealed.TAG_SIZE
                plain.append(out)
            return data, plain

        starts = list(range(0, header.chunk_count, per_range))
        pending: deque[Future[tuple[bytes, list[bytearray]]]] = deque()
        held = bytes(header_bytes)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="copy") as pool:
            feed = iter(starts)
            for first in feed:
                pending.append(pool.submit(fetch, first))
                if len(pending) > self.workers:
                    break
            while pending:
                data, plain = pending.popleft().result()
                following = next(feed, None)
                if following is not None:
                    pending.append(pool.submit(fetch, following))
                if hasher is not None:
                    for part in plain:
                        hasher.update(part)
                # One range is always held back, so the last bytes leave only once all checked.
                yield held
                held = data
        if hasher is not None and hasher.digest() != digest:
            raise IntegrityError(f"{what}: the copy in {region.name} has another digest", path=what)
        yield held

    # -- read with fail-over -----------------------------------------------------------------

    def open(
        self,
        kind: str,
        digest: str,
        *,
        known: Sequence[WrappedKey],
        size: int,
        what: str,
        report: ReadReport,
        chunks_per_read: int = 4,
        verify_digest: bool = True,
        on_chunk: Callable[[int, memoryview], None] | None = None,
    ) -> Iterator[memoryview]:
        """Authenticated plaintext chunks (see `sealed.unseal`), each range read from the first
        region that serves it intact; the copies that failed are added to `report`."""
        data_key, _slots = self.unwrap_any(kind, digest, known=known, what=what)
        source = _FailoverSource(self, kind, digest, report, what=what)
        return sealed.unseal(
            source.read_range,
            data_key,
            digest,
            read_into=source.read_into,
            on_chunk=on_chunk,
            expected_size=size,
            workers=self.workers,
            chunks_per_read=chunks_per_read,
            verify_digest=verify_digest,
            what=what,
            on_damage=source.damaged,
        )

    def source(self, kind: str, digest: str, report: ReadReport, *, what: str) -> BlobReader:
        """Read functions over every region's copy of one object (fail-over per range)."""
        return _FailoverSource(self, kind, digest, report, what=what)

    def read_ciphertext(
        self, kind: str, digest: str, offset: int, length: int, *, report: ReadReport
    ) -> bytes:
        """Raw sealed bytes of an object, from the first region that serves the range (the REST
        API hands them to clients that decrypt and authenticate them themselves)."""
        source = _FailoverSource(self, kind, digest, report, what=f"{kind} {digest}")
        return source.read_range(offset, length)

    def read_bytes(
        self, kind: str, digest: str, *, known: Sequence[WrappedKey], what: str, report: ReadReport
    ) -> bytes:
        """The whole plaintext of a small object (a manifest), authenticated, with fail-over
        (a damaged header too: it is read inside `unseal`, where a failure moves on)."""
        data_key, _slots = self.unwrap_any(kind, digest, known=known, what=what)
        source = _FailoverSource(self, kind, digest, report, what=what)
        chunks = sealed.unseal(
            source.read_range,
            data_key,
            digest,
            workers=1,
            verify_digest=False,
            what=what,
            on_damage=source.damaged,
        )
        # The digest bound here is not the plaintext's (a manifest is named by the digest of its
        # canonical form), so the caller verifies content; AEAD still authenticates every chunk.
        parts: list[bytes] = []
        total = 0
        for chunk in chunks:
            total += len(chunk)
            if total > MAX_SMALL_OBJECT:
                raise IntegrityError(f"{what}: implausibly large (over {MAX_SMALL_OBJECT} bytes)")
            parts.append(bytes(chunk))
        return b"".join(parts)


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


class BlobReader(Protocol):
    """Sealed bytes of one stored object, with fail-over between regions."""

    def read_into(self, offset: int, buffer: memoryview, /) -> int: ...

    def damaged(self, offset: int, error: IntegrityError, /) -> bool: ...

    def regions_used(self) -> list[str]: ...


class _FailoverSource:
    """Read functions for `sealed.unseal` over every region's copy of one object: a range comes
    from the first region that serves it; a region that failed is skipped for that range (for
    every range when the object is missing there or the region is unreachable)."""

    def __init__(
        self, replicas: ReplicaSet, kind: str, digest: str, report: ReadReport, *, what: str
    ) -> None:
        self.replicas = replicas
        self.regions = replicas.regions
        self.kind = kind
        self.digest = digest
        self.name = replicas.primary.object_name(kind, digest)
        self.report = report
        self.what = what
        self._lock = threading.Lock()
        self._skip: dict[int, set[int]] = {}
        self._gone: set[int] = set()
        self._served: dict[int, int] = {}

    def _candidates(self, offset: int) -> list[int]:
        with self._lock:
            skip = self._skip.get(offset, set()) | self._gone
        healthy = [
            i
            for i in range(len(self.regions))
            if i not in skip and self.replicas.condition(self.regions[i]) is None
        ]
        # A region read last (down, hung, degraded) is still tried: it may be back, and it may
        # be all there is.
        return healthy + [i for i in range(len(self.regions)) if i not in skip and i not in healthy]

    def _failed(self, index: int, offset: int | None, detail: str, *, gone: bool) -> None:
        region = self.regions[index]
        self.report.add(self.kind, self.digest, region.name, detail)
        with self._lock:
            if gone:
                self._gone.add(index)
            elif offset is not None:
                self._skip.setdefault(offset, set()).add(index)

    def _attempt(self, region: Region, read: Callable[[Region], T]) -> T:
        # A region whose registry marker has not been read yet is not used before it is.
        self.replicas.claim(region)
        return read(region)

    def _read(self, offset: int, read: Callable[[Region], T]) -> T:
        """The first good answer for this range: regions in order, each later one asked when
        the one before failed or (with hedging) missed its latency budget."""
        order = self._candidates(offset)
        errors: list[str] = []
        pending = deque(order)
        running: dict[Future[T], tuple[int, float]] = {}
        health = self.replicas.health
        hedged = self.replicas.hedging and len(order) > 1

        def launch() -> None:
            index = pending.popleft()
            region = self.regions[index]
            running[deadline.submit(functools.partial(self._attempt, region, read))] = (
                index,
                time.monotonic(),
            )

        while pending or running:
            if not hedged:
                index = pending.popleft()
                region = self.regions[index]
                started = time.monotonic()
                try:
                    result = self._attempt(region, read)
                except (NotFoundError, StorageError) as error:
                    errors.append(self._refused(index, offset, error))
                    continue
                return self._won(index, offset, started, result)
            if not running:
                launch()
            newest, started = list(running.values())[-1]
            budget = health.budget(self.regions[newest].name)
            timeout = max(0.0, started + budget - time.monotonic()) if pending else None
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            if not done:
                health.missed(self.regions[newest].name, budget)
                launch()
                continue
            for future in done:
                index, started = running.pop(future)
                try:
                    result = future.result()
                except (NotFoundError, StorageError) as error:
                    errors.append(self._refused(index, offset, error))
                    continue
                for other, (late, other_started) in running.items():
                    other.add_done_callback(functools.partial(self._late, late))
                    self.report.hedged(
                        self.kind, self.digest, self.regions[late].name, other, other_started
                    )
                return self._won(index, offset, started, result)
        if errors and all(e.endswith(": missing") for e in errors):
            raise IntegrityError(
                f"{self.what}: stored object {self.name} is missing", path=self.what
            )
        raise StorageError(
            f"{self.what}: no region could serve it ({'; '.join(errors) or 'none left'})",
            hint="check the regions with `model-registry regions status`",
        )

    def _refused(self, index: int, offset: int, error: Exception) -> str:
        region = self.regions[index]
        if isinstance(error, NotFoundError):
            self._failed(index, offset, "missing", gone=True)
            return f"{region.name}: missing"
        assert isinstance(error, StorageError)
        if fresh_failure(error):
            self.replicas.mark_down(region, error)
        self._failed(index, offset, outage(error), gone=True)
        return f"{region.name}: {error}"

    def _late(self, index: int, future: Future[Any]) -> None:
        """An attempt that lost to a hedge: its failure still says the region is down, and is
        reported for this object like a failure on the read itself."""
        error = future.exception()
        if isinstance(error, StorageError) and not isinstance(error, NotFoundError):
            if fresh_failure(error):
                self.replicas.mark_down(self.regions[index], error)
            self.report.add(self.kind, self.digest, self.regions[index].name, outage(error))

    def _won(self, index: int, offset: int, started: float, result: T) -> T:
        """Record who served a range; regions read around because they are known to be down,
        hung or degraded are reported like regions that failed on this read."""
        self.replicas.health.served(self.regions[index].name, time.monotonic() - started)
        with self._lock:
            self._served[offset] = index
        for other, region in enumerate(self.regions):
            if other == index or other in self._gone:
                continue
            condition = self.replicas.condition(region)
            if condition is not None and (other < index or condition.state != DEGRADED):
                self.report.add(self.kind, self.digest, region.name, condition.describe())
        return result

    def read_range(self, offset: int, length: int) -> bytes:
        return self._read(
            offset, lambda region: region.store.driver.get_range(self.name, offset, length)
        )

    def read_into(self, offset: int, buffer: memoryview) -> int:
        if self.replicas.hedging:
            # Two regions may answer one range: each reads into its own bytes, and only the
            # winner's reach the caller's buffer (a loser may still be writing).
            data = self.read_range(offset, len(buffer))
            buffer[: len(data)] = data
            return len(data)
        return self._read(
            offset, lambda region: region.store.driver.read_into(self.name, offset, buffer)
        )

    def regions_used(self) -> list[str]:
        """The regions that served the ranges read so far, in read preference order."""
        with self._lock:
            served = set(self._served.values())
        return [self.regions[i].name for i in sorted(served)]

    def damaged(self, offset: int, error: IntegrityError) -> bool:
        """A range failed authentication: blame the region that served it and try the next."""
        with self._lock:
            index = self._served.get(offset)
        if index is None:
            return False
        self._failed(index, offset, str(error), gone=False)
        return bool(self._candidates(offset))


class _Fanout:
    """One stream of chunks fed to several writers, each consuming in its own thread; a writer
    that fails drops out without stalling the others, one that falls below the slowest
    acceptable rate is dropped as stalled, and a failing source fails them all."""

    _END = object()

    def __init__(self, count: int, *, depth: int = 8, deadlines: DeadlineSettings) -> None:
        self._queues: list[queue.Queue[object]] = [queue.Queue(depth) for _ in range(count)]
        self._alive = [True] * count
        self._stalled = [False] * count
        self._taken = [0] * count
        self._deadlines = deadlines
        self._started = time.monotonic()

    def stalled(self, index: int) -> bool:
        return self._stalled[index]

    def consume(self, index: int, writer: Callable[[Chunks], bool]) -> bool:
        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    item = self._queues[index].get(timeout=0.2)
                except queue.Empty:
                    if self._stalled[index]:
                        raise StoreTimeoutError("dropped: it stopped taking data") from None
                    continue
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                self._taken[index] += len(item)
                yield item

        try:
            return writer(chunks())
        finally:
            self._alive[index] = False
            # Drain, so that the feeder never blocks on a writer that is gone.
            while True:
                try:
                    self._queues[index].get_nowait()
                except queue.Empty:
                    break

    def _too_slow(self, index: int) -> bool:
        allowed = self._deadlines.transfer_seconds(self._taken[index])
        return time.monotonic() - self._started > allowed

    def _put(self, item: object) -> None:
        for index, pipe in enumerate(self._queues):
            while self._alive[index]:
                try:
                    pipe.put(item, timeout=0.05)
                    break
                except queue.Full:
                    if self._too_slow(index):
                        self._stalled[index] = True
                        self._alive[index] = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self._put(bytes(chunk))

    def finish(self) -> None:
        self._put(self._END)

    def fail(self, error: BaseException) -> None:
        self._put(error)


def _hex(hasher: blake3.blake3 | None) -> str | None:
    return None if hasher is None else "blake3:" + hasher.hexdigest()


def _ranges(
    read: Callable[[int, int], bytes], size: int, workers: int, *, step: int = _RANGE
) -> Iterator[bytes]:
    """The bytes 0..size in order, `workers` ranges read ahead in parallel."""
    if size == 0:
        yield read(0, 0)
        return
    offsets = iter(range(0, size, step))
    pending: deque[Future[bytes]] = deque()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="readback") as pool:
        for offset in offsets:
            pending.append(pool.submit(read, offset, min(step, size - offset)))
            if len(pending) >= workers:
                break
        while pending:
            data = pending.popleft().result()
            following = next(offsets, None)
            if following is not None:
                pending.append(pool.submit(read, following, min(step, size - following)))
            yield data
