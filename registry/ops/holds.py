"""Legal holds: place and release them on a version in the catalog and, where the store has
Object Lock, on every copy of its objects.
"""

from __future__ import annotations

import contextlib

from registry.blobstore import BLOB, MANIFEST
from registry.errors import (
    InvalidInputError,
    NotFoundError,
    RegistryError,
    StorageError,
)
from registry.ops.access import requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.copies import region_locks, regions_ready
from registry.ops.journaling import journaled
from registry.ops.parallel import LOCK_REQUESTS, bounded_map
from registry.ops.queries import resolve
from registry.records import (
    HoldRecord,
)
from registry.refs import (
    parse_reference,
)
from registry.replication import (
    Region,
)
from registry.reports import (
    HoldResult,
)
from registry.storage.lock import ObjectLock


@requires("hold")
@journaled
def hold(ctx: Context, ref: str, *, reason: str) -> HoldResult:
    """Place a legal hold on a version: recorded in the catalog, and on every object of the
    version (data, manifest, key slots) in every region whose store has legal holds."""
    if not reason.strip():
        raise InvalidInputError("a legal hold needs a reason", hint="pass --reason TEXT")
    check_text("reason", reason, limit=4096)
    record, created = ctx.catalog.set_hold(parse_reference(ref), reason=reason, actor=ctx.actor)
    objects = _version_objects(ctx, record.name, record.number)
    failed = legal_hold_copies(ctx, objects, on=True)
    return HoldResult(record, created, len(objects), tuple(failed))


@requires("hold")
@journaled
def release_hold(ctx: Context, ref: str, *, reason: str) -> HoldResult:
    """Release a version's legal hold; objects another held version shares stay held."""
    if not reason.strip():
        raise InvalidInputError("releasing a legal hold needs a reason", hint="pass --reason")
    check_text("reason", reason, limit=4096)
    version = resolve(ctx, ref)
    if not any((h.name, h.number) == (version.name, version.number) for h in holds(ctx)):
        raise NotFoundError(f"{version.ref} is not under legal hold")
    # Objects a sharing version's hold keeps stay held (read just before clearing).
    objects = _version_objects(ctx, version.name, version.number) - (
        ctx.catalog.held_objects(exclude=version)
    )
    # The stores first: if a region cannot be reached the hold stays recorded, and the same
    # command can run again.
    failed = legal_hold_copies(ctx, objects, on=False)
    if failed:
        # All or nothing: every copy gets its hold back, in the failed regions too (the
        # changes running there when one failed may have cleared some).
        legal_hold_copies(ctx, objects, on=True)
        raise StorageError(
            f"the legal hold on {version.ref} could not be released in "
            f"{'; '.join(failed)}; it is still recorded",
            hint="run the same command again once the region is reachable",
        )
    record = ctx.catalog.release_hold(parse_reference(version.ref), reason=reason, actor=ctx.actor)
    return HoldResult(record, True, len(objects))


@requires("read")
def holds(ctx: Context) -> list[HoldRecord]:
    return ctx.catalog.holds()


def _version_objects(ctx: Context, name: str, number: int) -> set[tuple[str, str]]:
    version = ctx.catalog.resolve(parse_reference(f"{name}@{number}"))
    return {(version.digest, MANIFEST)} | {(f.digest, BLOB) for f in version.files}


def legal_hold_copies(
    ctx: Context, objects: set[tuple[str, str]], *, on: bool, only: set[str] | None = None
) -> list[str]:
    """Set or clear the S3 legal hold of objects and their key slots in every region (or
    those in `only`) that supports it; returns "region: problem" for what failed. Each
    change is several requests (list versions, HEAD, PUT, HEAD again), so regions run in
    parallel and up to LOCK_REQUESTS objects at a time in each; a region stops starting
    new changes at its first failure, as it would one by one."""
    regions_ready(ctx)
    lockers = [
        (region, lock) for region, lock in region_locks(ctx) if only is None or region.name in only
    ]
    if not lockers or not objects:
        return []
    # A region that is down or hung is not asked object by object: it fails as a whole.
    failed: list[str] = []
    reachable: list[tuple[Region, ObjectLock]] = []
    for region, lock in lockers:
        condition = ctx.replicas.health.unavailable(region.name)
        if condition is None:
            reachable.append((region, lock))
        else:
            failed.append(f"{region.name}: {condition.describe()}")
    lockers = reachable
    if not lockers:
        return failed

    def in_region(locker: tuple[Region, ObjectLock]) -> str | None:
        region, lock = locker
        store = region.store
        # During a key rotation an object has a slot under each key: hold them all.
        names = [
            name
            for digest, kind in sorted(objects)
            for name in (
                store.object_name(kind, digest),
                *(store.slot_name(kind, digest, kek) for kek in store.keys.kek_ids),
            )
        ]

        def change(name: str) -> None:
            # A missing copy gets the hold when replicate restores it.
            with contextlib.suppress(NotFoundError):
                lock.set_legal_hold(name, on)

        try:
            bounded_map(change, names, limit=LOCK_REQUESTS, name="legal-hold")
        except RegistryError as error:
            return f"{region.name}: {error}"
        return None

    outcomes = bounded_map(in_region, lockers, limit=len(lockers), name="hold-region")
    return failed + [failure for failure in outcomes if failure is not None]
