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
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import placed, record_bad_copies, regions_ready
from registry.ops.journaling import guard_reads
from registry.ops.queries import load_manifest, resolve
from registry.records import PlacementRecord, VersionRecord
from registry.replication import (
    BAD,
    PENDING,
    VERIFIED,
    ReadReport,
    Region,
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
        check = _Verification(ctx, version, read_data=read_data)
        check.manifest()
        progress.begin("verifying", version.total_size if read_data else version.file_count)
        for kind, digest, size, what, path in check.objects:
            check.copies(kind, digest, size, what, path)
            if kind == BLOB and size is not None:
                check.contents(digest, size, what, path, progress)
        progress.end()
        result = check.finish()
        ctx.catalog.audit(
            ctx.actor,
            "verify",
            version.name,
            {
                "version": version.number,
                "read_data": read_data,
                "ok": result.ok,
                "problems": [p.path for p in result.problems],
                "unchecked_regions": sorted(check.unchecked),
                "key_unwraps": unwraps.value,
            },
        )
        return result


class _Verification:
    """One verify's findings as it goes: problems per file, regions it could not check, and
    the placements its read-backs established."""

    def __init__(self, ctx: Context, version: VersionRecord, *, read_data: bool) -> None:
        self.ctx = ctx
        self.version = version
        self.read_data = read_data
        self.regions = ctx.replicas.regions
        self.several = len(self.regions) > 1
        self.problems: list[FileProblem] = []
        # Regions that could not be checked (down, hung): a warning, not damage.
        self.unchecked: dict[str, str] = {}
        if self.several:
            for region in self.regions:
                condition = ctx.replicas.health.unavailable(region.name)
                if condition is not None:
                    self.unchecked[region.name] = condition.describe()
        self.placements: list[PlacementRecord] = []
        self.report = ReadReport()
        self.checked = 0
        self.objects: list[tuple[str, str, int | None, str, str]] = [
            (MANIFEST, version.digest, None, f"manifest of {version.ref}", "manifest")
        ]
        self.objects += [(BLOB, f.digest, f.size, f.path, f.path) for f in version.files]

    def manifest(self) -> None:
        try:
            manifest, _signer = load_manifest(self.ctx, self.version, self.report)
            expected = {(f.path, f.size, f.digest) for f in manifest.files}
            recorded = {(f.path, f.size, f.digest) for f in self.version.files}
            if expected != recorded:
                self.problems.append(
                    FileProblem("manifest", "catalog and manifest list other files")
                )
        except RegistryError as error:
            self.problems.append(FileProblem("manifest", str(error)))

    def copies(self, kind: str, digest: str, size: int | None, what: str, path: str) -> None:
        """Every region's copy of one object: present, its size, its own key slot opening it;
        with `read_data` and several regions, read back against the recorded checksum."""
        checksum = placed(self.ctx, kind, digest)[1] if self.several else None
        for region in self.regions:
            if self.several and region.name in self.unchecked:
                continue
            try:
                self._copy(region, kind, digest, size, what, path, checksum)
            except (StorageError, KmsUnreachableError) as error:
                if not self.several:
                    self.problems.append(FileProblem(path, str(error)))
                else:
                    # Another region serves the version; this one is checked when back.
                    self.unchecked.setdefault(region.name, str(error))
                    if fresh_failure(error):
                        self.ctx.replicas.mark_down(region, error)
            except RegistryError as error:
                where = f"{region.name}: {error}" if self.several else str(error)
                self.problems.append(FileProblem(path, where))
                if isinstance(error, IntegrityError):
                    self._place(region, kind, digest, BAD, None, str(error))

    def _copy(
        self,
        region: Region,
        kind: str,
        digest: str,
        size: int | None,
        what: str,
        path: str,
        checksum: str | None,
    ) -> None:
        if size is not None:
            region.store.read_header(kind, digest, size=size, what=what)
        # The store's own key slot (what a catalog rebuild relies on) must exist and open the
        # object, whatever the catalog's copy says.
        region.store.check_slot(kind, digest, what=what)
        if not (self.read_data and self.several):
            return
        outcome = self.ctx.replicas.check(
            region,
            kind,
            digest,
            known=self.ctx.catalog.key_slots(digest, kind),
            checksum=checksum,
            what=what,
        )
        self._place(region, kind, digest, outcome.state, outcome.checksum, outcome.detail)
        if outcome.state == PENDING:
            self.unchecked.setdefault(region.name, outcome.detail)
        elif outcome.state != VERIFIED:
            self.problems.append(FileProblem(path, f"{region.name}: {outcome.detail}"))

    def _place(
        self,
        region: Region,
        kind: str,
        digest: str,
        state: str,
        checksum: str | None,
        detail: str,
    ) -> None:
        name = region.store.object_name(kind, digest)
        self.placements.append(
            PlacementRecord(digest, kind, region.name, name, state, checksum, detail)
        )

    def contents(self, digest: str, size: int, what: str, path: str, progress: Progress) -> None:
        """With `read_data`, a file decrypted and re-hashed (from whichever region serves it)."""
        try:
            if not self.read_data:
                progress.advance(1)
                return
            for chunk in self.ctx.replicas.open(
                BLOB,
                digest,
                known=self.ctx.catalog.key_slots(digest, BLOB),
                size=size,
                what=what,
                report=self.report,
                chunks_per_read=self.ctx.home.chunks_per_read,
            ):
                progress.advance(len(chunk))
            self.checked += size
        except RegistryError as error:
            self.problems.append(FileProblem(path, str(error)))

    def finish(self) -> VerifyReport:
        if self.several:
            # Read from another region instead: the file is fine, its copy there is not.
            paths = {digest: path for _kind, digest, _size, _what, path in self.objects}
            for (_kind, digest, region_name), detail in sorted(self.report.bad.items()):
                if detail.startswith(("unreachable", "hung")):
                    self.unchecked.setdefault(region_name, detail)
                else:
                    where = paths.get(digest, digest)
                    self.problems.append(FileProblem(where, f"{region_name}: {detail}"))
        record_bad_copies(self.ctx, self.report)
        if self.placements:
            self.ctx.catalog.record_placements(self.placements)
        return VerifyReport(
            self.version,
            self.read_data,
            len(self.version.files),
            self.checked,
            tuple(self.problems),
            tuple(f"{name}: {detail}" for name, detail in sorted(self.unchecked.items())),
        )
