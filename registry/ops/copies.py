"""Where objects' copies live: writing an object to every region and requiring the write quorum,
the placements that record each copy, a writer's lease on the objects it writes, copies a read
had to route around, the regions' Object Lock doors, and waiting until every region's claim is
checked.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta

from registry.errors import (
    ConflictError,
    RegistryError,
    StorageError,
)
from registry.ops.context import Context
from registry.records import (
    PlacementRecord,
)
from registry.replication import (
    BAD,
    PENDING,
    VERIFIED,
    DataKey,
    ReadReport,
    Region,
    Replicated,
    fresh_failure,
)
from registry.storage.base import ObjectInfo
from registry.storage.lock import ObjectLock

SLOTS_PREFIX = "slots/"

# A writer's lease on the objects it is about to write or reuse outlives any sane push; a
# crashed writer's lease lapses after it.
LEASE_TTL = timedelta(hours=24)


LEASE_RENEWAL = 3600.0  # seconds: a long replication renews its lease this often


def bad_copies(report: ReadReport) -> list[str]:
    """ "region: kind digest: detail" for every copy a read had to route around."""
    return [
        f"{region}: {kind} {digest[:19]}: {detail}"
        for (kind, digest, region), detail in sorted(report.bad.items())
    ]


def require_quorum(results: Sequence[Replicated], quorum: int, names: Sequence[str]) -> None:
    """Refuse the push (nothing committed) unless every object has `quorum` verified copies."""
    short = [
        (name, result)
        for name, result in zip(names, results, strict=True)
        if len(result.verified) < quorum
    ]
    if not short:
        return
    name, result = short[0]
    problems = "; ".join(
        f"{o.region}: {o.state}{f' ({o.detail})' if o.detail else ''}"
        for o in result.outcomes
        if o.state != VERIFIED
    )
    raise StorageError(
        f"{name}: {len(result.verified)} of the {quorum} regions needed hold a verified copy "
        f"({problems}); nothing was committed",
        hint="check `model-registry regions status`, then push again (stored data is reused), "
        "or lower the quorum with --write-quorum",
    )


def placements(results: Sequence[Replicated]) -> list[PlacementRecord]:
    return [
        PlacementRecord(r.digest, r.kind, o.region, r.object_name, o.state, o.checksum, o.detail)
        for r in results
        for o in r.outcomes
    ]


def placed(
    ctx: Context, kind: str, digest: str
) -> tuple[frozenset[str], str | None, frozenset[str]]:
    """Regions whose copy of an object was verified, its ciphertext checksum, and the
    regions whose copy is recorded pending or bad."""
    rows = [p for p in ctx.catalog.placements(digest=digest) if p.purpose == kind]
    verified = [p for p in rows if p.state == VERIFIED]
    checksum = next((p.checksum for p in verified if p.checksum), None)
    suspect = frozenset(p.region for p in rows if p.state != VERIFIED)
    return frozenset(p.region for p in verified), checksum, suspect


def write_copies(
    ctx: Context,
    kind: str,
    digest: str,
    *,
    what: str,
    seal: Callable[[bytes], Iterable[bytes | bytearray | memoryview]] | None = None,
    size: int = 0,
    on_progress: Callable[[int], None] | None = None,
    repair: bool = False,
    only: frozenset[str] | None = None,
    distrust: frozenset[str] = frozenset(),
    read_back: bool = True,
    retired: frozenset[str] = frozenset(),
    key: DataKey | None = None,
    new_key: bytes | None = None,
) -> Replicated:
    verified, checksum, suspect = placed(ctx, kind, digest)
    # A repair reads every copy back, verified ones too: they may have rotted since.
    trusted = frozenset() if repair else verified - distrust
    return ctx.replicas.replicate(
        kind,
        digest,
        what=what,
        known=ctx.catalog.key_slots(digest, kind),
        seal=seal,
        checksum=checksum,
        trusted=trusted,
        repair=repair,
        only=only,
        size=size,
        on_progress=on_progress,
        read_back=read_back,
        suspect=suspect,
        retired=retired,
        key=key,
        new_key=new_key,
    )


def choose_key(
    ctx: Context, kind: str, digest: str, *, what: str, retired: frozenset[str]
) -> DataKey:
    """The data key a later `write_copies` of the object will seal with, its slot stored now
    (see `Writes.choose_key`)."""
    return ctx.replicas.choose_key(
        kind, digest, what=what, known=ctx.catalog.key_slots(digest, kind), retired=retired
    )


def take_lease(
    ctx: Context, objects: Sequence[tuple[str, str]], *, what: str, lease: str | None = None
) -> str:
    """Lease objects against gc, waiting while a gc is deleting one of them (the writer then
    stores it anew). With `lease`, the objects join that lease."""
    lease = lease or str(uuid.uuid4())
    deadline = time.monotonic() + ctx.home.sweep_wait
    while True:
        swept = ctx.catalog.take_lease(lease, objects, ttl=LEASE_TTL)
        if not swept:
            return lease
        if time.monotonic() > deadline:
            raise ConflictError(
                f"{what}: {len(swept)} of its objects are being deleted by a garbage "
                "collection that has not finished",
                hint="a gc is deleting them, or one stopped midway: `model-registry gc --yes` "
                "finishes a stopped one's work 15 minutes after it stopped; then run the "
                "same command again",
            )
        time.sleep(0.1)


def checkpoint(ctx: Context, name: str) -> None:
    hook = ctx.home.checkpoints.get(name)
    if hook is not None:
        hook()


def record_bad_copies(ctx: Context, report: ReadReport) -> None:
    """Copies a read could not use become `bad` placements, for `replicate --repair`."""
    if not report.bad:
        return
    with contextlib.suppress(RegistryError):
        ctx.catalog.record_placements(
            [
                PlacementRecord(
                    digest,
                    kind,
                    region,
                    ctx.store.object_name(kind, digest),
                    # A network failure says nothing of the copy: check it again later.
                    PENDING if detail.startswith(("unreachable", "hung")) else BAD,
                    None,
                    detail,
                )
                for (kind, digest, region), detail in report.bad.items()
            ]
        )


def region_locks(ctx: Context) -> list[tuple[Region, ObjectLock]]:
    """The regions whose store locks objects, with their lock interface."""
    return [
        (region, region.store.driver)
        for region in ctx.replicas.regions
        if isinstance(region.store.driver, ObjectLock)
    ]


def regions_ready(ctx: Context) -> None:
    """Wait (each within a request's deadline) until every region's claim is checked:
    before commands that work on every region. Regions that cannot be reached are marked
    down and tolerated while another one answers; a store that is not this registry's is
    an error."""
    unreachable: list[StorageError] = []
    for region in ctx.replicas.regions:
        try:
            ctx.replicas.claim(region)
        except StorageError as error:
            if len(ctx.replicas.regions) == 1:
                raise
            if fresh_failure(error):
                ctx.replicas.mark_down(region, error)
            unreachable.append(error)
    if len(unreachable) == len(ctx.replicas.regions):
        raise StorageError(
            f"no region is reachable: {'; '.join(map(str, unreachable))}",
            hint="check the network and the [store] regions in config.toml",
        )


def stray_objects(region: Region, referenced: Iterable[tuple[str, str]]) -> Iterator[ObjectInfo]:
    """The objects and key slots under `region`'s data prefixes that none of `referenced`
    ((purpose, digest) pairs) names: orphans (scrub lists them, gc reclaims them). A key slot
    lives under its object's id (slots/xx/<id>/<kind>-<kek>) and goes with it."""
    store = region.store
    known = {store.object_name(kind, digest) for kind, digest in referenced}
    known_ids = {name.rsplit("/", 1)[1] for name in known}
    for prefix in (*store.object_prefixes(), SLOTS_PREFIX):
        for info in store.driver.list(prefix):
            if prefix == SLOTS_PREFIX:
                parts = info.name.split("/")
                if len(parts) >= 3 and parts[2] in known_ids:
                    continue
            elif info.name in known:
                continue
            yield info
