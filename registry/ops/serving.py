"""Serving reads to the loader and the REST API: data keys of a version's objects (and the key
broker, audited with the unwraps it took, naming each object's id), readers and ranges of sealed
ciphertext, sealed sizes, the audit of a load, what a server reports of itself (its regions, when
the backups were last proven), and the role check the API's guard asks before it reads a request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from registry.blobstore import BLOB, MANIFEST
from registry.crypto import sealed
from registry.errors import (
    NotFoundError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import bad_copies, record_bad_copies
from registry.ops.journaling import drain_after_reads, guard_reads
from registry.ops.queries import resolve
from registry.records import (
    VersionRecord,
)
from registry.replication import (
    BlobReader,
    ReadReport,
)
from registry.reports import (
    BrokeredKeys,
    DrillProof,
    RecoveryProofs,
    ScrubProof,
    SealedObject,
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


def object_ids(
    ctx: Context, objects: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, int]]:
    """(kind, digest) -> (object id, sealed size) of each of `objects`: where
    `/v1/objects/{id}` serves it, the same in every region."""
    return {
        (kind, digest): (ctx.store.object_id(kind, digest), sealed_size(ctx, kind, digest))
        for kind, digest in objects
    }


@requires("load")
def blob_key(ctx: Context, version: VersionRecord, digest: str) -> bytes:
    """The data key of one of a version's files, unwrapped (counted)."""
    if all(f.digest != digest for f in version.files):
        raise NotFoundError(f"{version.ref} has no file with digest {digest}")
    # Compared only: the entries waiting to be copied out are copied by record_load, once the
    # load has its tensors, not before its first byte.
    guard_reads(ctx, write=False)
    return _data_key(ctx, BLOB, digest, what=f"{version.ref}: {digest}")


def _data_key(ctx: Context, kind: str, digest: str, *, what: str) -> bytes:
    """An object's data key from the first region whose slot opens it (counted)."""
    known = ctx.reads.key_slots(digest, kind)
    key, _slots = ctx.replicas.unwrap_any(kind, digest, known=known, what=what)
    return key


@requires("load")
def blob_reader(ctx: Context, digest: str, report: ReadReport, *, what: str) -> BlobReader:
    """Sealed bytes of a stored file: each range from the first region that serves it, a
    damaged range read again from the next (what the loader reads through)."""
    return ctx.replicas.source(BLOB, digest, report, what=what)


@requires("load")
def prepare_load_record(ctx: Context) -> None:
    """A load has its first tensor. Until then it needed only the catalog's reads
    (`catalog.lite`, where the catalog is the usual SQLite file); its audit entry
    (`record_load`) needs the catalog through SQLAlchemy, whose first use costs 20-40 ms: paid
    on a thread of its own while the rest streams, not after the last tensor."""
    ctx.home.opened_catalog.in_background(lambda catalog: catalog.prepare())


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
    drain_after_reads(ctx)


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


@requires("read-sealed")
def sealed_object(ctx: Context, ref: str, path: str | None = None) -> SealedObject:
    """The sealed form of one file of a version (`path`), or of its manifest (None): what
    ranged ciphertext reads of it address."""
    version = resolve(ctx, ref)
    if path is None:
        kind, digest = MANIFEST, version.digest
    else:
        entry = next((f for f in version.files if f.path == path), None)
        if entry is None:
            raise NotFoundError(f"{version.ref} has no file {path!r}")
        kind, digest = BLOB, entry.digest
    return SealedObject(version, kind, digest, sealed_size(ctx, kind, digest))


@requires("read-sealed")
def read_sealed(ctx: Context, target: SealedObject, offset: int, length: int) -> bytes:
    """Sealed bytes [offset, offset + length) of `target` (fewer at its end), each range from
    the first region that serves it: ciphertext only, decrypted and verified by the reader."""
    # With the sealed size: a copy with bytes appended is refused, as a local read refuses it.
    return ctx.replicas.read_ciphertext(
        target.kind, target.digest, offset, length, report=ReadReport(), size=target.size
    )


@requires("key-broker")
def broker_keys(ctx: Context, ref: str, *, token: str | None = None) -> BrokeredKeys:
    """The key broker: the data keys of a version's manifest and files, with their object
    ids and sealed sizes (where `/v1/objects/{id}` serves each), audited (`key-broker`: the
    version, the keys handed out, the `key_unwraps` this call took and the requesting
    `token`)."""
    version = resolve(ctx, ref)
    with ctx.counting_unwraps() as unwraps:
        keys = data_keys(ctx, version)
    objects = object_ids(ctx, keys)
    details: dict[str, Any] = {
        "version": version.number,
        "keys": len(keys),
        "key_unwraps": unwraps.value,
    }
    if token is not None:
        details["token"] = token
    ctx.catalog.audit(ctx.actor, "key-broker", version.name, details)
    return BrokeredKeys(version, keys, unwraps.value, objects)


@requires("status")
def region_names(ctx: Context) -> tuple[str, ...]:
    """The configured regions' names, in read preference order (nothing is asked of them)."""
    return tuple(region.name for region in ctx.replicas.regions)


@requires("status")
def recovery_proofs(ctx: Context) -> RecoveryProofs:
    """The last restore drill from each configured region and the last full scrub, from the
    audit trail (any process or host may have run them)."""
    regions = set(region_names(ctx))
    drills: dict[str, DrillProof] = {}
    for event in ctx.catalog.audit_events(action="drill", subject="registry", limit=200):
        region = str(event.details.get("region"))
        if region in regions and region not in drills:
            drills[region] = DrillProof(
                region,
                event.at,
                bool(event.details.get("ok")),
                float(event.details.get("seconds", 0.0)),
            )
        if len(drills) == len(regions):
            break
    scrub = None
    for event in ctx.catalog.audit_events(action="scrub", subject="registry", limit=200):
        details = event.details
        if details.get("sample") is None and len(details.get("regions", [])) == len(regions):
            # Only a full scrub of every region says something about all the copies.
            problems = float(details.get("problems", 0)) + len(details.get("unchecked", []))
            scrub = ScrubProof(event.at, problems)
            break
    return RecoveryProofs(tuple(drills.values()), scrub)


@requires("permissions")
def check_permission(ctx: Context, operation: str) -> None:
    """Raise PermissionDeniedError unless this context's role may do `operation` (a key of
    `access.PERMISSIONS`): the rule the operation itself applies, asked before anything is
    read or looked up (the REST API's guards)."""
    ctx.require(operation)
