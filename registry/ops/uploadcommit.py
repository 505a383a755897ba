"""The commit of an upload session: every file the client sealed is checked in memory, then
stored, then the version is committed as a push commits it (`ops.push.finish_push`).

In order, with nothing stored before every check that can refuse the push has passed: the session
is claimed (one commit at a time, whichever process runs it) and read again; every part must
have arrived; the first bytes of each file are decrypted to validate its safetensors header (and
each index file whole) against the others; each file not checked when its last part arrived (or
whose parts changed since) is read from the staging store through `CheckedObject` (the header
the session issued, every chunk authenticated under the file's data key, the plaintext's BLAKE3
digest, chunk root and SHA-256 taken), the plaintext never leaving memory. Only then are the
same staged parts copied into every region, each compared on the way with the digest its name
holds, so that what is stored is the bytes checked. The manifest is built from what was
checked, never from what the client claimed beyond the digests it sealed under. The session's
key becomes the object's where the object has none yet; where another push chose the object's
key first, the plaintext is sealed again under it in memory, checked again on the way. The
commit renews its claim while it runs: one whose process died is taken over a minute later.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import blake3

from registry.blobstore import BLOB, MANIFEST
from registry.crypto.checked import CheckedObject, plaintext_prefix
from registry.crypto.sealed import Sealer
from registry.digest import FileDigests
from registry.errors import (
    DigestMismatchError,
    InvalidInputError,
    InvalidModelError,
    NotFoundError,
    RegistryError,
    StorageError,
)
from registry.manifest import INDEX_SUFFIX, MAX_INDEX_SIZE, ChunkRoot, ManifestFile
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.copies import require_quorum, take_lease, write_copies
from registry.ops.journaling import journaled
from registry.ops.push import (
    FILES_AT_ONCE,
    FILES_AT_ONCE_REMOTE,
    finish_push,
    manifest_for,
    push_checks,
    refuse_retired_keys,
    require_reachable,
)
from registry.ops.uploadparts import check_file, part_reader, parts_digest
from registry.ops.uploads import (
    CLAIM_RENEWAL,
    discard_upload,
    layout,
    own_upload,
    part_name,
    part_tag,
    sealed_header,
    session_keys,
    staging,
    stale_claim_before,
)
from registry.records import NewBlob, UploadFileRecord, UploadSessionRecord
from registry.replication import Replicated
from registry.safetensors_header import (
    MAX_HEADER_SIZE,
    SafetensorsHeader,
    parse_header,
    validate_index,
)
from registry.storage.deadline import carried

if TYPE_CHECKING:
    from registry.provenance import ProvenanceRequest
    from registry.reports import PushResult

_LENGTH_PREFIX = 8


@dataclass(frozen=True)
class _Checked:
    """A file of the session once its first bytes were validated."""

    entry: UploadFileRecord
    key: bytes  # the key the client sealed under: the session's own
    header: bytes
    safetensors: SafetensorsHeader | None
    validated: bytes


@requires("push")
@journaled
def commit_upload(
    ctx: Context,
    session_id: str,
    *,
    provenance: ProvenanceRequest | None = None,
    signature: bytes | None = None,
) -> PushResult:
    """Check and store every file of the session, and commit them as a new version of its
    model with the `provenance` and OpenSSF `signature` stated; the session is then
    discarded. A commit refused is handed back: the client may send what is missing (or send
    a part again) and commit again."""
    session = own_upload(ctx, session_id)
    claim = uuid.uuid4().hex
    now = datetime.now(UTC)
    if not ctx.catalog.claim_upload(session.id, claim, at=now, stale=stale_claim_before(now)):
        raise NotFoundError(f"no upload session {session_id} (it is being committed)")
    # Read again once held: no part is recorded after the claim, so this is every part.
    session = own_upload(ctx, session_id)
    try:
        with _renewing(ctx, session.id, claim):
            try:
                result = _commit(ctx, session, provenance=provenance, signature=signature)
            except (DigestMismatchError, StorageError):
                _forget_lost_parts(ctx, session)
                raise
    except BaseException:
        ctx.catalog.release_upload(session.id, claim, at=datetime.now(UTC))
        raise
    discard_upload(ctx, session.id)
    return result


@contextmanager
def _renewing(ctx: Context, session_id: str, claim: str) -> Iterator[None]:
    """Renew the commit's claim while the block runs: a process that dies mid-commit stops
    renewing, and the client's next commit, on any process, takes the session over a minute
    later (the work is idempotent: a version committed already is answered as such)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(CLAIM_RENEWAL.total_seconds()):
            with contextlib.suppress(RegistryError):
                ctx.catalog.renew_upload_claim(session_id, claim, at=datetime.now(UTC))

    thread = threading.Thread(target=renew, name="commit-claim", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _forget_lost_parts(ctx: Context, session: UploadSessionRecord) -> None:
    """After a failed check: the parts the staging store no longer holds as they arrived (lost
    or cut by a crash: it does not fsync) are removed and asked for again, rather than taken
    for the client's mistake."""
    store = staging(ctx)
    lost = []
    for (index, part), tag in sorted(session.received.items()):
        name = part_name(session.id, index, part, tag)
        try:
            data = store.get_range(name)
        except (NotFoundError, StorageError):
            data = None
        if data is None or part_tag(blake3.blake3(data).hexdigest()) != tag:
            lost.append((index, part))
            with contextlib.suppress(NotFoundError, StorageError):
                store.delete(name)
    if lost:
        raise InvalidInputError(
            f"{len(lost)} parts were lost by the server's staging store (a crash?): "
            + ", ".join(f"{session.files[i].path} part {p}" for i, p in lost[:10]),
            hint="upload them again (GET the session for what it has), then commit",
        )


def _missing_parts(session: UploadSessionRecord) -> None:
    for entry in session.files:
        count = layout(session, entry).part_count(session.chunks_per_part)
        missing = [p for p in range(count) if (entry.index, p) not in session.received]
        if missing:
            raise InvalidInputError(
                f"{entry.path}: parts {missing[:10]} not received yet",
                hint="upload them (GET the session for what it has), then commit",
            )


def _commit(
    ctx: Context,
    session: UploadSessionRecord,
    *,
    provenance: ProvenanceRequest | None,
    signature: bytes | None,
) -> PushResult:
    stated, quorum = push_checks(
        ctx, session.model, provenance=provenance, write_quorum=None, message=session.message
    )
    _missing_parts(session)
    ctx.replicas.expect_writes()
    require_reachable(ctx, quorum)
    retired = refuse_retired_keys(ctx)
    checked = _validated(ctx, session)
    unique: dict[str, _Checked] = {}
    for item in checked:
        unique.setdefault(item.entry.digest, item)
    found = _check_all(ctx, session, list(unique.values()))
    lease = take_lease(ctx, [(d, BLOB) for d in unique], what=f"push {session.model}")
    try:
        blobs = _store(ctx, session, list(unique.values()), retired=retired)
        require_quorum(blobs, quorum, [item.entry.path for item in unique.values()])
        entries = [
            ManifestFile(
                item.entry.path,
                item.entry.size,
                item.entry.digest,
                item.safetensors,
                ChunkRoot(found[item.entry.digest].chunk_size, found[item.entry.digest].chunk_root),
                found[item.entry.digest].sha256,
            )
            for item in checked
        ]
        manifest = manifest_for(ctx, session.model, entries, stated=stated, signature=signature)
        take_lease(ctx, [(manifest.digest, MANIFEST)], what=f"push {session.model}", lease=lease)
        return finish_push(
            ctx,
            session.model,
            manifest,
            blobs,
            [_new_blob(blob, unique[blob.digest].entry.size) for blob in blobs],
            total=sum(item.entry.size for item in checked),
            file_count=len(checked),
            lease=lease,
            message=session.message,
            quorum=quorum,
            retired=retired,
        )
    finally:
        ctx.catalog.drop_lease(lease)


def _new_blob(blob: Replicated, size: int) -> NewBlob:
    assert blob.header is not None  # a verified copy exists (the quorum is at least 1)
    return NewBlob(
        blob.digest,
        size,
        blob.object_name,
        blob.header.sealed_size,
        blob.header.chunk_size,
        blob.slots,
    )


def _file_parts(session: UploadSessionRecord, index: int) -> dict[int, str]:
    return {part: digest for (i, part), digest in session.received.items() if i == index}


def _part_reader(
    ctx: Context, session: UploadSessionRecord, index: int
) -> functools.partial[bytes]:
    return part_reader(ctx, session.id, index, _file_parts(session, index))


def _validated(ctx: Context, session: UploadSessionRecord) -> list[_Checked]:
    """Every file's data key and issued header, its safetensors header (or, for an index, its
    content) decrypted and validated: all of it before a byte is stored."""
    checked = []
    # The file of each digest whose parts are checked and stored: a later file of that digest
    # is validated from its bytes too, never from parts of its own that nothing checks.
    sources: dict[str, UploadFileRecord] = {}
    keys = session_keys(ctx, session)  # one unwrap per content, not per file that holds it
    for entry in session.files:
        source = sources.setdefault(entry.digest, entry)
        if source.size != entry.size:  # refused at open too; a session opened before was not
            raise InvalidInputError(
                f"{entry.path}: its digest is {source.path}'s, of {source.size} bytes, "
                f"not {entry.size}",
                hint="hash the files again and push them in a new session",
            )
        key = keys[entry.index]
        header = sealed_header(session, entry, key)

        prefix = functools.partial(
            plaintext_prefix,
            _part_reader(ctx, session, source.index),
            key,
            entry.digest,
            sealed_header(session, source, key),
            chunks_per_part=session.chunks_per_part,
            what=entry.path,
        )

        safetensors = None
        validated = b""
        if entry.path.endswith(".safetensors"):
            length = int.from_bytes(prefix(_LENGTH_PREFIX)[:_LENGTH_PREFIX], "little")
            if entry.size < _LENGTH_PREFIX or not 2 <= length <= MAX_HEADER_SIZE:
                raise InvalidModelError(
                    f"{entry.path}: not a safetensors file (header length {length} of a "
                    f"{entry.size}-byte file)"
                )
            validated = prefix(_LENGTH_PREFIX + length)
            if len(validated) != _LENGTH_PREFIX + length:
                raise InvalidModelError(f"{entry.path}: its header runs past the file's end")
            safetensors = parse_header(
                validated[_LENGTH_PREFIX:], file_size=entry.size, display_name=entry.path
            )
        elif entry.path.endswith(INDEX_SUFFIX):
            if entry.size > MAX_INDEX_SIZE:
                raise InvalidModelError(f"{entry.path}: index file larger than {MAX_INDEX_SIZE}")
            validated = prefix(entry.size)
        checked.append(_Checked(entry, key, header, safetensors, validated))
    headers = {c.entry.path: c.safetensors for c in checked if c.safetensors is not None}
    for item in checked:
        if item.entry.path.endswith(INDEX_SUFFIX):
            validate_index(
                item.validated,
                display_name=item.entry.path,
                headers=headers,
                base_dir=item.entry.path.rpartition("/")[0],
            )
    return checked


def _at_once(ctx: Context, files: int) -> tuple[int, int]:
    """Files handled at once, and the threads each may use."""
    remote = any(region.store.driver.latency_bound for region in ctx.replicas.regions)
    at_once = min(FILES_AT_ONCE_REMOTE if remote else FILES_AT_ONCE, files) or 1
    return at_once, max(2, ctx.store.workers // at_once)


def _check_all(
    ctx: Context, session: UploadSessionRecord, unique: list[_Checked]
) -> dict[str, FileDigests]:
    """Every distinct file checked whole (see `CheckedObject`), before any is stored: the
    digests found."""
    at_once, workers = _at_once(ctx, len(unique))

    def check(item: _Checked) -> FileDigests:
        entry = item.entry
        parts = _file_parts(session, entry.index)
        done = entry.checked
        if done is not None and done.parts == parts_digest(parts):
            # Checked when its last part arrived, and these are the parts it read.
            return FileDigests(entry.digest, session.chunk_size, done.chunk_root, done.sha256)
        return check_file(
            ctx,
            session,
            entry,
            parts,
            item.key,
            workers=workers,
            starts_with=item.validated,
        )

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="check") as pool:
        futures = {item.entry.digest: pool.submit(check, item) for item in unique}
        try:
            return {digest: future.result() for digest, future in futures.items()}
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def _store(
    ctx: Context,
    session: UploadSessionRecord,
    unique: list[_Checked],
    *,
    retired: frozenset[str],
) -> list[Replicated]:
    """Every distinct file, checked, written to every region under the object's key: the
    session's own where the object had none yet, its staged parts stored as they are (the
    staging store never changes a part, so these are the bytes checked); else the key another
    push chose first, the plaintext sealed again under it in memory (checked again on the way).
    Content already stored with good copies is not written at all."""
    count = len(ctx.replicas.regions)
    at_once, workers = _at_once(ctx, len(unique))

    def store_one(item: _Checked) -> Replicated:
        read = _part_reader(ctx, session, item.entry.index)
        parts = layout(session, item.entry).part_count(session.chunks_per_part)

        tags = _file_parts(session, item.entry.index)

        def staged() -> Iterator[bytes]:
            for part in range(parts):
                data = read(part)
                # The staging store does not fsync: a part cut by a crash after its check keeps
                # its name. What is stored must be the bytes received, which were checked.
                found = blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
                if part_tag(found) != tags[part]:
                    raise DigestMismatchError(
                        f"{item.entry.path}: part {part} changed in the staging store "
                        "since it arrived",
                        hint="upload it again (GET the session for what it has), then commit",
                    )
                yield data

        def seal(data_key: bytes) -> Iterable[bytes | bytearray | memoryview]:
            if data_key == item.key:
                return staged()
            resealed = Sealer(
                data_key,
                item.entry.digest,
                plaintext_size=item.entry.size,
                chunk_size=session.chunk_size,
            )
            return CheckedObject(
                read,
                item.key,
                item.entry.digest,
                item.header,
                chunks_per_part=session.chunks_per_part,
                workers=workers,
                what=item.entry.path,
                reseal=resealed,
            )

        return write_copies(
            ctx,
            BLOB,
            item.entry.digest,
            what=item.entry.path,
            seal=seal,
            size=item.entry.size,
            read_back=count > 1,
            retired=retired,
            new_key=item.key,
        )

    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="commit") as pool:
        futures = [pool.submit(carried(functools.partial(store_one, item))) for item in unique]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
