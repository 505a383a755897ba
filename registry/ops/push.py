"""Pushes: hash, seal and write a model's files and its signed manifest to every region, then
commit the version in one catalog transaction, in the order that makes a crash harmless.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from registry import journal
from registry import manifest as manifests
from registry.blobstore import BLOB, MANIFEST, seal_bytes
from registry.crypto import sealed
from registry.digest import FileDigests, hash_file_chunks
from registry.errors import (
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    InvalidModelError,
    RegistryError,
    StorageError,
)
from registry.manifest import ChunkRoot, Manifest, ManifestFile, take_signature
from registry.materialize import NoProgress, Progress
from registry.ops.access import requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.copies import (
    checkpoint,
    choose_key,
    placements,
    regions_ready,
    require_quorum,
    take_lease,
    write_copies,
)
from registry.ops.holds import legal_hold_copies
from registry.ops.journaling import journaled
from registry.ops.provenance import (
    resolve_provenance,
    with_signature,
)
from registry.records import (
    FileRecord,
    NewBlob,
    NewVersion,
    PlacementRecord,
    VersionRecord,
)
from registry.refs import (
    validate_name,
)
from registry.replication import (
    PENDING,
    VERIFIED,
    Region,
    Replicated,
)
from registry.replication.write import DataKey
from registry.reports import (
    PushResult,
)
from registry.storage.deadline import carried

if TYPE_CHECKING:
    from registry.ops.pushstart import EarlyDigests
    from registry.provenance import Provenance, ProvenanceRequest

# Files sealed and written at once. A local directory: two, so that one file's final fsync
# overlaps with sealing the next. Remote regions: more, so that each object's small requests
# (key slot, write-once check, lock, read-backs) overlap with the others' transfers; their parts
# share the S3 driver's part slots, so memory stays bounded.
FILES_AT_ONCE = 2
FILES_AT_ONCE_REMOTE = 8


@requires("push")
@journaled
def push(
    ctx: Context,
    name: str,
    path: str | Path,
    *,
    message: str = "",
    write_quorum: int | None = None,
    progress: Progress | None = None,
    early: EarlyDigests | None = None,
    follow_symlinks: bool = False,
    provenance: ProvenanceRequest | None = None,
    signature: bytes | None = None,
) -> PushResult:
    """Push a model directory (or one .safetensors file) as a new version of `name`.

    Everything is validated before anything is stored. Content already stored is not
    uploaded again; identical content returns the existing version (created=False). Every
    object goes to every region; the push succeeds once `write_quorum` regions (default: the
    configured quorum, else all) hold a verified copy of each, and the copies that did not
    complete are recorded as pending, for `replicate`. `early`: the hashing pass begun before
    this push was imported (`ops.pushstart`), taken when it hashed these very files.
    `follow_symlinks`: store what links that lead outside `path` point at (else refused).
    `provenance` is stated in the signed manifest (its base model pinned by digest);
    `signature`, an OpenSSF model signature of the files, is checked against their digests
    and the trusted OpenSSF signers, and its signer recorded there too (`ops.provenance`).
    """
    progress = progress or NoProgress()
    stated, quorum = push_checks(
        ctx, name, provenance=provenance, write_quorum=write_quorum, message=message
    )
    # The checks of the catalog against the stores passed: the stores may prepare for the
    # writes (an S3 driver probes its server's write-once behaviour) while the files are hashed.
    ctx.replicas.expect_writes()
    files = manifests.collect(Path(path), follow_symlinks=follow_symlinks)
    files, signature = take_signature(files, signature)
    chunk_size = ctx.settings.chunk_size
    hashed = early.digests(files, chunk_size=chunk_size) if early is not None else None
    if hashed is None:
        hashed = _hash_files(files, chunk_size=chunk_size, progress=progress)
    manifest = manifest_for(
        ctx, name, _manifest_files(files, hashed), stated=stated, signature=signature
    )
    digest = manifest.digest
    unique: dict[str, manifests.LocalFile] = {}
    for entry, found in zip(files, hashed, strict=True):
        unique.setdefault(found.digest, entry)
    # From here until the commit, gc leaves every object of this push alone.
    lease = take_lease(ctx, [(d, BLOB) for d in unique] + [(digest, MANIFEST)], what=f"push {name}")
    try:
        return _push_leased(
            ctx,
            name,
            files,
            unique,
            manifest,
            lease=lease,
            message=message,
            quorum=quorum,
            progress=progress,
        )
    finally:
        # Dropped by the commit itself; after a failure, here.
        ctx.catalog.drop_lease(lease)


def push_checks(
    ctx: Context,
    name: str,
    *,
    provenance: ProvenanceRequest | None,
    write_quorum: int | None,
    message: str,
) -> tuple[Provenance | None, int]:
    """What every push checks before it reads a byte: the name, the provenance stated (its
    base model resolved), the quorum, the message, and that this home's signing key is
    trusted. Returns the provenance and the quorum."""
    validate_name(name)
    stated = resolve_provenance(ctx, provenance)
    count = len(ctx.replicas.regions)
    quorum = write_quorum if write_quorum is not None else ctx.settings.write_quorum or count
    if not 1 <= quorum <= count:
        raise InvalidInputError(f"write quorum {quorum} is not between 1 and {count} (the regions)")
    check_text("message", message, limit=65536)
    check_text("actor", ctx.actor, limit=256)
    if ctx.signer.key_id not in {s.key_id for s in ctx.settings.trusted_signers}:
        raise ConfigurationError(
            f"this home's signing key {ctx.signer.key_id} is not among the trusted signers, "
            "so nothing it pushed could be read back",
            hint="trust it with `model-registry keys trust NAME PUBLIC_KEY` "
            "(`model-registry keys show` prints it)",
        )
    return stated, quorum


def _manifest_files(
    files: Sequence[manifests.LocalFile], hashed: Sequence[FileDigests]
) -> list[ManifestFile]:
    return [
        ManifestFile(
            entry.path,
            entry.size,
            found.digest,
            entry.safetensors,
            ChunkRoot(found.chunk_size, found.chunk_root),
            found.sha256,
        )
        for entry, found in zip(files, hashed, strict=True)
    ]


def manifest_for(
    ctx: Context,
    name: str,
    entries: list[ManifestFile],
    *,
    stated: Provenance | None,
    signature: bytes | None,
) -> Manifest:
    """The version's manifest: its files with their digests, and the provenance stated (with
    the OpenSSF signer of `signature`, checked); or the manifest of an older version of the
    very same files when nothing is stated."""
    if signature is not None:
        stated = with_signature(ctx, stated, signature, entries)
    manifest = manifests.build_manifest(name, entries, stated)
    if manifest.provenance is None:
        # The same files pushed before SHA-256 digests or chunk roots were recorded are that
        # version (a re-push repairs it), not a new one. A push that states provenance is a
        # version of its own.
        for older in (manifest.without_sha256(), manifest.without_chunk_roots()):
            if ctx.catalog.find_version(name, older.digest) is not None:
                manifest = older
                break
    return manifest


def _hash_files(
    files: Sequence[manifests.LocalFile],
    *,
    chunk_size: int,
    progress: Progress,
) -> list[FileDigests]:
    """Every file's digest, chunk root and SHA-256, in one read each."""
    progress.begin("hashing", sum(entry.size for entry in files))
    hashed: list[FileDigests] = []
    for entry in files:
        try:
            found = hash_file_chunks(
                entry.source,
                chunk_size=chunk_size,
                on_progress=progress.advance,
                starts_with=entry.validated,
            )
        except ValueError:
            raise InvalidModelError(
                f"{entry.path} changed while it was being pushed", hint="push it again"
            ) from None
        except OSError as error:
            raise InvalidModelError(f"cannot read {entry.path}: {error.strerror}") from None
        hashed.append(found)
    progress.end()
    return hashed


def _push_leased(
    ctx: Context,
    name: str,
    files: Sequence[manifests.LocalFile],
    unique: dict[str, manifests.LocalFile],
    manifest: Manifest,
    *,
    lease: str,
    message: str,
    quorum: int,
    progress: Progress,
) -> PushResult:
    require_reachable(ctx, quorum)
    # Also what the push may seal anew: objects only retired keys' slots open (leftovers of
    # a process refused after a key rotation, or content only a lost key opened).
    retired = refuse_retired_keys(ctx)
    total = sum(entry.size for entry in files)
    digest = manifest.digest
    what = f"manifest of {name}"
    # The manifest's data key (its slot stored: harmless alone) is chosen while the files are
    # written, so that its own write, which must wait for theirs, starts with its data.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="push-key") as early:
        manifest_key = early.submit(
            carried(
                functools.partial(choose_key, ctx, MANIFEST, digest, what=what, retired=retired)
            )
        )
        blobs, stored = _store_files(
            ctx, files, unique, quorum=quorum, retired=retired, progress=progress
        )
        try:
            key = manifest_key.result()
        except RegistryError:
            key = None  # chosen again by the write itself, which reports what fails
    return finish_push(
        ctx,
        name,
        manifest,
        blobs,
        stored,
        total=total,
        file_count=len(files),
        lease=lease,
        message=message,
        quorum=quorum,
        retired=retired,
        manifest_key=key,
    )


def finish_push(
    ctx: Context,
    name: str,
    manifest: Manifest,
    blobs: Sequence[Replicated],
    stored: Sequence[NewBlob],
    *,
    total: int,
    file_count: int,
    lease: str,
    message: str,
    quorum: int,
    retired: frozenset[str],
    manifest_key: DataKey | None = None,
) -> PushResult:
    """The end of a push whose files are stored (`blobs`, `stored`): its signed manifest
    written to every region, the version record beside it, the catalog commit, the legal
    hold on copies of a held version written anew."""
    count = len(ctx.replicas.regions)
    digest = manifest.digest
    what = f"manifest of {name}"
    uploaded = sum(new.size for new, blob in zip(stored, blobs, strict=True) if blob.uploaded)
    envelope = manifest.signed_envelope(ctx.signer)
    chunk_size = ctx.settings.chunk_size
    stored_manifest = write_copies(
        ctx,
        MANIFEST,
        digest,
        what=what,
        seal=lambda data_key: seal_bytes(data_key, digest, envelope, chunk_size=chunk_size),
        read_back=count > 1,
        retired=retired,
        key=manifest_key,
    )
    require_quorum([stored_manifest], quorum, [what])
    push_id = uuid.uuid4().hex
    recorded = _record_push(
        ctx, name, digest, stored_manifest, push_id=push_id, message=message, quorum=quorum
    )
    checkpoint(ctx, "push-stored")
    version, created = _commit_recorded(
        ctx,
        recorded,
        digest,
        push_id,
        NewVersion(
            name=name,
            digest=digest,
            manifest_object=stored_manifest.object_name,
            manifest_slots=stored_manifest.slots,
            message=message,
            actor=ctx.actor,
            signed_by=ctx.signer.key_id,
            total_size=total,
            tensor_count=manifest.tensor_count,
            parameter_count=manifest.parameter_count,
            dtypes=manifest.dtypes,
            files=[FileRecord(f.path, f.size, f.digest, f.tensor_count) for f in manifest.files],
            blobs=list(stored),
            placements=placements([*blobs, stored_manifest]),
            lease=lease,
            meta=() if manifest.provenance is None else tuple(manifest.provenance.rows().items()),
        ),
    )
    with contextlib.suppress(RegistryError):
        ctx.catalog.cache_manifest(digest, envelope)
    unheld = _hold_new_copies(ctx, [*blobs, stored_manifest])
    ctx.catalog.record_placements(unheld)
    pending = sorted(
        {o.region for r in [*blobs, stored_manifest] for o in r.outcomes if o.state != VERIFIED}
        | {p.region for p in unheld}
    )
    return PushResult(version, created, uploaded, total - uploaded, file_count, tuple(pending))


def require_reachable(ctx: Context, quorum: int) -> None:
    """Refuse a push, before anything is stored, when fewer regions answer than its quorum."""
    regions_ready(ctx)
    available = [r for r in ctx.replicas.regions if not ctx.replicas.is_down(r)]
    if len(available) < quorum:
        down = [
            f"{r.name} ({condition.describe()})"
            for r in ctx.replicas.regions
            if (condition := ctx.replicas.health.unavailable(r.name)) is not None
        ]
        raise StorageError(
            f"{len(available)} of the {quorum} regions this push needs can be reached "
            f"({'; '.join(down)}); nothing was stored, nothing was committed",
            hint="check `model-registry regions status`, then push again, or lower the "
            "quorum with --write-quorum",
        )


def _store_files(
    ctx: Context,
    files: Sequence[manifests.LocalFile],
    unique: dict[str, manifests.LocalFile],
    *,
    quorum: int,
    retired: frozenset[str],
    progress: Progress,
) -> tuple[list[Replicated], list[NewBlob]]:
    """Seal and write every distinct file to every region (the quorum required)."""
    count = len(ctx.replicas.regions)
    total = sum(entry.size for entry in files)
    # Even when this content is already a version, every object is checked and whatever
    # is missing from the store is uploaded again (a re-run repairs).
    progress.begin("uploading", total)
    progress.advance(total - sum(entry.size for entry in unique.values()))
    remote = any(region.store.driver.latency_bound for region in ctx.replicas.regions)
    at_once = min(FILES_AT_ONCE_REMOTE if remote else FILES_AT_ONCE, len(unique)) or 1
    # The encryption threads are shared out between the files sealed at once: more would only
    # compete for the cores (and each holds a ring of chunk buffers).
    sealers = max(2, ctx.store.workers // at_once)
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="push") as pool:
        # The largest first: the small ones' requests then overlap with their transfers.
        puts = {
            file_digest: pool.submit(
                carried(
                    functools.partial(
                        write_copies,
                        ctx,
                        BLOB,
                        file_digest,
                        what=entry.path,
                        seal=_file_sealer(
                            ctx,
                            entry.source,
                            file_digest,
                            entry.size,
                            what=entry.path,
                            workers=sealers,
                            on_progress=progress.advance,
                        ),
                        size=entry.size,
                        on_progress=progress.advance,
                        # With one region a copy is not a replica: the write's own checks (fsync,
                        # S3's checksum on receipt) stand in, and verify --read-data reads back.
                        read_back=count > 1,
                        retired=retired,
                    )
                )
            )
            for file_digest, entry in sorted(unique.items(), key=lambda item: -item[1].size)
        }
        try:
            blobs = [puts[file_digest].result() for file_digest in unique]
        except BaseException:
            for put in puts.values():
                put.cancel()
            raise
    progress.end()
    require_quorum(blobs, quorum, [e.path for e in unique.values()])
    sizes = {file_digest: entry.size for file_digest, entry in unique.items()}
    stored = []
    for blob in blobs:
        assert blob.header is not None  # a verified copy exists (the quorum is at least 1)
        stored.append(
            NewBlob(
                blob.digest,
                sizes[blob.digest],
                blob.object_name,
                blob.header.sealed_size,
                blob.header.chunk_size,
                blob.slots,
            )
        )
    return blobs, stored


def _hold_new_copies(ctx: Context, results: Sequence[Replicated]) -> list[PlacementRecord]:
    """Put the legal hold on copies of a held version's objects this push wrote anew; the
    placements of copies it could not hold (pending, for `replicate`)."""
    held = ctx.catalog.held_objects()
    unheld: list[PlacementRecord] = []
    for result in results:
        written = {o.region for o in result.outcomes if o.uploaded}
        if written and (result.digest, result.kind) in held:
            # A held version's object written anew (to a region that lacked it) is held too;
            # where that fails the copy stays pending, and `replicate` holds it.
            for failure in legal_hold_copies(
                ctx, {(result.digest, result.kind)}, on=True, only=written
            ):
                region_name = failure.split(":", 1)[0]
                unheld.append(
                    PlacementRecord(
                        result.digest,
                        result.kind,
                        region_name,
                        result.object_name,
                        PENDING,
                        None,
                        f"legal hold not applied: {failure}",
                    )
                )
    return unheld


def refuse_retired_keys(ctx: Context) -> frozenset[str]:
    """A process still on the config.toml a key rotation replaced stores nothing: what it
    would store could only be opened by a key about to be destroyed. Returns the retired
    keys."""
    retired = frozenset(ctx.catalog.retired_keys())
    own = sorted({region.store.keys.kek_id for region in ctx.replicas.regions} & retired)
    if own:
        raise ConflictError(
            f"this process wraps data keys with {', '.join(own)}, which a key rotation "
            "retired; nothing was stored",
            hint="this process still reads the old config.toml: restart it, then run the "
            "same command again",
        )
    return retired


def _commit_recorded(
    ctx: Context, recorded: Sequence[Region], digest: str, push_id: str, new: NewVersion
) -> tuple[VersionRecord, bool]:
    """Commit a recorded push; when it makes no new version (the content is one already)
    or fails, its version record is voided, so a rebuild never takes it for a version."""
    try:
        version, created = ctx.catalog.commit_version(new)
    except ConflictError:
        # Refused inside the transaction: certainly nothing committed. Any other failure
        # (a connection lost at COMMIT) may have committed: the record stays.
        _void_records(ctx, recorded, digest, push_id)
        raise
    if not created:
        _void_records(ctx, recorded, digest, push_id)
    return version, created


def _void_records(ctx: Context, recorded: Sequence[Region], digest: str, push_id: str) -> None:
    for region in recorded:
        try:
            region.store.void_version_record(digest, push_id=push_id)
        except RegistryError as error:
            # A record left unvoided is still not restored by a rebuild once the journal
            # has moved past it (docs/format.md, version records).
            journal.log.warning("version record not voided in %s: %s", region.name, error)


def _record_push(
    ctx: Context,
    name: str,
    digest: str,
    manifest: Replicated,
    *,
    push_id: str,
    message: str,
    quorum: int,
) -> list[Region]:
    """Before the commit, a version record beside the manifest in every region that holds
    it: what a catalog rebuild restores a version from when its commit never reached the
    journal (the recovery point of versions is zero)."""
    record = json.dumps(
        {
            "model": name,
            "digest": digest,
            "manifest_object": manifest.object_name,
            "message": message,
            "pushed_by": ctx.actor,
            "signed_by": ctx.signer.key_id,
            "pushed_at": datetime.now(UTC).isoformat(),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    written: list[Region] = []
    failures = []
    holding = {o.region for o in manifest.outcomes if o.state == VERIFIED}
    for region in ctx.replicas.regions:
        if region.name not in holding:
            continue
        try:
            region.store.put_version_record(digest, record, push_id=push_id)
            written.append(region)
        except StorageError as error:
            failures.append(f"{region.name}: {error}")
    if len(written) < quorum:
        _void_records(ctx, written, digest, push_id)
        raise StorageError(
            f"push {name}: its version record reached {len(written)} of the {quorum} "
            f"regions it must ({'; '.join(failures)}); nothing was committed",
            hint="run the same push again once the regions answer",
        )
    return written


def _file_sealer(
    ctx: Context,
    path: Path,
    digest: str,
    size: int,
    *,
    what: str,
    workers: int,
    on_progress: Callable[[int], None],
) -> Callable[[bytes], Iterator[memoryview | bytes]]:
    """Seals the file under a data key, re-hashing it on the way (see `sealed.seal_file`)."""

    def seal(data_key: bytes) -> Iterator[memoryview | bytes]:
        try:
            source = path.open("rb", buffering=0)
        except OSError as error:
            raise InvalidModelError(f"cannot read {what}: {error.strerror}") from None
        with source:
            yield from sealed.seal_file(
                source,
                data_key,
                digest,
                plaintext_size=size,
                chunk_size=ctx.settings.chunk_size,
                workers=workers,
                on_progress=on_progress,
                what=what,
            )

    return seal
