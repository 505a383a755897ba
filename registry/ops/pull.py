"""Pulls: write a version's files under a directory, byte-identical and verified, through a
staging directory that leaves the destination untouched on failure; audited with the key
unwraps it took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from registry.blobstore import BLOB
from registry.crypto import sealed
from registry.manifest import ManifestFile
from registry.materialize import FileOpener, NoProgress, Progress, pull_files
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import bad_copies, record_bad_copies
from registry.ops.journaling import guard_reads
from registry.ops.queries import load_manifest, resolve
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
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
) -> PullResult:
    """Write the files of a version (those `include` matches, all by default, less those
    `exclude` matches) under `destination`, byte-identical and verified.

    Files are decrypted into a staging directory inside `destination` and moved to their
    final names only after every file has been authenticated and re-hashed; on a failure
    the staging directory is removed and `destination` is left as it was. Files already there
    with the right bytes are kept; an interrupted pull's verified files are picked up by the
    next (`materialize.pull_files`).
    """
    progress = progress or NoProgress()
    with ctx.counting_unwraps() as unwraps:
        version = resolve(ctx, ref)
        guard_reads(ctx)
        report = ReadReport()
        try:
            manifest, _signer = load_manifest(ctx, version, report)
            pulled = pull_files(
                destination,
                manifest,
                lambda files: opening(ctx, files, report),
                force=force,
                include=include,
                exclude=exclude,
                progress=progress,
            )
        finally:
            report.settle()
            record_bad_copies(ctx, report)
        ctx.catalog.audit(
            ctx.actor,
            "pull",
            version.name,
            {
                "version": version.number,
                "digest": version.digest,
                "files": len(pulled.written),
                "unchanged": len(pulled.unchanged),
                "bytes": pulled.bytes,
                "key_unwraps": unwraps.value,
                "bad_copies": bad_copies(report),
            },
        )
    return PullResult(
        version,
        Path(destination).expanduser().absolute(),
        pulled.written,
        pulled.bytes,
        tuple(bad_copies(report)),
        pulled.unchanged,
    )


@contextmanager
def opening(
    ctx: Context, files: Sequence[ManifestFile], report: ReadReport
) -> Iterator[FileOpener]:
    """What decrypts and verifies `files`, in that order, for `write_verified` (a pull's,
    also a prepare's): on a latency-bound store their ranges are fetched ahead, across files."""
    chunks_per_read = ctx.home.chunks_per_read
    ahead = None
    if any(region.store.driver.latency_bound for region in ctx.replicas.regions):
        # Where every request is a round trip, the files' ranges are fetched ahead of their
        # decryption, across file boundaries: the next file's first ranges (all of a small
        # file) are there when it is opened. A local directory answers at once: no read-ahead.
        workers = ctx.replicas.workers
        ahead = ctx.replicas.read_ahead(
            report,
            budget=workers * chunks_per_read * ctx.settings.chunk_size,
            requests=workers,
        )
        for entry in files:
            chunk_size, sealed_size = _sealed_shape(ctx, entry)
            ahead.add(
                BLOB,
                entry.digest,
                sealed_size=sealed_size,
                chunk_size=chunk_size,
                chunks_per_read=chunks_per_read,
                what=entry.path,
            )

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
            chunks_per_read=chunks_per_read,
            on_chunk=on_chunk,
            ahead=ahead,
        )

    try:
        yield open_file
    finally:
        if ahead is not None:
            ahead.close()


def _sealed_shape(ctx: Context, entry: ManifestFile) -> tuple[int, int]:
    """The chunk size and sealed size of a file's blob as the catalog recorded them (else as
    this registry seals now): what a read-ahead plans its spans with. A wrong guess costs the
    read-ahead, never correctness (the header read decides)."""
    blob = ctx.catalog.blob(entry.digest)
    if blob is not None:
        return blob.chunk_size, blob.sealed_size
    chunk_size = ctx.settings.chunk_size
    chunks = max(1, -(-entry.size // chunk_size))
    return chunk_size, sealed.HEADER_SIZE + entry.size + sealed.TAG_SIZE * chunks
