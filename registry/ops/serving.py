"""Serving reads to the loader and the REST API: data keys of a version's objects, readers of
sealed ranges, sealed sizes, and the audit of a load.
"""

from __future__ import annotations

import logging
from typing import Any

from registry.blobstore import BLOB, MANIFEST
from registry.crypto import sealed
from registry.errors import (
    NotFoundError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import bad_copies, record_bad_copies
from registry.ops.journaling import guard_reads
from registry.records import (
    VersionRecord,
)
from registry.replication import (
    BlobReader,
    ReadReport,
)

log = logging.getLogger("model_registry")


@requires("load")
def sealed_size(ctx: Context, kind: str, digest: str) -> int:
    """The size of an object's sealed form (what ranged ciphertext reads address)."""
    if kind == BLOB:
        blob = ctx.catalog.blob(digest)
        if blob is None or blob.swept_at is not None:
            raise NotFoundError(f"blob {digest} is not stored")
        return blob.sealed_size
    head = ctx.replicas.read_ciphertext(kind, digest, 0, sealed.HEADER_SIZE, report=ReadReport())
    return sealed.SealedHeader.unpack(head, what=f"{kind} {digest}").sealed_size


@requires("load")
def blob_key(ctx: Context, version: VersionRecord, digest: str) -> bytes:
    """The data key of one of a version's files, unwrapped (counted)."""
    if all(f.digest != digest for f in version.files):
        raise NotFoundError(f"{version.ref} has no file with digest {digest}")
    guard_reads(ctx)
    return _data_key(ctx, BLOB, digest, what=f"{version.ref}: {digest}")


def _data_key(ctx: Context, kind: str, digest: str, *, what: str) -> bytes:
    """An object's data key from the first region whose slot opens it (counted)."""
    known = ctx.catalog.key_slots(digest, kind)
    key, _slots = ctx.replicas.unwrap_any(kind, digest, known=known, what=what)
    return key


@requires("load")
def blob_reader(ctx: Context, digest: str, report: ReadReport, *, what: str) -> BlobReader:
    """Sealed bytes of a stored file: each range from the first region that serves it, a
    damaged range read again from the next (what the loader reads through)."""
    return ctx.replicas.source(BLOB, digest, report, what=what)


@requires("load")
def record_load(
    ctx: Context, version: VersionRecord, details: dict[str, Any], report: ReadReport
) -> None:
    """Audit a load by the loader (like a pull: who read which version), and record the
    copies it found damaged or missing (for `regions status` and `replicate --repair`),
    with a warning per region it had to read around."""
    report.settle()
    record_bad_copies(ctx, report)
    for line in bad_copies(report):
        log.warning("load of %s read around %s", version.ref, line)
    ctx.catalog.audit(
        ctx.actor,
        "load",
        version.name,
        {"version": version.number, **details, "bad_copies": bad_copies(report)},
    )


@requires("load")
def data_keys(ctx: Context, version: VersionRecord) -> dict[tuple[str, str], bytes]:
    """The data keys of a version's manifest and files, unwrapped (the key broker's
    answer); each unwrap is counted."""
    guard_reads(ctx)
    keys: dict[tuple[str, str], bytes] = {}
    objects = [(MANIFEST, version.digest)] + [(BLOB, f.digest) for f in version.files]
    for kind, digest in objects:
        if (kind, digest) not in keys:
            keys[(kind, digest)] = _data_key(
                ctx, kind, digest, what=f"{version.ref}: {kind} {digest}"
            )
    return keys
