"""Prepares: a version's small files written into a folder, verified like a pull, and pinned
(`registry.prepared`), for serving engines that need a local model folder; audited with the key
unwraps it took.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from registry.materialize import NoProgress, Progress, storage_error
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import bad_copies, record_bad_copies
from registry.ops.journaling import guard_reads
from registry.ops.pull import opening
from registry.ops.queries import load_manifest, resolve
from registry.prepared import PrepareResult, prepare_folder, select
from registry.replication import ReadReport


@requires("pull")
def prepare(
    ctx: Context,
    ref: str,
    destination: str | Path,
    *,
    include: Sequence[str] = (),
    progress: Progress | None = None,
) -> PrepareResult:
    """Write a version's non-weight files (and those `include` matches) into `destination`,
    verified, with `registry.json` pinning the resolved version."""
    with ctx.counting_unwraps() as unwraps:
        version = resolve(ctx, ref)
        guard_reads(ctx)
        report = ReadReport()
        try:
            manifest, _signer = load_manifest(ctx, version, report)
            wanted, _streamed, _withheld = select(manifest, include)
            with opening(ctx, wanted, report) as open_file:
                try:
                    result = prepare_folder(
                        destination,
                        version,
                        manifest,
                        open_file,
                        requested=ref,
                        include=include,
                        progress=progress or NoProgress(),
                    )
                except OSError as error:
                    raise storage_error(error, Path(destination)) from None
        finally:
            report.settle()
            record_bad_copies(ctx, report)
    ctx.catalog.audit(
        ctx.actor,
        "prepare",
        version.name,
        {
            "version": version.number,
            "digest": version.digest,
            "requested": ref,
            "files": list(result.written),
            "bytes": result.bytes,
            "key_unwraps": unwraps.value,
            "bad_copies": bad_copies(report),
        },
    )
    return result
