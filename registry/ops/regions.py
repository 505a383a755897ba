"""Regions: their health and what the catalog knows of their copies, and replication that
copies or repairs what a region lacks from a good copy.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

from registry.errors import (
    ConflictError,
    KeyAccessError,
    KmsUnreachableError,
    RegistryError,
    StorageError,
    StoreTimeoutError,
)
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import LEASE_RENEWAL, LEASE_TTL, placements, take_lease, write_copies
from registry.ops.holds import legal_hold_copies
from registry.records import (
    PlacementRecord,
    StoredObject,
)
from registry.replication import (
    BAD,
    PENDING,
    VERIFIED,
    Region,
)
from registry.reports import (
    RegionStatus,
    ReplicateReport,
)
from registry.storage import deadline
from registry.storage.factory import prepare_bucket


@requires("regions")
def regions_status(ctx: Context) -> list[RegionStatus]:
    """Each region probed now, all at once and each within a request's deadline (its
    marker and naming key read): `ok`, `unreachable`, `hung` (no answer in time) or
    `foreign` (not this registry's store), with the catalog's counts of verified, pending
    and bad copies and of copies it has no record of (none counted on a stand-in)."""
    counted = ctx.provisional is None
    wanted = {(o.digest, o.purpose) for o in ctx.catalog.stored_objects()} if counted else set()
    states: dict[str, dict[tuple[str, str], str]] = {}
    for row in ctx.catalog.placements() if counted else []:
        states.setdefault(row.region, {})[(row.digest, row.purpose)] = row.state
    limit = ctx.settings.deadlines.request_seconds

    def probe(region: Region) -> tuple[str, str, float]:
        started = time.monotonic()
        failure: RegistryError
        try:
            deadline.call_with_deadline(
                lambda _budget: region.store.check_claim(),
                seconds=limit,
                what=f"region {region.name}",
            )
            ctx.replicas.mark_up(region)
            return "ok", "ok", time.monotonic() - started
        except StoreTimeoutError as error:
            state, failure = "hung", error
        except (StorageError, KmsUnreachableError) as error:
            state, failure = "unreachable", error
        except RegistryError as error:
            return "foreign", str(error), time.monotonic() - started
        ctx.replicas.mark_down(region, failure)
        return state, str(failure), time.monotonic() - started

    probes = [deadline.submit(functools.partial(probe, r)) for r in ctx.replicas.regions]
    found = []
    for settings, region, future in zip(
        ctx.settings.regions, ctx.replicas.regions, probes, strict=True
    ):
        state, detail, seconds = future.result()
        known = states.get(region.name, {})
        counts = {copy_state: 0 for copy_state in (VERIFIED, PENDING, BAD)}
        missing = 0
        for key in wanted:
            copy_state = known.get(key)
            if copy_state is None:
                missing += 1
            else:
                counts[copy_state] = counts.get(copy_state, 0) + 1
        found.append(
            RegionStatus(
                name=region.name,
                priority=settings.priority,
                store=settings.store.describe(),
                keys=settings.kms.describe() if settings.kms else "local key file",
                reachable=state == "ok",
                detail=detail,
                seconds=seconds,
                verified=counts[VERIFIED],
                pending=counts[PENDING],
                bad=counts[BAD],
                missing=missing,
                state=state,
                counted=counted,
            )
        )
    return found


@requires("replicate")
def replicate(
    ctx: Context, *, repair: bool = False, progress: Progress | None = None
) -> ReplicateReport:
    """Bring every region to a full, verified copy of every object a version references.

    Copies that are missing, pending or never recorded are copied from a good region (the
    bytes authenticated on the way) and read back; with `repair`, copies recorded as bad are
    read back too and, when damaged or missing, replaced by a good copy (a new object
    version; the damaged one stays locked until it expires). A region's bucket is created
    (versioning, Object Lock) and claimed first, so a region rebuilt empty is refilled.
    """
    progress = progress or NoProgress()
    problems: list[str] = []
    rebuilt: set[str] = set()
    for settings, region in zip(ctx.settings.regions, ctx.replicas.regions, strict=True):
        try:
            prepare_bucket(settings.store)
            if not region.store.claimed():
                rebuilt.add(region.name)  # new or emptied: no record of it can be trusted
            region.store.claim()
            ctx.replicas.mark_up(region)
        except (StorageError, KeyAccessError) as error:
            ctx.replicas.mark_down(region, error)
            problems.append(f"{region.name}: {error}")
    listed = ctx.catalog.stored_objects()
    # Leased against gc while copies are written; read again under the lease, because a
    # version may have expired and its objects been swept in between.
    lease = take_lease(ctx, [(o.digest, o.purpose) for o in listed], what="replicate")
    try:
        wanted = set(listed)
        objects = [o for o in ctx.catalog.stored_objects() if o in wanted]
        return _replicate_leased(
            ctx, objects, rebuilt, problems, repair=repair, progress=progress, lease=lease
        )
    finally:
        ctx.catalog.drop_lease(lease)


def _replicate_leased(
    ctx: Context,
    objects: Sequence[StoredObject],
    rebuilt: set[str],
    problems: list[str],
    *,
    repair: bool,
    progress: Progress,
    lease: str,
) -> ReplicateReport:
    rows: dict[tuple[str, str], dict[str, PlacementRecord]] = {}
    for row in ctx.catalog.placements():
        rows.setdefault((row.digest, row.purpose), {})[row.region] = row
    held = ctx.catalog.held_objects()
    copied = repaired = verified = 0
    progress.begin("replicating", len(objects))
    renewed = time.monotonic()
    for stored in objects:
        if time.monotonic() - renewed > LEASE_RENEWAL:
            if not ctx.catalog.renew_lease(lease, ttl=LEASE_TTL):
                raise ConflictError(
                    "replicate stalled past its lease on the objects it copies",
                    hint="run it again; what it copied is kept",
                )
            renewed = time.monotonic()
        key = (stored.digest, stored.purpose)
        known = rows.get(key, {})
        # A repair looks at every copy (a verified one may have been lost since); without
        # it, only at copies that were never completed.
        need = frozenset(
            region.name
            for region in ctx.replicas.regions
            if repair
            or region.name in rebuilt
            or region.name not in known
            or known[region.name].state == PENDING
        )
        left_bad = [
            f"{name}: {stored.purpose} {stored.digest}: bad ({row.detail}); "
            "run `model-registry replicate --repair`"
            for name, row in sorted(known.items())
            if row.state == BAD and not repair
        ]
        problems += left_bad
        if not need:
            progress.advance(1)
            continue
        what = f"{stored.purpose} {stored.digest}"
        try:
            result = write_copies(
                ctx,
                stored.purpose,
                stored.digest,
                what=what,
                repair=repair,
                only=need,
                distrust=frozenset(rebuilt),
            )
        except RegistryError as error:
            problems.append(f"{what}: {error}")
            progress.advance(1)
            continue
        ctx.catalog.record_placements(placements([result]))
        ctx.catalog.add_key_slots([(stored.digest, stored.purpose, s) for s in result.slots])
        for outcome in result.outcomes:
            before = known.get(outcome.region)
            if outcome.state == VERIFIED:
                verified += 1
                if outcome.uploaded:
                    if before is not None and before.state != PENDING:
                        repaired += 1
                    else:
                        copied += 1
                if key in held:
                    problems += legal_hold_copies(ctx, {key}, on=True, only={outcome.region})
            else:
                problems.append(f"{outcome.region}: {what}: {outcome.state} ({outcome.detail})")
        progress.advance(1)
    progress.end()
    report = ReplicateReport(len(objects), copied, repaired, verified, tuple(problems))
    ctx.catalog.audit(
        ctx.actor,
        "replicate",
        "registry",
        {
            "repair": repair,
            "objects": len(objects),
            "copied": copied,
            "repaired": repaired,
            "verified": verified,
            "problems": len(problems),
        },
    )
    return report
