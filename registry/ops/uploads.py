"""Upload sessions, the push through the REST API: the client declares its files (path, size,
BLAKE3 digest); the server issues a key of the session's own per distinct content (wrapped in
the session's row, handed to the client, audited) with the salt and nonce prefix of each file's
sealed header; the client seals each file itself and sends the ciphertext part by
part, to any server process (`ops.uploadparts`). Parts are kept as they arrive in the staging
store (`[api] staging_dir`, a folder every process of a fleet shares), whose listing is the
record of what arrived; the session and its files are rows of the catalog. No plaintext is ever
at rest on a server. `ops.uploadcommit` checks and commits a session.

A session is its owner's (the actor that opened it); another actor is told it does not exist. It
opens only where the staging folder has room for it and its owner's open sessions stay within
`[api] staging_bytes_per_token`. It ends at its commit, when abandoned, or after
`[api] upload_ttl_hours` without a request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import blake3

from registry.blobstore import BlobStore
from registry.crypto.keys import WrappedKey
from registry.crypto.sealed import KEY_SIZE, NONCE_PREFIX_SIZE, SALT_SIZE, SealedHeader, Sealer
from registry.errors import InvalidInputError, NotFoundError, QuotaExceededError, StorageError
from registry.fileio import private_dirs
from registry.manifest import MAX_FILES, SIGNATURE_FILE
from registry.ops.access import requires
from registry.ops.context import Context, note_unwrap
from registry.ops.parallel import bounded_map
from registry.records import DeclaredFile, UploadFileRecord, UploadSessionRecord
from registry.refs import validate_name, validate_relative_path
from registry.reports import UploadKeys
from registry.storage.base import Driver
from registry.storage.local import LocalDriver

MAX_FILE_SIZE = 1 << 40
_DIGEST = re.compile(r"blake3:[0-9a-f]{64}")
_EMPTY = "blake3:" + blake3.blake3(b"").hexdigest()
_SESSION = re.compile(r"[0-9a-f]{32}")
# Session keys wrapped (at the opening) or unwrapped (resumed, checked, committed) at once where
# the key provider is a KMS: each is then a request, which a push of thousands of files must not
# wait for one by one. With a key file each is microseconds of CPU, and threads only contend.
KEY_REQUESTS = 16


def staging_root(ctx: Context) -> Path:
    root = ctx.settings.api.staging_dir or ctx.settings.home / "uploads"
    private_dirs(root)  # ciphertext only, and still nobody else's to list
    return root


def staging(ctx: Context) -> Driver:
    """The store the parts of upload sessions are kept in until their commit."""
    return LocalDriver(staging_root(ctx), durable=False)


def _require_room(ctx: Context, session: UploadSessionRecord) -> None:
    """Refuse a session whose sealed files the staging folder has no room for now (the parts
    of sessions already open count against what is free once they arrive): a push that cannot
    fit fails before its first part, not at its last."""
    needed = _staged(session)
    free = shutil.disk_usage(staging_root(ctx)).free
    if needed > free:
        raise StorageError(
            f"the server's staging folder has {free:,} bytes free and this push needs "
            f"{needed:,}; nothing was opened",
            hint="push again when other pushes have committed, or ask the operator for room "
            "in [api] staging_dir",
        )


def _staged(session: UploadSessionRecord) -> int:
    """Bytes the session's parts take in the staging store: every file sealed, a copy of another
    file's content and an empty file too, since each is sent and kept part by part (what
    `Catalog.staged_bytes` counts)."""
    return sum(layout(session, entry).sealed_size for entry in session.files)


def _require_allowance(ctx: Context, session: UploadSessionRecord, *, opened: bool) -> None:
    """Refuse a session that would take its owner past `[api] staging_bytes_per_token`: one
    token cannot fill the staging folder every other push needs. Checked before the session is
    opened and again once its rows are in (`opened`), where two sessions opened at once by one
    token see each other: neither gets past the allowance, though both may be refused."""
    allowance = ctx.settings.api.staging_bytes_per_token
    if not allowance:
        return
    needed = _staged(session)
    held = ctx.catalog.staged_bytes(session.owner) - (needed if opened else 0)
    if held + needed <= allowance:
        return
    if opened:
        ctx.catalog.drop_upload(session.id)
    if needed > allowance:
        raise QuotaExceededError(
            f"this push stages {needed:,} bytes (its files sealed), more than the "
            f"{allowance:,} bytes a token may stage at once ([api] staging_bytes_per_token); "
            "nothing was opened",
            hint="ask the operator to raise [api] staging_bytes_per_token, or push it directly "
            "with the registry's own credentials",
        )
    raise QuotaExceededError(
        f"this push stages {needed:,} bytes (its files sealed) and the token's open pushes hold "
        f"{held:,} of the {allowance:,} bytes a token may stage at once "
        "([api] staging_bytes_per_token); nothing was opened"
    )


def part_tag(digest: str) -> str:
    """What a part's name holds of its BLAKE3 digest (128 bits)."""
    return digest.removeprefix("blake3:")[:32]


def part_name(session_id: str, index: int, part: int, tag: str) -> str:
    """A part's name in the staging store: named by its digest too (`part_tag`) and written
    once, so that what a commit checked is what it stores, whatever is sent again meanwhile.
    The store's listing is the record of the parts received: a part costs the catalog nothing."""
    return f"sessions/{session_id}/{index}/{part}-{tag}"


_PART = re.compile(r"sessions/[0-9a-f]{32}/([0-9]{1,9})/([0-9]{1,9})-([0-9a-f]{32})")


def received_parts(
    ctx: Context, session_id: str, *, index: int | None = None
) -> dict[tuple[int, int], str]:
    """The parts of a session (or of its file `index`) in the staging store: (file, part) ->
    tag. A part sent again with other bytes is there twice; the one written last counts."""
    prefix = f"sessions/{session_id}/" + ("" if index is None else f"{index}/")
    found: dict[tuple[int, int], tuple[datetime, str]] = {}
    for info in staging(ctx).list(prefix):
        matched = _PART.fullmatch(info.name)
        if matched is None:
            continue
        key = (int(matched[1]), int(matched[2]))
        if key not in found or (info.modified, matched[3]) > found[key]:
            found[key] = (info.modified, matched[3])
    return {key: tag for key, (_when, tag) in found.items()}


def layout(session: UploadSessionRecord, entry: UploadFileRecord) -> SealedHeader:
    """The arithmetic of a file's sealed form (its parts), without its key."""
    return SealedHeader(session.chunk_size, entry.size, entry.salt, entry.nonce_prefix, b"")


def sealed_header(session: UploadSessionRecord, entry: UploadFileRecord, data_key: bytes) -> bytes:
    """The exact header the file's sealed form must start with."""
    return Sealer(
        data_key,
        entry.digest,
        plaintext_size=entry.size,
        chunk_size=session.chunk_size,
        salt=entry.salt,
        nonce_prefix=entry.nonce_prefix,
    ).header_bytes


def _validate(files: Sequence[DeclaredFile]) -> None:
    if not files:
        raise InvalidInputError("an upload needs at least one file")
    if len(files) > MAX_FILES:
        raise InvalidInputError(f"at most {MAX_FILES} files per version")
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    for entry in files:
        validate_relative_path(entry.path)
        if any(part.startswith(".") for part in entry.path.split("/")):
            raise InvalidInputError(f"{entry.path}: hidden files are not pushed")
        if entry.path == SIGNATURE_FILE:
            raise InvalidInputError(
                f"{SIGNATURE_FILE} at the root is a model signature, not a file to store",
                hint="send it as the commit's `signature` (base64)",
            )
        if entry.path in seen:
            raise InvalidInputError(f"{entry.path} is listed twice")
        seen.add(entry.path)
        if not 0 <= entry.size <= MAX_FILE_SIZE:
            raise InvalidInputError(f"{entry.path}: size must be 0..{MAX_FILE_SIZE}")
        if not _DIGEST.fullmatch(entry.digest):
            raise InvalidInputError(f"{entry.path}: digest must be blake3:<64 hex>")
        if entry.size == 0 and entry.digest != _EMPTY:
            raise InvalidInputError(f"{entry.path}: an empty file's digest is {_EMPTY}")
        # One file of a digest is checked and stored for all: they must agree on its size.
        if sizes.setdefault(entry.digest, entry.size) != entry.size:
            raise InvalidInputError(
                f"{entry.path}: its digest is another file's, of {sizes[entry.digest]} bytes, "
                f"not {entry.size}",
                hint="hash the files again and open a new session",
            )
    for path in seen:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in seen:
                raise InvalidInputError(
                    f"{'/'.join(parts[:depth])} is listed as a file and as the folder of {path}"
                )


def _key_context(store: BlobStore, session_id: str, digest: str) -> dict[str, str]:
    return {
        "registry": store.registry_id,
        "purpose": "upload-session",
        "session": session_id,
        "digest": digest,
    }


def _issue_keys(
    ctx: Context, session_id: str, files: Sequence[DeclaredFile]
) -> dict[str, tuple[bytes, bytes]]:
    """A new key of the session's own for each distinct content, with its wrapped form (kept
    in the session's row). A pusher is only ever handed a key it was issued: the key an object
    is stored under opens every version that holds it, which this pusher may have no right to
    read, and a key handed out before its content is stored would let whoever declared the
    digest first choose the key another team's push seals under. At the commit the session's
    key becomes the object's where the object has none yet; otherwise the checked plaintext is
    sealed again under the object's (`ops.uploadcommit`)."""
    store = ctx.replicas.primary
    distinct = list(dict.fromkeys(entry.digest for entry in files))

    def issue(digest: str) -> tuple[bytes, bytes]:
        key = os.urandom(KEY_SIZE)
        slot = store.keys.wrap(key, context=_key_context(store, session_id, digest))
        return key, slot.to_json()

    issued = bounded_map(issue, distinct, limit=keys_at_once(ctx), name="session-key")
    return dict(zip(distinct, issued, strict=True))


def file_key(ctx: Context, session: UploadSessionRecord, entry: UploadFileRecord) -> bytes:
    """The key a file of the session is sealed with: the session's own (unwrapped, counted)."""
    if entry.session_key is None:  # `own_upload` answers none for such a session
        raise NotFoundError(f"no upload session {session.id} (opened by an earlier release)")
    store = ctx.replicas.primary
    slot = WrappedKey.from_json(entry.session_key, what=entry.path)
    key = store.keys.unwrap(
        slot, context=_key_context(store, session.id, entry.digest), what=entry.path
    )
    note_unwrap(entry.digest)
    return key


def keys_at_once(ctx: Context) -> int:
    """How many session keys are wrapped or unwrapped at once (see KEY_REQUESTS)."""
    return KEY_REQUESTS if ctx.replicas.primary.keys.latency_bound else 1


def session_keys(ctx: Context, session: UploadSessionRecord) -> dict[int, bytes]:
    """The key of every file (one per distinct content), the distinct ones unwrapped together."""
    first: dict[str, UploadFileRecord] = {}
    for entry in session.files:
        first.setdefault(entry.digest, entry)

    def key_of(entry: UploadFileRecord) -> bytes:
        return file_key(ctx, session, entry)

    keys = bounded_map(key_of, list(first.values()), limit=keys_at_once(ctx), name="upload-key")
    by_digest = dict(zip(first, keys, strict=True))
    return {entry.index: by_digest[entry.digest] for entry in session.files}


@requires("push")
def open_upload(
    ctx: Context, model: str, files: Sequence[DeclaredFile], *, message: str = ""
) -> UploadKeys:
    """Open a session for a new version of `model` with `files`, and issue a key of the
    session's own for each distinct content (audited: `upload-open`, with the keys issued)."""
    validate_name(model)
    _validate(files)
    if len(message) > 65536:
        raise InvalidInputError("the message is longer than 65536 characters")
    expire_uploads(ctx)
    now = datetime.now(UTC)
    chunk_size = ctx.settings.chunk_size
    session = UploadSessionRecord(
        uuid.uuid4().hex,
        model,
        message,
        ctx.actor,
        chunk_size,
        max(1, ctx.settings.api.part_size // chunk_size),
        now,
        now,
        tuple(
            UploadFileRecord(
                index,
                entry.path,
                entry.size,
                entry.digest,
                os.urandom(SALT_SIZE),
                os.urandom(NONCE_PREFIX_SIZE),
            )
            for index, entry in enumerate(files)
        ),
        {},
    )
    _require_room(ctx, session)
    _require_allowance(ctx, session, opened=False)
    # Only now: each session key is a KMS request that a refused push must not cost.
    issued = _issue_keys(ctx, session.id, files)
    session = dataclasses.replace(
        session,
        files=tuple(
            dataclasses.replace(entry, session_key=issued[entry.digest][1])
            for entry in session.files
        ),
    )
    keys = {entry.index: issued[entry.digest][0] for entry in session.files}
    ctx.catalog.open_upload(session)
    _require_allowance(ctx, session, opened=True)
    ctx.catalog.audit(
        ctx.actor,
        "upload-open",
        model,
        {
            "session": session.id,
            "files": len(files),
            "keys": len(issued),
        },
    )
    return _with_layout(session, keys)


def _with_layout(session: UploadSessionRecord, keys: dict[int, bytes]) -> UploadKeys:
    shapes = {entry.index: layout(session, entry) for entry in session.files}
    return UploadKeys(
        session,
        keys,
        {index: shape.part_count(session.chunks_per_part) for index, shape in shapes.items()},
        {index: shape.sealed_size for index, shape in shapes.items()},
    )


def own_upload(ctx: Context, session_id: str, *, parts: bool = True) -> UploadSessionRecord:
    """The session, if it exists, has not expired (else it is discarded now) and this actor
    opened it (else NotFoundError either way), with the parts received; without `parts`, none
    of them, and only while no commit holds it."""
    missing = NotFoundError(f"no upload session {session_id}")
    if not _SESSION.fullmatch(session_id):
        raise missing
    session = ctx.catalog.upload(session_id, open_only=not parts)
    if session is None or session.owner != ctx.actor:
        raise missing
    lifetime = timedelta(hours=ctx.settings.api.upload_ttl_hours)
    if session.seen_at < datetime.now(UTC) - lifetime:
        # Expired, if not swept yet (sessions are swept when one opens): gone all the same.
        discard_upload(ctx, session.id)
        raise missing
    if any(entry.session_key is None for entry in session.files):
        # Opened by the release before session keys: its client holds object keys chosen at
        # the opening, which this release never hands out or stores (`_issue_keys`). The
        # client opens a new session on a 404; this one idles out (an earlier release's
        # process may still be committing it).
        raise NotFoundError(
            f"no upload session {session_id} (opened by an earlier release of the server)",
            hint="push again: a new session is opened",
        )
    if parts:
        session = dataclasses.replace(session, received=received_parts(ctx, session_id))
    return session


@requires("push")
def upload_keys(ctx: Context, session_id: str) -> UploadKeys:
    """A session, what it has received, and its data keys again (a client resuming a push
    seals the rest exactly as before), audited: `upload-keys`."""
    session = own_upload(ctx, session_id)
    with ctx.counting_unwraps() as unwraps:
        keys = session_keys(ctx, session)
    ctx.catalog.audit(
        ctx.actor,
        "upload-keys",
        session.model,
        {"session": session.id, "keys": len(keys), "key_unwraps": unwraps.value},
    )
    return _with_layout(session, keys)


@requires("push")
def upload_part_length(ctx: Context, session_id: str, index: int, part: int) -> int:
    """How many sealed bytes part `part` of file `index` has (checked before its body is
    read); NotFoundError for a session that is not the actor's, InvalidInputError for a part
    it does not have."""
    session = own_upload(ctx, session_id, parts=False)
    return part_length(session, index, part)


def part_length(session: UploadSessionRecord, index: int, part: int) -> int:
    if not 0 <= index < len(session.files):
        raise InvalidInputError(f"file index {index} is not in this session")
    entry = session.files[index]
    shape = layout(session, entry)
    count = shape.part_count(session.chunks_per_part)
    if not 0 <= part < count:
        raise InvalidInputError(f"{entry.path} has parts 0..{count - 1}, not {part}")
    return shape.part_range(part, session.chunks_per_part)[1]


def discard_upload(ctx: Context, session_id: str) -> None:
    """Remove a session's parts from the staging store, then its rows, then the parts written
    meanwhile: a part request that found the session still there wrote its part before the
    rows went (the last sweep removes it), one that did not removes its own part
    (`ops.uploadparts`). The rows go after a first sweep, so that a process lost midway leaves
    a session that expires, not parts that nothing lists."""
    store = staging(ctx)
    for sweep in range(2):
        for info in list(store.list(f"sessions/{session_id}/")):
            try:
                store.delete(info.name)
            except NotFoundError:
                continue
        if sweep == 0:
            ctx.catalog.drop_upload(session_id)


@requires("push")
def abandon_upload(ctx: Context, session_id: str) -> None:
    """Discard a session and what it received (not while a commit of it runs)."""
    session = own_upload(ctx, session_id)
    claim = uuid.uuid4().hex
    now = datetime.now(UTC)
    if not ctx.catalog.claim_upload(session.id, claim, at=now, stale=stale_claim_before(now)):
        raise NotFoundError(f"no upload session {session_id} (it is being committed)")
    discard_upload(ctx, session.id)


# A session's last use is written at most this often: a part is not a catalog write.
TOUCH_EVERY = timedelta(seconds=60)
# A commit renews its hold on the session this often; one not renewed for STALE_CLAIM died
# with its process, and the next commit of the session takes it over.
CLAIM_RENEWAL = timedelta(seconds=10)
_STALE_CLAIM = timedelta(seconds=60)


def stale_claim_before(now: datetime) -> datetime:
    return now - _STALE_CLAIM


def expire_uploads(ctx: Context, *, now: datetime | None = None) -> int:
    """Discard the sessions idle for longer than `[api] upload_ttl_hours`; how many."""
    moment = now or datetime.now(UTC)
    idle = ctx.catalog.idle_uploads(moment - timedelta(hours=ctx.settings.api.upload_ttl_hours))
    for session_id in idle:
        discard_upload(ctx, session_id)
    return len(idle)
