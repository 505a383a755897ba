"""SQLAlchemy 2 table definitions of the catalog (the migrations in `migrations/` create them).

Versions are immutable rows: nothing updates a version, a file or a blob once committed. Times are
stored as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

DIGEST = String(71)  # "blake3:" + 64 hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))

    versions: Mapped[list[Version]] = relationship(back_populates="model")


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="uq_versions_model_number"),
        # Not unique: content identical to an expired version is pushed as a new version.
        Index("ix_versions_model_digest", "model_id", "digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(DIGEST, index=True)
    # Indexed: an object URL (/v1/objects/{id}) names the stored object.
    manifest_object: Mapped[str] = mapped_column(String(512), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))
    signed_by: Mapped[str] = mapped_column(String(128))
    file_count: Mapped[int] = mapped_column(Integer)
    total_size: Mapped[int] = mapped_column(BigInteger)
    tensor_count: Mapped[int] = mapped_column(Integer)
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    dtypes: Mapped[str] = mapped_column(String(512))
    # A tombstone: an expired or deleted version keeps its row (and its files) for the audit
    # trail, but no reference resolves to it and its objects may be swept.
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expired_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    expiry_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    model: Mapped[Model] = relationship(back_populates="versions")
    files: Mapped[list[VersionFile]] = relationship(
        back_populates="version", order_by="VersionFile.path"
    )


class Blob(Base):
    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # Indexed: an object URL (/v1/objects/{id}) names the stored object.
    object_name: Mapped[str] = mapped_column(String(512), index=True)
    sealed_size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    # When it was (last) stored; a blob swept by gc keeps its row for its versions' file lists.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    swept_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class VersionFile(Base):
    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True)
    tensor_count: Mapped[int] = mapped_column(Integer)

    version: Mapped[Version] = relationship(back_populates="files")


class KeySlot(Base):
    """A data key wrapped by one key-encryption key, for a blob or a manifest."""

    __tablename__ = "key_slots"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_subject", "subject"),
        # The audit page filters by who and what, newest first, a page at a time.
        Index("ix_audit_events_actor_id", "actor", "id"),
        Index("ix_audit_events_action_id", "action", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON
    # A hash chain: each entry's hash covers its content and the previous entry's hash.
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Placement(Base):
    """One object's copy in one region: `pending` (to be written or checked), `verified` (read
    back, its ciphertext checksum matched) or `bad` (missing, damaged or unreadable; queued for
    repair). The only mutable rows of the catalog besides holds: they track the stores' state."""

    __tablename__ = "placements"
    __table_args__ = (Index("ix_placements_region_state", "region", "state"),)

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    object_name: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))
    checksum: Mapped[str | None] = mapped_column(DIGEST, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LegalHold(Base):
    """A version under legal hold: none of its objects may be deleted while it lasts."""

    __tablename__ = "legal_holds"

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    placed_by: Mapped[str] = mapped_column(String(256))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Alias(Base):
    """A name (production, staging, ...) pointing at one version of a model: the one mutable
    pointer of the catalog, moved only together with a row in `alias_moves`."""

    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(256))


class AliasMove(Base):
    """One move of an alias (append-only): what it pointed at before and after, who, when, why."""

    __tablename__ = "alias_moves"
    __table_args__ = (Index("ix_alias_moves_model_alias", "model_id", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    alias: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(16))  # promote | rollback
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id"), nullable=True
    )
    moved_at: Mapped[datetime] = mapped_column(UTCDateTime())
    moved_by: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text, default="")


class RetentionPolicy(Base):
    """A model's retention rules (model "*": the registry-wide default). NULL: rule unset."""

    __tablename__ = "retention_policies"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    keep_last: Mapped[int | None] = mapped_column(Integer, nullable=True)
    keep_within_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    keep_demoted_for_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(256))


class EventDelivery(Base):
    """One event for one webhook (a transactional outbox): written with the change it reports,
    delivered afterwards, retried until delivered; every attempt is counted."""

    __tablename__ = "event_deliveries"
    __table_args__ = (Index("ix_event_deliveries_delivered_at", "delivered_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class PushLease(Base):
    """An object a push (or a replication) is about to write or reuse: gc leaves it alone until
    the lease is dropped (at the commit) or expires (a crashed writer)."""

    __tablename__ = "push_leases"
    __table_args__ = (Index("ix_push_leases_object", "digest", "purpose"),)

    lease: Mapped[str] = mapped_column(String(36), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Sweep(Base):
    """An object gc has claimed and is deleting from the stores: no push may lease it until the
    sweep is finished (a gc that crashed leaves the row; the next gc finishes it)."""

    __tablename__ = "sweeps"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    object_name: Mapped[str] = mapped_column(String(512))
    run: Mapped[str] = mapped_column(String(36))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiToken(Base):
    """A REST API token: only a hash of its secret is kept. `models` is a JSON list of name
    patterns (fnmatch) the token may act on."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    models: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(256), nullable=True)


class JournalEntry(Base):
    """One committed catalog transaction, as the rows it wrote (a transactional outbox): added in
    the transaction it describes, copied to every region's journal afterwards (`journal_marks`).
    `body` is canonical JSON: `{"rows": {table: [row, ...]}, "deleted": {table: [key, ...]}}`."""

    __tablename__ = "journal_entries"

    # max + 1 under the write lock, not a sequence: a rolled-back transaction must not leave
    # a hole (a reader takes a hole for a deleted segment).
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    body: Mapped[str] = mapped_column(Text)


class JournalEpoch(Base):
    """One run of the journal in the stores (`journal/<epoch>/...`). A catalog rebuilt, or one
    restored from a backup that an operator keeps (`catalog journal --new-epoch`), starts a new
    epoch and writes its whole journal there; the newest epoch is the catalog's."""

    __tablename__ = "journal_epochs"

    epoch: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    parent: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    # The catalog's last entry when the epoch began: a region's copy of the epoch is whole
    # (usable) only from there on; below it the rewrite is still in progress.
    base: Mapped[int] = mapped_column(Integer, default=0)


class JournalMark(Base):
    """How far a region's journal goes in the current epoch: every entry up to `seq` is sealed in
    its store (rows of earlier epochs are deleted when an epoch starts)."""

    __tablename__ = "journal_marks"

    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Marks of an epoch count only while it is the current one: a drain that began in an
    # earlier epoch cannot move a mark of the next.
    epoch: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RetiredKey(Base):
    """A key-encryption key a rotation retired: no key slot under it is recorded any more (a
    process still on the old configuration has its commits refused, not silently kept)."""

    __tablename__ = "retired_keys"

    kek_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    retired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retired_by: Mapped[str] = mapped_column(String(256))


class CatalogIdentity(Base):
    """The registry this catalog belongs to (one row, written when it is created or upgraded by
    its home): a home whose config.toml names another registry is refused."""

    __tablename__ = "catalog_identity"

    registry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    since: Mapped[datetime] = mapped_column(UTCDateTime())


class CachedManifest(Base):
    """A version's signed manifest envelope, as stored (content-addressed, so never stale):
    `show` and `pull` read it here instead of waiting on a store. Not journaled."""

    __tablename__ = "manifest_cache"

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)


class UiSession(Base):
    """A web UI session (`registry.api.ui`): the cookie holds a random id, this row its hash and
    the token it acts as; never the token. Not journaled: a session is transient, and a rebuilt
    catalog has no tokens to act as anyway."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(16), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VersionMeta(Base):
    """A version's metadata and lineage as its signed manifest states them (`push --meta`,
    `--source-repo`, `--base-model`, ...), one row per key: immutable, written with the
    version, what `search` and `ls --tag`'s neighbours read without opening manifests."""

    __tablename__ = "version_meta"
    __table_args__ = (Index("ix_version_meta_key_value", "key", "value"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Tag(Base):
    """A mutable label on a version (`tag add`/`tag rm`, audited): unlike metadata, not part
    of the signed manifest, so it can be corrected."""

    __tablename__ = "tags"
    __table_args__ = (Index("ix_tags_tag", "tag"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    added_by: Mapped[str] = mapped_column(String(256))


class SignerPolicy(Base):
    """Who must have signed a version (an OpenSSF model signature, checked at its push) before
    an alias of the model may point at it: alias "*" covers every alias of the model."""

    __tablename__ = "signer_policies"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(63), primary_key=True)
    signers: Mapped[str] = mapped_column(Text)  # JSON list of identities
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(256))


class UploadSession(Base):
    """An upload session (a push through the API). Not journaled: a session is transient, and
    its parts are ciphertext in the staging store until its commit."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(300))
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunks_per_part: Mapped[int] = mapped_column(Integer)
    # A commit in progress holds the session (its id) so that no second one starts.
    claimed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UploadFile(Base):
    __tablename__ = "upload_files"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(71))
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    nonce_prefix: Mapped[bytes] = mapped_column(LargeBinary)
    # A check of the file once its parts had all arrived: which parts, and what it found.
    checked_parts: Mapped[str | None] = mapped_column(String(71), nullable=True)
    checked_chunk_root: Mapped[str | None] = mapped_column(String(71), nullable=True)
    checked_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Content already stored is sealed under a key of the session's own: its slot (wrapped).
    session_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class LimitCount(Base):
    """The server fleet's count of one thing in one time slot (`registry.catalog.counters`):
    a token's requests, a client's refusals, a token's reads of a model (`item`), its key
    unwraps. Not journaled: transient, swapped every fraction of a second and pruned after its
    window; a rebuilt catalog starts every count afresh."""

    __tablename__ = "limit_counts"
    __table_args__ = (Index("ix_limit_counts_kind_slot", "kind", "slot"),)

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    item: Mapped[str] = mapped_column(String(256), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class LimitSignal(Base):
    """When a threat signal was last raised for a key, by whichever server process: it is
    raised once per window across the fleet. Not journaled (transient)."""

    __tablename__ = "limit_signals"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    raised_at: Mapped[float] = mapped_column(Float)  # Unix time
