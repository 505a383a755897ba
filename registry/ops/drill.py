"""Restore drills: decrypt and verify what one region alone holds, model by model, as a restore
would, and record when the backups were last proven.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

from registry import manifest as manifests
from registry.blobstore import BLOB, MANIFEST
from registry.crypto import sealed
from registry.errors import (
    IntegrityError,
    InvalidInputError,
    KmsUnreachableError,
    NotFoundError,
    RegistryError,
    StorageError,
)
from registry.manifest import ManifestFile
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.journaling import guard_reads
from registry.ops.queries import resolve
from registry.records import (
    VersionRecord,
)
from registry.refs import (
    validate_alias,
)
from registry.replication import (
    ReadReport,
    ReplicaSet,
)
from registry.reports import (
    DrillModel,
    DrillReport,
)
from registry.safetensors_header import parse_header


@requires("drill")
def drill(
    ctx: Context,
    *,
    region: str | None = None,
    alias: str = "production",
    sample: int | None = None,
    progress: Progress | None = None,
) -> DrillReport:
    """A restore drill: as if every other region were gone, restore from `region` alone
    (default: the last in read order, the one furthest from the primary) each model's
    `alias` (its newest version when it has none): its manifest authenticated with that
    region's own key slot and its signature checked, every file decrypted and re-hashed
    (with `sample`, that many random chunks of each file, authenticated), and every
    safetensors header parsed and compared with the manifest's. Timed per model and in
    total; audited (`drill`), so when the backups were last proven is on record. Only the
    drilled region is asked anything: the others may be down or hung."""
    guard_reads(ctx)
    validate_alias(alias)
    if sample is not None and sample < 1:
        raise InvalidInputError("--sample is a number of chunks per file, at least 1")
    chosen = ctx.replicas.regions[-1] if region is None else None
    for candidate in ctx.replicas.regions:
        if candidate.name == region:
            chosen = candidate
    if chosen is None:
        names = ", ".join(r.name for r in ctx.replicas.regions)
        raise NotFoundError(f"no region {region!r}", hint=f"the regions are {names}")
    models = [m for m in ctx.catalog.models() if m.version_count]
    if not models:
        raise NotFoundError("the registry has no versions to drill")
    try:
        # The region's marker and wrapped naming key: what a rebuild from it needs first.
        chosen.store.check_claim()
    except RegistryError as error:
        raise StorageError(
            f"region {chosen.name} cannot be drilled: {error}",
            hint="check it with `model-registry regions status`",
        ) from None
    alone = ReplicaSet([chosen], workers=ctx.replicas.workers, deadlines=ctx.settings.deadlines)
    started = time.perf_counter()
    at = datetime.now(UTC)
    results = []
    progress = progress or NoProgress()
    progress.begin("drilling", len(models))
    for model in models:
        results.append(_drill_model(ctx, model.name, alone, alias=alias, sample=sample))
        progress.advance(1)
    progress.end()
    report = DrillReport(
        chosen.name,
        "all" if sample is None else f"sample:{sample}",
        tuple(results),
        time.perf_counter() - started,
        at,
    )
    ctx.catalog.audit(
        ctx.actor,
        "drill",
        "registry",
        {
            "region": chosen.name,
            "mode": report.mode,
            "ok": report.ok,
            "seconds": round(report.seconds, 3),
            "models": {m.name: {"ref": m.ref, "ok": m.ok} for m in results},
            "problems": [f"{m.name}: {p}" for m in results for p in m.problems],
        },
    )
    return report


def _drill_model(
    ctx: Context, name: str, alone: ReplicaSet, *, alias: str, sample: int | None
) -> DrillModel:
    started = time.perf_counter()
    via, checked, files = alias, 0, 0
    problems: list[str] = []
    ref = ""
    try:
        try:
            version = resolve(ctx, f"{name}:{alias}")
        except NotFoundError:
            version, via = resolve(ctx, name), "newest"
        ref = version.ref
        what = f"manifest of {version.ref}"
        data = alone.read_bytes(MANIFEST, version.digest, known=(), what=what, report=ReadReport())
        manifest, _signer = manifests.parse_envelope(
            data,
            expected_digest=version.digest,
            trusted=ctx.settings.trusted_signers,
            what=what,
        )
        for entry in manifest.files:
            files += 1
            try:
                checked += _drill_file(ctx, alone, version, entry, sample=sample)
            except (StorageError, KmsUnreachableError):
                raise  # the region (or its KMS) went away: the drill cannot go on
            except RegistryError as error:
                problems.append(f"{entry.path}: {error}")
    except (StorageError, KmsUnreachableError):
        raise
    except RegistryError as error:
        problems.append(str(error))
    return DrillModel(
        name, ref, via, files, checked, time.perf_counter() - started, tuple(problems)
    )


def _drill_file(
    ctx: Context,
    alone: ReplicaSet,
    version: VersionRecord,
    entry: ManifestFile,
    *,
    sample: int | None,
) -> int:
    """Restore one file from one region: returns the plaintext bytes verified."""
    what = f"{version.ref}: {entry.path}"
    region = alone.regions[0]
    head = bytearray()
    header_end = 0 if entry.safetensors is None else entry.safetensors.data_offset
    if sample is None:
        done = 0
        for chunk in alone.open(
            BLOB, entry.digest, known=(), size=entry.size, what=what, report=ReadReport()
        ):
            if len(head) < header_end:
                head += chunk
            done += len(chunk)
        _drill_header(entry, bytes(head[:header_end]), what=what)
        return done
    # A sample: the chunks holding the header, and `sample` others at random, authenticated.
    key, _slots = alone.unwrap_any(BLOB, entry.digest, known=(), what=what)
    name = region.store.object_name(BLOB, entry.digest)
    driver = region.store.driver
    # The stored size against the header (a truncation a sample might miss), then the key.
    stored = region.store.read_header(BLOB, entry.digest, size=entry.size, what=what)
    opener = sealed.Opener(key, entry.digest, stored.pack(), what=what)
    header = opener.header
    first_chunks = set(range(0, max(1, -(-header_end // header.chunk_size))))
    others = sorted(set(range(header.chunk_count)) - first_chunks)
    picked = sorted(first_chunks | set(random.sample(others, min(sample, len(others)))))
    done = 0
    for index in picked:
        offset, length = header.chunk_range(index, index)
        data = driver.get_range(name, offset, length)
        out = bytearray(header.chunk_plain_size(index))
        opener.open_chunk(index, data, out)
        if index in first_chunks:
            head += out
        done += len(out)
    _drill_header(entry, bytes(head[:header_end]), what=what)
    return done


def _drill_header(entry: ManifestFile, head: bytes, *, what: str) -> None:
    """The file's safetensors header, parsed from the restored bytes, is the manifest's."""
    if entry.safetensors is None:
        return
    parsed = parse_header(head[8:], file_size=entry.size, display_name=what)
    if parsed.to_manifest() != entry.safetensors.to_manifest():
        raise IntegrityError(f"{what}: its safetensors header differs from the manifest's")
