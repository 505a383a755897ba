"""The parts of an upload session: keep one as it arrives (ciphertext, in the staging store, written
once under its digest: the store's listing is the record of what arrived, so a part writes
nothing to the catalog), and check a file as soon as its last part has arrived, so that the
commit finds it checked.

A file's check (`check_file`) authenticates every chunk of its parts under the file's data key,
in memory, and takes its plaintext's BLAKE3 digest (which must be the one declared), chunk root
and SHA-256; what it found is recorded with the digest of the part digests it read. Parts are
never changed once written, so the commit takes that record for exactly those parts; a part sent
again with other bytes makes it stale, and the commit checks the file again. The check runs in
the request of the file's last part, on whichever process took it: no process keeps anything of
a session, and one lost mid-check leaves the check to the commit.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from datetime import UTC, datetime

import blake3

from registry.crypto.checked import CheckedObject
from registry.digest import FileDigests
from registry.errors import (
    DigestMismatchError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    StorageError,
)
from registry.ops.access import requires
from registry.ops.context import Context
from registry.ops.uploads import (
    TOUCH_EVERY,
    file_key,
    layout,
    own_upload,
    part_length,
    part_name,
    part_tag,
    received_parts,
    sealed_header,
    staging,
)
from registry.records import CheckedFile, UploadFileRecord, UploadSessionRecord

log = logging.getLogger("model_registry")


@requires("push")
def put_upload_part(
    ctx: Context, session_id: str, index: int, part: int, data: bytes | bytearray, digest: str
) -> None:
    """Keep one part of sealed bytes, after checking its length and BLAKE3 digest (a transfer
    check: every chunk is authenticated later). A part sent again replaces the one recorded.
    When it completes its file, the file is checked (see the module's docstring)."""
    session = own_upload(ctx, session_id, parts=False)
    expected = part_length(session, index, part)
    entry = session.files[index]
    if len(data) != expected:
        raise InvalidInputError(
            f"{entry.path} part {part} must be {expected} bytes, not {len(data)}"
        )
    actual = "blake3:" + blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
    if digest != actual:
        raise DigestMismatchError(
            f"{entry.path} part {part}: digest mismatch (sent {digest[:20]}..., received bytes "
            f"hash to {actual[:20]}...)",
            hint="send the part again",
        )
    store = staging(ctx)
    tag = part_tag(actual)
    name = part_name(session_id, index, part, tag)
    store.put_if_absent(name, [data])
    now = datetime.now(UTC)
    if now - session.seen_at > TOUCH_EVERY:
        ctx.catalog.touch_upload(session_id, at=now)
    if ctx.catalog.upload(session_id, open_only=True) is None:
        if ctx.catalog.upload(session_id) is None:
            # Discarded meanwhile (abandoned, expired), maybe after its parts were removed:
            # nothing else would ever remove this one (`discard_upload`).
            with contextlib.suppress(NotFoundError):
                store.delete(name)
            raise NotFoundError(f"no upload session {session_id}")
        # A commit took the session while this part was written: it may or may not have
        # listed it (it checks what it read either way), and the bytes sent before stay for
        # it to read; the client is told to send the part again.
        raise NotFoundError(f"no upload session {session_id} (it is being committed)")
    # Other bytes sent before for this part are replaced: the part is what was sent last.
    for info in list(store.list(f"sessions/{session_id}/{index}/{part}-")):
        if info.name != name:
            with contextlib.suppress(NotFoundError):
                store.delete(info.name)
    parts = {part: tag for (_i, part), tag in received_parts(ctx, session_id, index=index).items()}
    done = entry.checked is not None and entry.checked.parts == parts_digest(parts)
    # A part sent again, unchanged, does not cost the server a check of the whole file again.
    if not done and len(parts) == layout(session, entry).part_count(session.chunks_per_part):
        _check_early(ctx, session, entry, parts)


def _check_early(
    ctx: Context, session: UploadSessionRecord, entry: UploadFileRecord, parts: dict[int, str]
) -> None:
    """Check a file whose parts have all arrived, and record what was found. A file that does
    not check is left to the commit, which refuses it and says why; so is one whose check
    could not run."""
    try:
        with ctx.counting_unwraps() as unwraps:
            key = file_key(ctx, session, entry)
        if unwraps.value:
            ctx.catalog.audit(
                ctx.actor,
                "upload-check",
                session.model,
                {"session": session.id, "path": entry.path, "key_unwraps": unwraps.value},
            )
        found = check_file(ctx, session, entry, parts, key, workers=2)
    except (DigestMismatchError, StorageError) as error:
        log.info("upload %s: %s left to the commit: %s", session.id, entry.path, error)
        return
    except RegistryError as error:
        log.warning("upload %s: %s not checked early: %s", session.id, entry.path, error)
        return
    ctx.catalog.record_file_check(
        session.id, entry.index, CheckedFile(parts_digest(parts), found.chunk_root, found.sha256)
    )


def parts_digest(parts: dict[int, str]) -> str:
    """The digest of a file's part tags, in order: which parts a check read."""
    hasher = blake3.blake3()
    for part in sorted(parts):
        hasher.update(f"{part}:{parts[part]}\n".encode())
    return "blake3:" + hasher.hexdigest()


def read_part(ctx: Context, session_id: str, parts: dict[int, str], index: int, part: int) -> bytes:
    """The sealed bytes of a part, as listed (StorageError when the staging store lost it)."""
    try:
        return staging(ctx).get_range(part_name(session_id, index, part, parts[part]))
    except (NotFoundError, KeyError):
        raise StorageError(
            f"part {part} of file {index} is gone from the staging store",
            hint="upload it again (GET the session for what it has), then commit",
        ) from None


def part_reader(
    ctx: Context, session_id: str, index: int, parts: dict[int, str]
) -> functools.partial[bytes]:
    return functools.partial(read_part, ctx, session_id, parts, index)


def check_file(
    ctx: Context,
    session: UploadSessionRecord,
    entry: UploadFileRecord,
    parts: dict[int, str],
    key: bytes,
    *,
    workers: int,
    starts_with: bytes = b"",
) -> FileDigests:
    """Every chunk of the file's `parts` authenticated, and its plaintext's digests (see
    `CheckedObject`)."""
    return CheckedObject(
        part_reader(ctx, session.id, entry.index, parts),
        key,
        entry.digest,
        sealed_header(session, entry, key),
        chunks_per_part=session.chunks_per_part,
        starts_with=starts_with,
        workers=workers,
        what=entry.path,
    ).drain()
