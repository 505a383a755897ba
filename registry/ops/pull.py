"""Pulls: write a version's files under a directory, byte-identical and verified, through a
staging directory that leaves the destination untouched on failure; audited with the key
unwraps it took.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from registry.blobstore import BLOB
from registry.errors import (
    InvalidInputError,
)
from registry.manifest import Manifest, ManifestFile
from registry.materialize import NoProgress, Progress, plan_targets, storage_error, write_verified
from registry.ops.access import requires
from registry.ops.context import Context, UnwrapCount
from registry.ops.copies import bad_copies, record_bad_copies
from registry.ops.journaling import guard_reads
from registry.ops.queries import load_manifest, resolve
from registry.records import (
    VersionRecord,
)
from registry.replication import (
    ReadReport,
)
from registry.reports import (
    PullResult,
)


@requires("pull")
def pull(
    ctx: Context,
    ref: str,
    destination: str | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> PullResult:
    """Write every file of a version under `destination`, byte-identical and verified.

    Files are decrypted into a staging directory inside `destination` and moved to their
    final names only after every file has been authenticated and re-hashed; on any failure
    the staging directory is removed and `destination` is left as it was.
    """
    progress = progress or NoProgress()
    with ctx.counting_unwraps() as unwraps:
        version = resolve(ctx, ref)
        guard_reads(ctx)
        report = ReadReport()
        try:
            return _pull(
                ctx,
                version,
                report,
                destination,
                force=force,
                progress=progress,
                unwraps=unwraps,
            )
        finally:
            report.settle()
            record_bad_copies(ctx, report)


def _pull(
    ctx: Context,
    version: VersionRecord,
    report: ReadReport,
    destination: str | Path,
    *,
    force: bool,
    progress: Progress,
    unwraps: UnwrapCount,
) -> PullResult:
    manifest, _signer = load_manifest(ctx, version, report)
    dest = Path(destination).expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise InvalidInputError(f"destination {dest} exists and is not a directory")
    targets = plan_targets(dest, manifest, force=force)
    created_dest = not dest.exists()
    try:
        _pull_into(ctx, dest, targets, manifest, report, force=force, progress=progress)
    except BaseException as error:
        # A destination this pull created goes again, whatever the failure.
        if created_dest:
            shutil.rmtree(dest, ignore_errors=True)
        if isinstance(error, OSError):
            raise storage_error(error, dest) from None
        raise
    report.settle()
    ctx.catalog.audit(
        ctx.actor,
        "pull",
        version.name,
        {
            "version": version.number,
            "digest": version.digest,
            "files": len(manifest.files),
            "bytes": manifest.total_size,
            "key_unwraps": unwraps.value,
            "bad_copies": bad_copies(report),
        },
    )
    return PullResult(
        version,
        dest,
        tuple(entry.path for entry in manifest.files),
        manifest.total_size,
        tuple(bad_copies(report)),
    )


def _pull_into(
    ctx: Context,
    dest: Path,
    targets: dict[str, Path],
    manifest: Manifest,
    report: ReadReport,
    *,
    force: bool,
    progress: Progress,
) -> None:
    def open_file(
        entry: ManifestFile, on_chunk: Callable[[int, memoryview], None]
    ) -> Iterator[memoryview]:
        return ctx.replicas.open(
            BLOB,
            entry.digest,
            known=ctx.catalog.key_slots(entry.digest, BLOB),
            size=entry.size,
            what=entry.path,
            report=report,
            chunks_per_read=ctx.home.chunks_per_read,
            on_chunk=on_chunk,
        )

    write_verified(dest, targets, manifest, open_file, force=force, progress=progress)
