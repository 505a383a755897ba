"""Verification of a version: its signed manifest, and in every region every object and key
slot; with `read_data`, every byte decrypted and re-hashed. Audited with its key unwraps.
"""

from __future__ import annotations

from registry.blobstore import BLOB, MANIFEST
from registry.errors import (
    IntegrityError,
    KmsUnreachableError,
    RegistryError,
    StorageError,
)
from registry.materialize import Progress
from registry.ops.access import requires
from registry.ops.checks import NoProgress
from registry.ops.context import Context
from registry.ops.copies import placed, record_bad_copies, regions_ready
from registry.ops.journaling import guard_reads
from registry.ops.queries import load_manifest, resolve
from registry.records import (
    PlacementRecord,
)
from registry.replication import (
    BAD,
    PENDING,
    VERIFIED,
    ReadReport,
    fresh_failure,
)
from registry.reports import (
    FileProblem,
    VerifyReport,
)


@requires("verify")
def verify(
    ctx: Context, ref: str, *, read_data: bool = False, progress: Progress | None = None
) -> VerifyReport:
    """Check a version: its manifest (signature, digest), and in every region the presence
    and size of every object and its key slot; with `read_data`, decrypt and re-hash
    everything (and, with several regions, read every copy back against its recorded
    checksum). Problems are reported per file (and region) instead of stopping at the first;
    damaged copies are recorded as bad placements for `replicate --repair`."""
    progress = progress or NoProgress()
    with ctx.counting_unwraps() as unwraps:
        version = resolve(ctx, ref)
        regions_ready(ctx)
        guard_reads(ctx)
        regions = ctx.replicas.regions
        several = len(regions) > 1
        problems: list[FileProblem] = []
        # Regions that could not be checked (down, hung): a warning, not damage.
        unchecked: dict[str, str] = {}
        if several:
            for region in regions:
                condition = ctx.replicas.health.unavailable(region.name)
                if condition is not None:
                    unchecked[region.name] = condition.describe()
        placements: list[PlacementRecord] = []
        report = ReadReport()
        try:
            manifest, _signer = load_manifest(ctx, version, report)
            expected = {(f.path, f.size, f.digest) for f in manifest.files}
            recorded = {(f.path, f.size, f.digest) for f in version.files}
            if expected != recorded:
                problems.append(FileProblem("manifest", "catalog and manifest list other files"))
        except RegistryError as error:
            problems.append(FileProblem("manifest", str(error)))
        objects: list[tuple[str, str, int | None, str, str]] = [
            (MANIFEST, version.digest, None, f"manifest of {version.ref}", "manifest")
        ]
        objects += [(BLOB, f.digest, f.size, f.path, f.path) for f in version.files]
        checked = 0
        progress.begin("verifying", version.total_size if read_data else version.file_count)
        for kind, digest, size, what, path in objects:
            checksum = placed(ctx, kind, digest)[1] if several else None
            for region in regions:
                if several and region.name in unchecked:
                    continue
                try:
                    if size is not None:
                        region.store.read_header(kind, digest, size=size, what=what)
                    # The store's own key slot (what a catalog rebuild relies on) must exist
                    # and open the object, whatever the catalog's copy says.
                    region.store.check_slot(kind, digest, what=what)
                    if read_data and several:
                        outcome = ctx.replicas.check(
                            region,
                            kind,
                            digest,
                            known=ctx.catalog.key_slots(digest, kind),
                            checksum=checksum,
                            what=what,
                        )
                        placements.append(
                            PlacementRecord(
                                digest,
                                kind,
                                region.name,
                                region.store.object_name(kind, digest),
                                outcome.state,
                                outcome.checksum,
                                outcome.detail,
                            )
                        )
                        if outcome.state == PENDING:
                            unchecked.setdefault(region.name, outcome.detail)
                        elif outcome.state != VERIFIED:
                            problems.append(FileProblem(path, f"{region.name}: {outcome.detail}"))
                except (StorageError, KmsUnreachableError) as error:
                    if not several:
                        problems.append(FileProblem(path, str(error)))
                    else:
                        # Another region serves the version; this one is checked when back.
                        unchecked.setdefault(region.name, str(error))
                        if fresh_failure(error):
                            ctx.replicas.mark_down(region, error)
                except RegistryError as error:
                    problems.append(
                        FileProblem(path, f"{region.name}: {error}" if several else str(error))
                    )
                    if isinstance(error, IntegrityError):
                        placements.append(
                            PlacementRecord(
                                digest,
                                kind,
                                region.name,
                                region.store.object_name(kind, digest),
                                BAD,
                                None,
                                str(error),
                            )
                        )
            if kind != BLOB or size is None:
                continue
            try:
                if read_data:
                    for chunk in ctx.replicas.open(
                        BLOB,
                        digest,
                        known=ctx.catalog.key_slots(digest, BLOB),
                        size=size,
                        what=what,
                        report=report,
                        chunks_per_read=ctx.home.chunks_per_read,
                    ):
                        progress.advance(len(chunk))
                    checked += size
                else:
                    progress.advance(1)
            except RegistryError as error:
                problems.append(FileProblem(path, str(error)))
        progress.end()
        if several:
            # Read from another region instead: the file is fine, its copy there is not.
            paths = {digest: path for _kind, digest, _size, _what, path in objects}
            for (_kind, digest, region_name), detail in sorted(report.bad.items()):
                if detail.startswith(("unreachable", "hung")):
                    unchecked.setdefault(region_name, detail)
                else:
                    problems.append(
                        FileProblem(paths.get(digest, digest), f"{region_name}: {detail}")
                    )
        record_bad_copies(ctx, report)
        if placements:
            ctx.catalog.record_placements(placements)
        result = VerifyReport(
            version,
            read_data,
            len(version.files),
            checked,
            tuple(problems),
            tuple(f"{name}: {detail}" for name, detail in sorted(unchecked.items())),
        )
        ctx.catalog.audit(
            ctx.actor,
            "verify",
            version.name,
            {
                "version": version.number,
                "read_data": read_data,
                "ok": result.ok,
                "problems": [p.path for p in problems],
                "unchecked_regions": sorted(unchecked),
                "key_unwraps": unwraps.value,
            },
        )
        return result
