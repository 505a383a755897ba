"""Reading the catalog: resolve a reference, list models and versions, show a version and its
signed manifest, and read or verify the audit trail.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from registry.errors import (
    IntegrityError,
    InvalidInputError,
    RegistryError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.records import (
    AuditRecord,
    AuditVerification,
    ModelRecord,
    VersionRecord,
)
from registry.refs import (
    parse_reference,
    validate_name,
)

# `ls` imports this module; what only `show` and the reads of stored manifests need (the
# manifest's parsing and its crypto, the stores) is imported where they are used.
if TYPE_CHECKING:
    from registry.crypto.signing import TrustedSigner
    from registry.manifest import Manifest
    from registry.replication import ReadReport
    from registry.reports import VersionDetails


@requires("read")
def resolve(ctx: Context, ref: str) -> VersionRecord:
    return ctx.reads.resolve(parse_reference(ref))


@requires("read")
def versions(ctx: Context, name: str, *, expired: bool = False) -> list[VersionRecord]:
    """The live versions of `name`, oldest first (with `expired`, tombstones too)."""
    return ctx.reads.versions(validate_name(name), expired=expired)


@requires("read")
def models(ctx: Context) -> list[ModelRecord]:
    return ctx.reads.models()


@requires("audit")
def audit_events(
    ctx: Context, *, subject: str | None = None, since: datetime | None = None, limit: int = 100
) -> list[AuditRecord]:
    if since is not None and since.tzinfo is None:
        raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
    if not 1 <= limit <= 100_000:
        raise InvalidInputError("limit must be 1..100000")
    if since is not None:
        try:
            # The catalog compares in UTC; year 1 east of UTC has no UTC form.
            since = since.astimezone(UTC)
        except OverflowError:
            raise InvalidInputError(
                "that time is outside the range of dates", hint="a date between years 1 and 9999"
            ) from None
    return ctx.catalog.audit_events(subject=subject, since=since, limit=limit)


@requires("audit")
def verify_audit(ctx: Context) -> AuditVerification:
    """Walk the tamper-evident audit chain (see `Catalog.verify_audit`), then hold it against
    each region's journal, the write-once copy the stores keep of every audit entry: a chain
    rewritten with its later hashes recomputed chains up, but differs from the journal. A
    region whose journal cannot be read fails the verification too (nothing anchors the chain
    there); entries newer than every journal's last are counted, not judged."""
    import functools

    from registry import journal
    from registry.blobstore import audit_links_mac
    from registry.crypto.keys import read_key_file
    from registry.errors import RegistryError
    from registry.replication import Region
    from registry.storage import deadline

    # The naming key alone, read here: the chain's check needs no key-encryption key.
    naming_key = read_key_file(ctx.home.settings.naming_key_file, label="naming key")
    chain = ctx.catalog.verify_audit(links_mac=functools.partial(audit_links_mac, naming_key))

    def read(region: Region) -> dict[int, dict[str, Any]] | str:
        try:
            ctx.replicas.claim(region)
            return journal.audit_rows(region.store)
        except RegistryError as error:
            return str(error)

    regions = list(ctx.replicas.regions)
    futures = [deadline.submit(functools.partial(read, r)) for r in regions]
    differences: list[str] = []
    compared: list[str] = []
    pending = 0
    for region, future in zip(regions, futures, strict=True):
        stored = future.result()
        if isinstance(stored, str):
            differences.append(f"region {region.name}: its journal could not be read: {stored}")
            continue
        found, behind = ctx.catalog.compare_audit(stored)
        compared.append(region.name)
        differences.extend(f"region {region.name}: {line}" for line in found)
        pending = behind if len(compared) == 1 else min(pending, behind)
    problem = chain.problem
    if chain.ok and differences:
        problem = (
            f"the catalog's audit trail differs from the stores' journal: {differences[0]}"
            + (f" (and {len(differences) - 1} more)" if len(differences) > 1 else "")
        )
    return dataclasses.replace(
        chain,
        ok=chain.ok and not differences,
        problem=problem,
        regions_compared=tuple(compared),
        differences=tuple(differences),
        not_in_journal=pending,
    )


@requires("read")
def show(ctx: Context, ref: str) -> VersionDetails:
    from registry.reports import VersionDetails

    version = resolve(ctx, ref)
    manifest, signer = load_manifest(ctx, version, cached=True)
    tags = tuple(t.tag for t in ctx.reads.version_tags(version.name, version.number))
    return VersionDetails(version, manifest, signer.name, tags)


def load_manifest(
    ctx: Context, version: VersionRecord, report: ReadReport | None = None, *, cached: bool = False
) -> tuple[Manifest, TrustedSigner]:
    """The version's manifest read back from the stores (authenticated, then cached in the
    catalog), or with `cached` the catalog's copy when it has one (`show`, which must not
    wait on a store); either way its digest is checked against the version and its
    signature against the trusted keys."""
    from registry import manifest as manifests

    what = f"manifest of {version.ref}"
    # The catalog's cached copy is checked exactly like the stored one (digest, signature by
    # a trusted key), so a catalog writer cannot slip in another manifest.
    data = ctx.reads.cached_manifest(version.digest) if cached else None
    fetched = data is None
    if data is None:
        from registry.blobstore import MANIFEST
        from registry.replication import ReadReport

        data = ctx.replicas.read_bytes(
            MANIFEST,
            version.digest,
            known=ctx.catalog.key_slots(version.digest, MANIFEST),
            what=what,
            report=report or ReadReport(),
        )
    manifest, signer = manifests.parse_envelope(
        data,
        expected_digest=version.digest,
        trusted=ctx.settings.trusted_signers,
        what=what,
    )
    if manifest.name != version.name:
        raise IntegrityError(f"{what}: names model {manifest.name}", path=what)
    if fetched and ctx.provisional is None:
        with contextlib.suppress(RegistryError):
            ctx.catalog.cache_manifest(version.digest, data)
    return manifest, signer
