"""The records the service speaks in: versions, files, aliases, holds, tokens, audit entries and
the rest, as plain frozen values. They are the vocabulary of the Python API, the REST API and the
CLI alike; the catalog returns them and never a live ORM object, so no caller can touch the
database outside a transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only named in annotations: the records are read by commands that load no key.
    from registry.crypto.keys import WrappedKey


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    digest: str
    tensor_count: int


@dataclass(frozen=True)
class VersionRecord:
    name: str
    number: int
    digest: str
    manifest_object: str
    message: str
    created_at: datetime
    created_by: str
    signed_by: str
    file_count: int
    total_size: int
    tensor_count: int
    parameter_count: int
    dtypes: tuple[str, ...]
    files: tuple[FileRecord, ...]
    expired_at: datetime | None = None
    expired_by: str | None = None
    expiry_reason: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"

    @property
    def expired(self) -> bool:
        return self.expired_at is not None


@dataclass(frozen=True)
class ModelRecord:
    name: str
    created_at: datetime
    version_count: int
    latest: int | None
    total_size: int
    # Its live versions' distinct files: content they share is counted once.
    stored_size: int


@dataclass(frozen=True)
class BlobRecord:
    digest: str
    size: int
    object_name: str
    sealed_size: int
    chunk_size: int
    swept_at: datetime | None = None


@dataclass(frozen=True)
class NewBlob:
    """A blob a push stored (or found stored) and the key slots that open it (one per
    key-encryption key of the regions)."""

    digest: str
    size: int
    object_name: str
    sealed_size: int
    chunk_size: int
    slots: Sequence[WrappedKey]


PENDING = "pending"
VERIFIED = "verified"
BAD = "bad"
PLACEMENT_STATES = (PENDING, VERIFIED, BAD)


@dataclass(frozen=True)
class PlacementRecord:
    """An object's copy in one region and what is known of it."""

    digest: str
    purpose: str
    region: str
    object_name: str
    state: str
    checksum: str | None = None
    detail: str = ""
    updated_at: datetime | None = None


@dataclass(frozen=True)
class StoredObject:
    """An object the catalog's versions reference: a blob or a manifest."""

    digest: str
    purpose: str
    object_name: str


@dataclass(frozen=True)
class Unreferenced:
    """An object no live version references any more: what gc may sweep, and what keeps it."""

    digest: str
    purpose: str
    object_name: str
    size: int  # plaintext bytes
    # Since when nothing has needed it: stored, or the last version using it expired (whichever
    # is later). The grace window counts from here, so a pull of a version that expired a
    # moment ago and a push in flight both finish before it goes.
    idle_since: datetime
    leased: bool  # a push or replication in flight is writing or reusing it
    sweeping: bool  # a gc claimed it (and may have crashed before finishing)


@dataclass(frozen=True)
class TokenRecord:
    """An API token as the catalog knows it (never its secret)."""

    id: str
    name: str
    role: str
    models: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    secret_hash: str = field(default="", repr=False)


@dataclass(frozen=True)
class HoldRecord:
    name: str
    number: int
    digest: str
    reason: str
    placed_by: str
    placed_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"


PROMOTE = "promote"
ROLLBACK = "rollback"  # back to the version before the current one
ROLLBACK_TO = "rollback-to"  # back to a version named by the caller


@dataclass(frozen=True)
class AliasRecord:
    name: str
    alias: str
    number: int
    digest: str
    protected: bool
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class AliasMoveRecord:
    """One move of an alias: `number` is where it pointed after, `previous` before (None: new)."""

    name: str
    alias: str
    kind: str
    number: int
    previous: int | None
    moved_at: datetime
    moved_by: str
    reason: str
    event_id: str | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    id: int
    event_id: str
    url: str
    payload: str
    created_at: datetime
    attempts: int
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str


@dataclass(frozen=True)
class NewVersion:
    name: str
    digest: str
    manifest_object: str
    manifest_slots: Sequence[WrappedKey]
    message: str
    actor: str
    signed_by: str
    total_size: int
    tensor_count: int
    parameter_count: int
    dtypes: Sequence[str]
    files: Sequence[FileRecord]
    blobs: Sequence[NewBlob]
    placements: Sequence[PlacementRecord] = ()
    lease: str | None = None  # the push's lease on its objects, dropped by the commit
    # The manifest's provenance as `version_meta` rows (registry.provenance.Provenance.rows).
    meta: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class AuditVerification:
    """The result of walking the audit chain: `head` is the last good hash (anchor it elsewhere
    to detect the removal of the newest entries, which no chain can show by itself)."""

    ok: bool
    checked: int
    first_bad: int | None
    problem: str
    head: str
    # Token events restored by a catalog rebuild: links whose content the journal never held.
    links_only: int = 0
    # The chain compared with the audit entries of each region's journal (the stores' own,
    # write-once copy): the regions read, what differs, and how many of the newest entries
    # no region's journal holds yet (not yet copied out: taken on the chain's word).
    regions_compared: tuple[str, ...] = ()
    differences: tuple[str, ...] = ()
    not_in_journal: int = 0


@dataclass(frozen=True)
class JournalEpochRecord:
    epoch: str
    started_at: datetime
    parent: str | None
    base: int


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


# The retention rule that applies to every model without one of its own.
DEFAULT_POLICY = "*"


@dataclass(frozen=True)
class ModelSummary:
    """One model as a listing shows it: its newest live version, where its aliases point,
    what it stores, and when anything about it last changed (a version pushed or expired, an
    alias moved, a hold placed)."""

    name: str
    created_at: datetime
    version_count: int
    latest: int | None
    latest_at: datetime | None
    aliases: tuple[tuple[str, int], ...]  # (alias, version number), by alias
    stored_size: int  # the distinct files of its live versions
    changed_at: datetime
    total_size: int = 0  # its live versions' files, each version counted whole


@dataclass(frozen=True)
class RegionCopies:
    """How many of a version's objects (its distinct files and its manifest) one region holds
    verified, pending or bad copies of, as the catalog's placements record them; `missing`
    have no record in that region at all."""

    region: str
    verified: int
    pending: int
    bad: int
    missing: int

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.bad == 0 and self.missing == 0


@dataclass(frozen=True)
class VersionState:
    """What a listing shows beside a version: the aliases at it, its legal hold, and its copies
    in each region."""

    number: int
    aliases: tuple[str, ...]
    hold: HoldRecord | None
    regions: tuple[RegionCopies, ...]


@dataclass(frozen=True)
class UiSessionRecord:
    """A signed-in web UI session: the token it acts as (never the token's secret), its CSRF
    token, and when it ends (`idle_until` moves with use, `expires_at` never)."""

    token_id: str
    csrf: str
    created_at: datetime
    seen_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class DeclaredFile:
    """A file a client means to push through an upload session: its path in the version, size
    and BLAKE3 digest."""

    path: str
    size: int
    digest: str


@dataclass(frozen=True)
class CheckedFile:
    """What a check of a file's parts found, once they had all arrived: for which parts (the
    digest of their digests), and the plaintext's chunk root and SHA-256 (its BLAKE3 digest was
    the one declared)."""

    parts: str
    chunk_root: str
    sha256: str


@dataclass(frozen=True)
class UploadFileRecord:
    """A file of an upload session: what the client declared (path, size, BLAKE3 digest), how
    it must seal it (the salt and nonce prefix of its sealed header, issued by the server, and
    for content already stored a key of the session's own), and what a check of its parts
    found, once they had all arrived."""

    index: int
    path: str
    size: int
    digest: str
    salt: bytes
    nonce_prefix: bytes
    checked: CheckedFile | None = None
    # For content already stored: a key of this session's own, wrapped (a key slot's JSON),
    # never the stored object's key (which this pusher may have no right to).
    session_key: bytes | None = None


@dataclass(frozen=True)
class UploadSessionRecord:
    """An upload session (a push through the API): its model and message, the token that
    opened it (`owner`, the actor), the chunk and part layout every file is sealed and sent in,
    its files, and the parts received so far: (file index, part) -> the part's BLAKE3 digest."""

    id: str
    model: str
    message: str
    owner: str
    chunk_size: int
    chunks_per_part: int
    created_at: datetime
    seen_at: datetime
    files: tuple[UploadFileRecord, ...]
    received: dict[tuple[int, int], str]


@dataclass(frozen=True)
class TagRecord:
    """A tag on a version (a mutable label, outside the signed manifest): who added it, when."""

    name: str
    number: int
    tag: str
    added_at: datetime
    added_by: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.number}"


# What a search hit matched: its model's name, a tag, a metadata key and value, its message.
MATCH_FIELDS = ("name", "tag", "meta", "message")


@dataclass(frozen=True)
class SearchMatch:
    """One reason a version is a search hit: `field` (one of MATCH_FIELDS), the text that
    matched (the model's name, the tag, the metadata value, a piece of the message) and, for
    metadata, its key."""

    field: str
    value: str
    key: str | None = None


@dataclass(frozen=True)
class SearchHit:
    """A version a search found, with every reason it matched."""

    version: VersionRecord
    matches: tuple[SearchMatch, ...]


# The server fleet's shared limit counts (`Registry.exchange_counts`): (kind, key, item, slot),
# what is counted (a token's requests, a client's refusals, a token's reads of a model, its key
# unwraps), whose, of what, and in which time slot (Unix time // the kind's slot length).
CountCell = tuple[str, str, str, int]


@dataclass(frozen=True)
class CountSpan:
    """Of one kind of count: the keys whose fleet counts are wanted back, the oldest slot that
    still matters, and how long any count of the kind may matter (a store that expires keys
    itself, Redis, keeps an untouched one that long)."""

    keys: tuple[str, ...]
    oldest: int
    lifetime: float
