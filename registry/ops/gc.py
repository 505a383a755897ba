"""Garbage collection: expire versions by their retention rule, extend the Object Lock of what
stays, and sweep the objects no version references, region by region, under a claim that a
concurrent writer's lease always wins.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from registry.blobstore import BLOB, MANIFEST
from registry.catalog.gc import ORPHANS
from registry.errors import (
    InvalidInputError,
    NotFoundError,
    RegistryError,
    RetentionError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import checkpoint, region_locks, regions_ready, stray_objects
from registry.ops.journaling import journaled
from registry.ops.lifecycle import lock_floor, plan_retention
from registry.ops.parallel import LOCK_REQUESTS, bounded_map
from registry.records import (
    VersionRecord,
)
from registry.refs import (
    parse_reference,
)
from registry.replication import (
    Region,
)
from registry.reports import (
    GcReport,
    KeptObject,
    SweptObject,
)
from registry.retention import (
    DEFAULT_GRACE,
    Decision,
    Policy,
    format_duration,
    parse_duration,
)
from registry.storage.lock import ObjectLock, Retention

# A gc claim this old was left by a gc that crashed or hung: the next gc finishes it. A live gc
# renews its claim before every deletion, and one S3 call with its retries ends well within it.
STALE_CLAIM = timedelta(minutes=15)
# What gc reports as the purpose of an orphan, whose digest no row records: its name instead.
ORPHAN = "orphan"


def _kept_by_stores(purpose: str, digest: str, keepers: tuple[tuple[str, str], ...]) -> KeptObject:
    """What gc reports of an object the stores of some regions keep: each with its reason."""
    reason = "; ".join(f"{why} in {region}" for region, why in keepers)
    return KeptObject(purpose, digest, reason, keepers)


@requires("gc")
@journaled
def gc(
    ctx: Context,
    *,
    dry_run: bool = False,
    grace: str | timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
) -> GcReport:
    """Expire what the retention policies no longer keep, extend the Object Lock of what
    they keep, then sweep the objects no live version references, and the orphans (objects
    in a store that no catalog row names: an interrupted push's uploads) in every region.

    An object is swept only when no lease of a push in flight holds it, its lock has
    expired and it has been unneeded for longer than `grace`; each is claimed in the
    catalog (checked again there) before it is deleted from every region, so a push that
    reuses it either leased it first (and gc leaves it) or waits for the sweep and stores
    it anew. `dry_run` changes nothing and reports what would happen.
    """
    regions_ready(ctx)
    window = parse_duration(grace) if isinstance(grace, str) else grace
    if window < timedelta(0):
        raise InvalidInputError("the grace window cannot be negative")
    moment = now or datetime.now(UTC)
    run = str(uuid.uuid4())
    problems: list[str] = []
    swept: list[SweptObject] = []
    kept: list[KeptObject] = []
    stale = _finish_stale_sweeps(
        ctx, run, dry_run=dry_run, problems=problems, kept=kept, swept=swept
    )
    plans = plan_retention(ctx, now=moment)
    doomed = {(model, d.number) for model, _policy, ds in plans for d in ds if not d.keep}
    locks_extended = extend_locks(ctx, plans, now=moment, dry_run=dry_run, problems=problems)
    expired = _expire(ctx, doomed, now=moment, dry_run=dry_run)
    swept += _sweep_unreferenced(
        ctx,
        run,
        doomed,
        stale,
        now=moment,
        window=window,
        dry_run=dry_run,
        problems=problems,
        kept=kept,
    )
    swept += _sweep_orphans(
        ctx, run, now=moment, window=window, dry_run=dry_run, problems=problems, kept=kept
    )
    report = GcReport(
        dry_run,
        window,
        tuple(expired),
        locks_extended,
        tuple(swept),
        tuple(kept),
        tuple(problems),
    )
    if not dry_run:
        ctx.catalog.audit(
            ctx.actor,
            "gc",
            "registry",
            {
                "expired": [v.ref for v in expired],
                "swept": len(swept),
                "bytes": report.bytes_reclaimed,
                "locks_extended": locks_extended,
                "kept": len(kept),
                "problems": len(problems),
                "grace": format_duration(window),
            },
        )
    return report


def _finish_stale_sweeps(
    ctx: Context,
    run: str,
    *,
    dry_run: bool,
    problems: list[str],
    kept: list[KeptObject],
    swept: list[SweptObject],
) -> set[tuple[str, str]]:
    """Finish the claims of a gc that stopped (a dry run: report them); the claims left for
    a dry run to skip."""
    if not dry_run:
        for digest, purpose in ctx.catalog.take_over_sweeps(
            run=run, claimed_before=datetime.now(UTC) - STALE_CLAIM
        ):
            done = _sweep(ctx, digest, purpose, run=run, problems=problems, kept=kept)
            if done is not None:
                swept.append(done)
        return set()
    # What a real run would finish first: claims of a gc that stopped.
    stale = set(ctx.catalog.stale_sweeps(claimed_before=datetime.now(UTC) - STALE_CLAIM))
    finishing = [(purpose, digest) for digest, purpose in sorted(stale)]
    swept += [
        SweptObject(purpose, digest, sizes)
        for (purpose, digest), sizes in zip(finishing, _stored_sizes(ctx, finishing), strict=True)
    ]
    return stale


def _expire(
    ctx: Context, doomed: set[tuple[str, int]], *, now: datetime, dry_run: bool
) -> list[VersionRecord]:
    """Expire the versions no retention rule keeps (a dry run: the versions it would)."""
    expired: list[VersionRecord] = []
    if dry_run:
        for model, number in sorted(doomed):
            expired.append(ctx.catalog.resolve(parse_reference(f"{model}@{number}")))
    else:
        for model in sorted({model for model, _number in doomed}):
            expired += ctx.catalog.expire_versions(
                model,
                now=now,
                locked_for=lock_floor(ctx),
                actor=ctx.actor,
                only={number for name, number in doomed if name == model},
            )
        ctx.catalog.drop_expired_leases(datetime.now(UTC))
    return expired


def _sweep_unreferenced(
    ctx: Context,
    run: str,
    doomed: set[tuple[str, int]],
    stale: set[tuple[str, str]],
    *,
    now: datetime,
    window: timedelta,
    dry_run: bool,
    problems: list[str],
    kept: list[KeptObject],
) -> list[SweptObject]:
    """Sweep the objects no live version references, unless a lease, another gc's claim, the
    grace window or a store's lock keeps them (a dry run: what it would sweep)."""
    swept: list[SweptObject] = []
    idle_before = now - window
    candidates = [
        candidate
        for candidate in ctx.catalog.unreferenced(
            now=now, assume_expired=frozenset(doomed) if dry_run else frozenset()
        )
        if (candidate.digest, candidate.purpose) not in stale
    ]
    # The stores' locks of everything the catalog lets go are read in one parallel round
    # (one by one, each object costs a few round trips per region). A lock placed after
    # this read still holds: the store refuses the deletion and the sweep keeps the copy.
    locked = _lock_keeps(
        ctx,
        [
            (candidate.purpose, candidate.digest)
            for candidate in candidates
            if not (candidate.sweeping or candidate.leased) and candidate.idle_since <= idle_before
        ],
    )
    would_sweep: list[tuple[str, str]] = []
    for candidate in candidates:
        reason = None
        if candidate.sweeping:
            reason = "claimed by another gc"
        elif candidate.leased:
            reason = "in use by a push in flight"
        elif candidate.idle_since > idle_before:
            reason = f"unneeded for less than the grace window ({format_duration(window)})"
        elif keepers := locked.get((candidate.purpose, candidate.digest)):
            kept.append(_kept_by_stores(candidate.purpose, candidate.digest, keepers))
            continue
        if reason is None and not dry_run:
            reason = ctx.catalog.claim_sweep(
                candidate.digest, candidate.purpose, run=run, stored_before=idle_before
            )
        if reason is not None:
            kept.append(KeptObject(candidate.purpose, candidate.digest, reason))
            continue
        if dry_run:
            would_sweep.append((candidate.purpose, candidate.digest))
            continue
        checkpoint(ctx, "gc-claimed")
        done = _sweep(
            ctx, candidate.digest, candidate.purpose, run=run, problems=problems, kept=kept
        )
        if done is not None:
            swept.append(done)
    swept += [
        SweptObject(purpose, digest, sizes)
        for (purpose, digest), sizes in zip(
            would_sweep, _stored_sizes(ctx, would_sweep), strict=True
        )
    ]
    return swept


def _sweep_orphans(
    ctx: Context,
    run: str,
    *,
    now: datetime,
    window: timedelta,
    dry_run: bool,
    problems: list[str],
    kept: list[KeptObject],
) -> list[SweptObject]:
    """Delete, in every region, the objects no catalog row names (what a push that was
    interrupted had uploaded) once written longer ago than the grace window, unless a store's
    Object Lock or legal hold keeps them (reported as kept, with its date). Reported as purpose
    `orphan` with the object's name in place of a digest (no row says what it holds).

    A push may reuse such an object (the same content pushed again) once it holds a lease on
    it: the deletions run under a claim during which no lease is granted, and the leases taken
    before it are read again under it; their objects stay."""
    idle_before = now - window
    old: dict[str, list[tuple[Region, int]]] = {}
    young: set[str] = set()
    known = ctx.catalog.known_objects()
    for region in ctx.replicas.regions:
        condition = ctx.replicas.health.unavailable(region.name)
        if condition is not None:
            problems.append(f"{region.name}: orphans not looked for ({condition.describe()})")
            continue
        try:
            for info in stray_objects(region, known):
                if info.modified <= idle_before:
                    old.setdefault(info.name, []).append((region, info.size))
                else:
                    young.add(info.name)
        except RegistryError as error:
            problems.append(f"{region.name}: orphans not looked for ({error})")
    for name in sorted(young - set(old)):
        kept.append(
            KeptObject(
                ORPHAN,
                name,
                f"an orphan written less than the grace window ({format_duration(window)}) ago",
            )
        )
    if not old:
        return []
    locked = _orphan_locks(ctx, old)
    if dry_run:
        swept: list[SweptObject] = []
        for name, copies in sorted(old.items()):
            keepers = locked.get(name, ())
            if keepers:
                kept.append(_kept_by_stores(ORPHAN, name, keepers))
            held = {region for region, _why in keepers}
            sizes = tuple((r.name, size) for r, size in copies if r.name not in held)
            if sizes:
                swept.append(SweptObject(ORPHAN, name, sizes))
        return swept
    if not ctx.catalog.claim_orphans(run=run, stale_before=datetime.now(UTC) - STALE_CLAIM):
        problems.append("orphans: another gc is deleting them; left to it")
        return []
    try:
        return _delete_orphans(ctx, run, old, locked, kept=kept, problems=problems)
    finally:
        ctx.catalog.drop_orphans_claim(run=run)


def _delete_orphans(
    ctx: Context,
    run: str,
    orphans: dict[str, list[tuple[Region, int]]],
    locked: dict[str, tuple[tuple[str, str], ...]],
    *,
    kept: list[KeptObject],
    problems: list[str],
) -> list[SweptObject]:
    """Delete the orphans, under the orphans claim, but those a lease taken before the claim
    now names (a push is reusing them)."""
    leases = ctx.catalog.leased()
    leased = {
        _object_id(region.store.object_name(kind, digest))
        for region in ctx.replicas.regions
        for kind, digest in leases
    }
    swept: list[SweptObject] = []
    for name, copies in sorted(orphans.items()):
        if _object_id(name) in leased:
            kept.append(KeptObject(ORPHAN, name, "in use by a push in flight"))
            continue
        keepers = list(locked.get(name, ()))
        held = {region for region, _why in keepers}
        sizes: list[tuple[str, int]] = []
        for region, size in copies:
            if region.name in held:
                continue
            if not ctx.catalog.renew_claim(ORPHANS, ORPHANS, run=run):
                problems.append("orphans: another gc took the claim over; left to it")
                return swept
            try:
                region.store.driver.delete(name)
            except NotFoundError:
                continue
            except RetentionError as error:
                keepers.append((region.name, str(error)))
                continue
            except RegistryError as error:
                problems.append(f"{region.name}: orphan {name}: not deleted: {error}")
                continue
            sizes.append((region.name, size))
        if keepers:
            kept.append(_kept_by_stores(ORPHAN, name, tuple(keepers)))
        if sizes:
            swept.append(SweptObject(ORPHAN, name, tuple(sizes)))
    return swept


def _object_id(name: str) -> str:
    """The object id in an object's name (blobs/xx/<id>) or a key slot's (slots/xx/<id>/...)."""
    parts = name.split("/")
    return parts[2] if len(parts) >= 3 else name


def _orphan_locks(
    ctx: Context, orphans: dict[str, list[tuple[Region, int]]]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """For each orphan a store keeps, every region whose Object Lock or legal hold keeps it
    (or whose lock state cannot be read), with the reason: asked where the orphan is."""
    lockers = dict((region.name, lock) for region, lock in region_locks(ctx))
    asks = [
        (name, region, lockers[region.name])
        for name, copies in sorted(orphans.items())
        for region, _size in copies
        if region.name in lockers
    ]

    def ask(item: tuple[str, Region, ObjectLock]) -> str | None:
        name, _region, lock = item
        return _lock_state(lock, name)

    answers = bounded_map(ask, asks, limit=LOCK_REQUESTS, name="orphan-lock")
    found: dict[str, list[tuple[str, str]]] = {}
    for (name, region, _lock), why in zip(asks, answers, strict=True):
        if why is not None:
            found.setdefault(name, []).append((region.name, why))
    return {name: tuple(keepers) for name, keepers in found.items()}


def _lock_state(lock: ObjectLock, name: str) -> str | None:
    """Why the store keeps `name` (a legal hold, an Object Lock in force, a state that cannot
    be read), or None."""
    try:
        retention = lock.retention(name)
        held = lock.legal_hold(name)
    except NotFoundError:
        return None
    except RegistryError as error:
        return f"lock state unknown ({error})"
    if held:
        return "under an S3 legal hold"
    if retention is not None and retention.active():
        return f"Object Lock ({retention.mode}) until {retention.until:%Y-%m-%d %H:%M} UTC"
    return None


def _lock_keeps(
    ctx: Context, objects: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """For each (purpose, digest) that a store keeps, every region whose Object Lock or
    legal hold keeps the object or its key slot, with that region's reason (a lock state
    that cannot be read keeps it too). Regions are asked in parallel, and within each
    region up to LOCK_REQUESTS objects at a time."""
    if not objects:
        return {}

    def in_region(locker: tuple[Region, ObjectLock]) -> list[str | None]:
        region, lock = locker
        store = region.store
        condition = ctx.replicas.health.unavailable(region.name)
        if condition is not None:
            # Not asked again: its locks cannot be read, so they keep everything.
            return [f"lock state unknown ({condition.describe()})" for _ in objects]

        def keeps(item: tuple[str, str]) -> str | None:
            purpose, digest = item
            names = (
                store.object_name(purpose, digest),
                store.slot_name(purpose, digest, store.keys.kek_id),
            )
            return next((why for why in (_lock_state(lock, name) for name in names) if why), None)

        return bounded_map(keeps, objects, limit=LOCK_REQUESTS, name="lock-check")

    lockers = region_locks(ctx)
    answers = bounded_map(in_region, lockers, limit=len(lockers) or 1, name="lock-region")
    found: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    for index, item in enumerate(objects):
        keepers = tuple(
            (region.name, why)
            for (region, _lock), reasons in zip(lockers, answers, strict=True)
            if (why := reasons[index]) is not None
        )
        if keepers:
            found[item] = keepers
    return found


def _stored_sizes(
    ctx: Context, objects: Sequence[tuple[str, str]]
) -> list[tuple[tuple[str, int], ...]]:
    """For each (purpose, digest), its size in each region that holds it (regions that
    cannot be asked are left out), regions and objects asked in parallel."""
    if not objects:
        return []

    def in_region(region: Region) -> list[int | None]:
        if ctx.replicas.health.unavailable(region.name) is not None:
            return [None for _ in objects]  # down or hung: not asked object by object

        def size(item: tuple[str, str]) -> int | None:
            try:
                info = region.store.driver.stat(region.store.object_name(*item))
            except RegistryError:
                return None
            return None if info is None else info.size

        return bounded_map(size, objects, limit=LOCK_REQUESTS, name="gc-stat")

    regions = ctx.replicas.regions
    answers = bounded_map(in_region, regions, limit=len(regions), name="gc-region")
    return [
        tuple(
            (region.name, size)
            for region, sizes in zip(regions, answers, strict=True)
            if (size := sizes[index]) is not None
        )
        for index in range(len(objects))
    ]


def _sweep(
    ctx: Context,
    digest: str,
    purpose: str,
    *,
    run: str,
    problems: list[str],
    kept: list[KeptObject],
) -> SweptObject | None:
    """Delete a claimed object from every region, data first, then its key slots, and
    record it. Before each deletion the claim is renewed: a gc whose claim was taken over
    (it stalled past STALE_CLAIM) stops before deleting anything more. A region whose store
    refuses (a lock, an outage) keeps its copy and its placement; the claim is dropped and a
    later gc tries again."""
    owners = set(ctx.catalog.key_slot_owners(digest, purpose))
    cleared: list[str] = []
    sizes: list[tuple[str, int]] = []
    for region in ctx.replicas.regions:
        store = region.store
        data = store.object_name(purpose, digest)
        slots = [
            store.slot_name(purpose, digest, kek) for kek in sorted(owners | {store.keys.kek_id})
        ]
        if not ctx.catalog.renew_claim(digest, purpose, run=run):
            problems.append(f"{purpose} {digest}: another gc took the claim over; left to it")
            return None
        try:
            info = store.driver.stat(data)
            store.driver.delete(data)
        except NotFoundError:
            info = None
        except RetentionError as error:
            kept.append(
                KeptObject(purpose, digest, f"{region.name}: {error}", ((region.name, str(error)),))
            )
            continue
        except RegistryError as error:
            problems.append(f"{region.name}: {purpose} {digest}: not deleted: {error}")
            continue
        if info is not None:
            sizes.append((region.name, info.size))
        # The data is gone from this region: a slot left behind opens nothing; it is
        # reported, and the scrub of orphans finds it.
        cleared.append(region.name)
        for slot in slots:
            try:
                store.driver.delete(slot)
            except NotFoundError:
                continue
            except RegistryError as error:
                problems.append(f"{region.name}: key slot of {purpose} {digest}: {error}")
    complete = len(cleared) == len(ctx.replicas.regions)
    if not ctx.catalog.finish_sweep(digest, purpose, run=run, cleared=cleared, complete=complete):
        return None
    return SweptObject(purpose, digest, tuple(sizes)) if complete else None


def extend_locks(
    ctx: Context,
    plans: Sequence[tuple[str, Policy, list[Decision]]],
    *,
    now: datetime,
    dry_run: bool,
    problems: list[str],
) -> int:
    """Extend the Object Lock of every object of every kept version to as long as a rule
    keeps it: a dated rule (keep-within, keep-demoted-for) to its date; an open-ended one
    (keep-last, an alias, a hold) to the store's minimum from now, renewed once half of that
    has passed. A model without any rule gets nothing beyond its write-time lock. Never
    shortened or weakened. Returns how many were extended."""
    lockers = []
    for region, lock in region_locks(ctx):
        floor = lock.minimum_lock()
        if floor is None:
            continue
        trouble = ctx.replicas.health.suspect(region.name)
        if trouble is not None:
            # Not waited for: the next gc extends what it misses now.
            problems.append(f"{region.name}: Object Lock not extended now ({trouble})")
            continue
        lockers.append((region, lock, floor))
    if not lockers:
        return 0
    wanted: dict[tuple[str, str], tuple[datetime | None, bool]] = {}
    for model, _policy, decisions in plans:
        versions = {v.number: v for v in ctx.catalog.versions(model)}
        for decision in decisions:
            if not decision.keep or decision.number not in versions:
                continue
            version = versions[decision.number]
            objects = {(version.digest, MANIFEST)} | {(f.digest, BLOB) for f in version.files}
            for key in objects:
                until, open_ended = wanted.get(key, (None, False))
                if decision.until is not None:
                    until = decision.until if until is None else max(until, decision.until)
                wanted[key] = (until, open_ended or decision.open_ended)
    targets = sorted(wanted.items())

    def in_region(locker: tuple[Region, ObjectLock, Retention]) -> list[tuple[int, str | None]]:
        region, lock, floor = locker
        minimum = floor.until - datetime.now(UTC)

        def extend(
            item: tuple[tuple[str, str], tuple[datetime | None, bool]],
        ) -> tuple[int, str | None]:
            (digest, purpose), (until, open_ended) = item
            target, renew_below = until, until
            if open_ended:
                rolling = now + minimum
                target = rolling if target is None else max(target, rolling)
                half = now + minimum / 2
                renew_below = half if renew_below is None else max(renew_below, half)
            if target is None or renew_below is None or target <= now:
                return 0, None
            count = 0
            try:
                for name in (
                    region.store.object_name(purpose, digest),
                    region.store.slot_name(purpose, digest, region.store.keys.kek_id),
                ):
                    try:
                        current = lock.retention(name)
                    except NotFoundError:
                        continue
                    if current is not None and current.active(now) and current.until >= renew_below:
                        continue
                    count += 1
                    if not dry_run:
                        lock.hold_at_least(name, Retention(floor.mode, target))
            except RegistryError as error:
                # Reported; the other objects still get their locks.
                return count, (
                    f"{region.name}: {purpose} {digest}: Object Lock not extended: {error}"
                )
            return count, None

        return bounded_map(extend, targets, limit=LOCK_REQUESTS, name="lock-extend")

    # Regions in parallel, and objects in each: one at a time, a daily gc of a large
    # registry would spend its time waiting on round trips.
    outcomes = bounded_map(in_region, lockers, limit=len(lockers), name="lock-region")
    problems.extend(problem for done in outcomes for _count, problem in done if problem)
    return sum(count for done in outcomes for count, _problem in done)
