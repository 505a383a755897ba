"""Scrubs: check every stored copy (its presence and size, or with `read_data` its bytes)
against the catalog, list orphans, and record damaged copies for repair.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from registry.blobstore import BLOB, MANIFEST
from registry.errors import (
    IntegrityError,
    InvalidInputError,
    KmsUnreachableError,
    NotFoundError,
    RegistryError,
    StorageError,
)
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import regions_ready, stray_objects
from registry.ops.journaling import guard_reads
from registry.records import (
    PlacementRecord,
)
from registry.replication import (
    BAD,
    PENDING,
    VERIFIED,
    Region,
)
from registry.reports import (
    Orphan,
    ScrubProblem,
    ScrubReport,
)


@requires("scrub")
def scrub(
    ctx: Context,
    *,
    read_data: bool = False,
    sample: float | None = None,
    region: str | None = None,
    progress: Progress | None = None,
) -> ScrubReport:
    """Check every object the catalog knows in every region (or `region`): present, the
    size its header says, its key slot opens it; with `read_data`, every chunk decrypted
    and every blob re-hashed. `sample` (percent) checks a random share of the objects. Bad
    copies are recorded as bad placements, which `replicate --repair` then replaces from a
    good copy. Objects in the stores that no catalog row knows are
    listed as orphans (never deleted here)."""
    regions_ready(ctx)
    guard_reads(ctx)
    if sample is not None and not 0 < sample <= 100:
        raise InvalidInputError("--sample is a percentage: more than 0, at most 100")
    regions = [r for r in ctx.replicas.regions if region is None or r.name == region]
    if not regions:
        names = ", ".join(r.name for r in ctx.replicas.regions)
        raise NotFoundError(f"no region {region!r}", hint=f"the regions are {names}")
    progress = progress or NoProgress()
    users, sizes, live = _catalog_objects(ctx)
    checked = sorted(
        key for key, refs in users.items() if refs & live
    )  # objects only tombstones use may already be swept
    if sample is not None and checked:
        count = max(1, round(len(checked) * sample / 100))
        checked = sorted(random.sample(checked, count))
    problems: list[ScrubProblem] = []
    placements: list[PlacementRecord] = []
    unchecked: set[str] = set()
    copies = 0
    progress.begin("scrubbing", len(checked) * len(regions))
    for kind, digest in checked:
        what = f"{kind} {digest}"
        size = sizes[(kind, digest)]
        for where in regions:
            if where.name in unchecked:
                progress.advance(1)
                continue
            name = where.store.object_name(kind, digest)
            try:
                found = _scrub_copy(ctx, where, kind, digest, size, what=what, read_data=read_data)
            finally:
                progress.advance(1)
            if found is None:
                unchecked.add(where.name)
                continue
            problem, damaged, checksum = found
            copies += 1
            if problem is not None:
                versions = tuple(sorted(users[(kind, digest)] & live))
                problems.append(ScrubProblem(where.name, kind, digest, name, problem, versions))
                if damaged:
                    placements.append(
                        PlacementRecord(digest, kind, where.name, name, BAD, None, problem)
                    )
            elif read_data:
                placements.append(
                    PlacementRecord(digest, kind, where.name, name, VERIFIED, checksum, "")
                )
    progress.end()
    if placements:
        ctx.catalog.record_placements(placements)
    orphans = [] if sample is not None else _orphans(ctx, regions, users, unchecked)
    report = ScrubReport(
        read_data,
        len(checked),
        copies,
        sample,
        tuple(problems),
        tuple(orphans),
        tuple(sorted(unchecked)),
    )
    ctx.catalog.audit(
        ctx.actor,
        "scrub",
        "registry",
        {
            "read_data": read_data,
            "sample": sample,
            "regions": [r.name for r in regions],
            "objects": report.objects,
            "copies": copies,
            "problems": len(problems),
            "orphans": len(orphans),
            "unchecked": sorted(unchecked),
        },
    )
    return report


def _catalog_objects(
    ctx: Context,
) -> tuple[dict[tuple[str, str], set[str]], dict[tuple[str, str], int | None], set[str]]:
    """Every object of every version (tombstones too: their objects are gc's to remove): the
    versions using each, each blob's size, and the live versions."""
    users: dict[tuple[str, str], set[str]] = {}
    sizes: dict[tuple[str, str], int | None] = {}
    live: set[str] = set()
    for model in ctx.catalog.models():
        for version in ctx.catalog.versions(model.name, expired=True):
            if version.expired_at is None:
                live.add(version.ref)
            users.setdefault((MANIFEST, version.digest), set()).add(version.ref)
            sizes[(MANIFEST, version.digest)] = None
            for entry in version.files:
                users.setdefault((BLOB, entry.digest), set()).add(version.ref)
                sizes[(BLOB, entry.digest)] = entry.size
    return users, sizes, live


def _scrub_copy(
    ctx: Context,
    where: Region,
    kind: str,
    digest: str,
    size: int | None,
    *,
    what: str,
    read_data: bool,
) -> tuple[str | None, bool, str | None] | None:
    """One region's copy of an object checked: (problem, damaged, checksum), or None when
    the region could not be reached."""
    try:
        # Always: present, the size its header says, opened by the region's own key slot
        # (what a rebuild from this region alone relies on).
        _scrub_quick(where, kind, digest, size, what=what)
        if not read_data:
            return None, False, None
        outcome = ctx.replicas.check(
            where,
            kind,
            digest,
            known=ctx.catalog.key_slots(digest, kind),
            checksum=None,  # none: every chunk authenticated, blobs re-hashed
            what=what,
        )
        if outcome.state == PENDING:
            return None
        if outcome.state != VERIFIED:
            return outcome.detail, True, outcome.checksum
        return None, False, outcome.checksum
    except (StorageError, KmsUnreachableError):
        return None
    except IntegrityError as error:
        return str(error), True, None
    except RegistryError as error:
        return str(error), False, None  # a key we may not use says nothing about the copy


def _scrub_quick(where: Region, kind: str, digest: str, size: int | None, *, what: str) -> None:
    where.store.read_header(kind, digest, size=size, what=what)
    where.store.check_slot(kind, digest, what=what)


def _orphans(
    ctx: Context,
    regions: Sequence[Region],
    users: dict[tuple[str, str], set[str]],
    unchecked: set[str],
) -> list[Orphan]:
    """Objects and key slots under the registry's prefixes that no catalog row knows (nor
    a live lease: a push in flight stores its objects before its commit names them)."""
    found: list[Orphan] = []
    referenced = set(users) | ctx.catalog.leased()
    for where in regions:
        if where.name in unchecked:
            continue
        try:
            found += [
                Orphan(where.name, info.name, info.size, info.modified)
                for info in stray_objects(where, referenced)
            ]
        except StorageError:
            unchecked.add(where.name)
    return found
