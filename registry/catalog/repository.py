"""Catalog queries and the one transaction that commits a version; the service's only door to SQL.

Results are returned as plain frozen records (`VersionRecord`, ...), never live ORM objects, so no
caller can lazily touch the database outside a transaction.
"""

from __future__ import annotations

import hmac
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import blake3
from sqlalchemy import ColumnElement, Engine, delete, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import IntegrityError as SQLIntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from registry.catalog.journal import REDACTED_DETAILS, TOKEN_ACTIONS, capture_changes, write_entry
from registry.catalog.models import (
    Alias,
    AliasMove,
    ApiToken,
    AuditEvent,
    Blob,
    CachedManifest,
    CatalogIdentity,
    EventDelivery,
    JournalEntry,
    JournalEpoch,
    JournalMark,
    KeySlot,
    LegalHold,
    Model,
    Placement,
    PushLease,
    RetentionPolicy,
    RetiredKey,
    Sweep,
    Version,
    VersionFile,
    utcnow,
)
from registry.crypto.keys import WrappedKey
from registry.errors import (
    AmbiguousReferenceError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RetentionError,
    StorageError,
)
from registry.records import (
    DEFAULT_POLICY,
    ROLLBACK,
    AliasMoveRecord,
    AliasRecord,
    AuditRecord,
    AuditVerification,
    BlobRecord,
    DeliveryRecord,
    FileRecord,
    HoldRecord,
    JournalEpochRecord,
    ModelRecord,
    NewBlob,
    NewVersion,
    PlacementRecord,
    StoredObject,
    TokenRecord,
    Unreferenced,
    VersionRecord,
)
from registry.refs import Reference
from registry.retention import Decision, Policy, VersionFacts, last_demotions, plan

T = TypeVar("T")
COMMIT_ATTEMPTS = 10


def _version_record(version: Version) -> VersionRecord:
    return VersionRecord(
        name=version.model.name,
        number=version.number,
        digest=version.digest,
        manifest_object=version.manifest_object,
        message=version.message,
        created_at=version.created_at,
        created_by=version.created_by,
        signed_by=version.signed_by,
        file_count=version.file_count,
        total_size=version.total_size,
        tensor_count=version.tensor_count,
        parameter_count=version.parameter_count,
        dtypes=tuple(filter(None, version.dtypes.split(","))),
        files=tuple(FileRecord(f.path, f.size, f.digest, f.tensor_count) for f in version.files),
        expired_at=version.expired_at,
        expired_by=version.expired_by,
        expiry_reason=version.expiry_reason,
    )


def _expired_error(version: Version) -> NotFoundError:
    assert version.expired_at is not None
    return NotFoundError(
        f"{version.model.name}@{version.number} was {version.expiry_reason or 'expired'} "
        f"on {version.expired_at:%Y-%m-%d %H:%M} UTC by {version.expired_by}",
        hint=f"`model-registry audit {version.model.name}` shows why; "
        f"`model-registry ls {version.model.name}` lists the versions that remain",
    )


def _is_contention(error: OperationalError) -> bool:
    """A lock or serialisation conflict with another writer (worth retrying)."""
    code = getattr(error.orig, "sqlstate", None)
    if code in ("40001", "40P01", "55P03"):
        return True
    return "database is locked" in str(error.orig) or "database table is locked" in str(error.orig)


def _unavailable(error: DBAPIError) -> StorageError:
    return StorageError(
        f"catalog unavailable: {str(error.orig).strip().splitlines()[0] if error.orig else error}",
        hint="check that the catalog database is reachable and has space "
        "(catalog.url in config.toml, or MODEL_REGISTRY_CATALOG_URL)",
    )


def _details(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"))


class Catalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        capture_changes(self._sessions)
        # Outbox entries this handle wrote: its owner drains the journal when it has some.
        self.journaled = 0

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._sessions.begin() as session:
                yield session
        except DBAPIError as error:
            raise _unavailable(error) from None

    def _retrying(self, work: Callable[[Session], T], *, what: str) -> T:
        """Run `work` in a transaction, again on a unique-key race or a lock/serialisation
        conflict; any other database error is the catalog being unavailable, not a race."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    _serialise(session)
                    result = work(session)
                    if write_entry(session) is not None:
                        self.journaled += 1
                    return result
            except SQLIntegrityError:
                pass
            except OperationalError as error:
                if not _is_contention(error):
                    raise _unavailable(error) from None
            except DBAPIError as error:
                raise _unavailable(error) from None
            if attempt < COMMIT_ATTEMPTS - 1:
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))  # noqa: S311
        raise ConflictError(
            f"{what}: too many concurrent changes, nothing was committed",
            hint="run the same command again; stored data is reused",
        )

    # -- identity and the manifest cache ------------------------------------------------------

    def registry_id(self) -> str | None:
        """The registry this catalog belongs to (None: a catalog that never recorded one)."""
        with self._read() as session:
            return session.scalar(select(CatalogIdentity.registry_id))

    def cached_manifest(self, digest: str) -> bytes | None:
        """A version's signed manifest envelope, if cached (the caller checks it)."""
        with self._read() as session:
            return session.scalar(
                select(CachedManifest.envelope).where(CachedManifest.digest == digest)
            )

    def cache_manifest(self, digest: str, envelope: bytes) -> None:
        def work(session: Session) -> None:
            if session.get(CachedManifest, digest) is None:
                session.add(CachedManifest(digest=digest, envelope=envelope))

        self._retrying(work, what="caching a manifest")

    # -- reads -----------------------------------------------------------------------------

    def models(self) -> list[ModelRecord]:
        with self._read() as session:
            rows = session.execute(
                select(
                    Model.name,
                    Model.created_at,
                    func.count(Version.id),
                    func.max(Version.number),
                    func.coalesce(func.sum(Version.total_size), 0),
                )
                .outerjoin(Version, (Version.model_id == Model.id) & Version.expired_at.is_(None))
                .group_by(Model.id)
                .order_by(Model.name)
            ).all()
        return [ModelRecord(n, c, count, latest, int(size)) for n, c, count, latest, size in rows]

    def versions(self, name: str, *, expired: bool = False) -> list[VersionRecord]:
        """The model's live versions, oldest first (with `expired`, the tombstones too)."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            query = (
                select(Version)
                .where(Version.model_id == model.id)
                .options(selectinload(Version.files), selectinload(Version.model))
                .order_by(Version.number)
            )
            if not expired:
                query = query.where(Version.expired_at.is_(None))
            return [_version_record(v) for v in session.scalars(query).all()]

    def resolve(self, ref: Reference) -> VersionRecord:
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == ref.name))
            if model is None:
                raise NotFoundError(f"model {ref.name} does not exist")
            query = (
                select(Version)
                .where(Version.model_id == model.id)
                .options(selectinload(Version.files), selectinload(Version.model))
            )
            if ref.alias is not None:
                alias = session.get(Alias, (model.id, ref.alias))
                if alias is None:
                    raise NotFoundError(
                        f"{ref}: model {ref.name} has no alias {ref.alias!r}",
                        hint=f"`model-registry history {ref.name}` lists its aliases",
                    )
                version = session.scalar(query.where(Version.id == alias.version_id))
                assert version is not None  # a foreign key; expiry never takes an aliased one
                return _version_record(version)
            if ref.number is not None:
                version = session.scalar(query.where(Version.number == ref.number))
                if version is None:
                    raise NotFoundError(f"{ref} does not exist")
                if version.expired_at is not None:
                    raise _expired_error(version)
                return _version_record(version)
            if ref.digest_prefix is not None:
                found = session.scalars(
                    query.where(Version.digest.startswith(f"blake3:{ref.digest_prefix}")).order_by(
                        Version.number
                    )
                ).all()
                matches = [v for v in found if v.expired_at is None]
                if not matches and found:
                    raise _expired_error(found[-1])
                if not matches:
                    raise NotFoundError(f"{ref} matches no version")
                if len(matches) > 1:
                    raise AmbiguousReferenceError(f"{ref} matches more than one version")
                return _version_record(matches[0])
            version = session.scalar(
                query.where(Version.expired_at.is_(None)).order_by(Version.number.desc()).limit(1)
            )
            if version is None:
                raise NotFoundError(f"model {ref.name} has no versions")
            return _version_record(version)

    def blob(self, digest: str) -> BlobRecord | None:
        with self._read() as session:
            row = session.get(Blob, digest)
            if row is None:
                return None
            return BlobRecord(
                row.digest, row.size, row.object_name, row.sealed_size, row.chunk_size, row.swept_at
            )

    def key_slot(self, digest: str, purpose: str, kek_id: str) -> WrappedKey | None:
        with self._read() as session:
            row = session.get(KeySlot, (digest, purpose, kek_id))
            return None if row is None else WrappedKey(row.provider, row.kek_id, row.wrapped)

    def key_slots(self, digest: str, purpose: str) -> list[WrappedKey]:
        """Every recorded slot of an object (one per key-encryption key)."""
        with self._read() as session:
            rows = session.scalars(
                select(KeySlot).where(KeySlot.digest == digest, KeySlot.purpose == purpose)
            ).all()
            return [WrappedKey(row.provider, row.kek_id, row.wrapped) for row in rows]

    def key_slot_owners(self, digest: str, purpose: str) -> list[str]:
        """The key-encryption key ids that hold a slot for this object."""
        with self._read() as session:
            return list(
                session.scalars(
                    select(KeySlot.kek_id).where(
                        KeySlot.digest == digest, KeySlot.purpose == purpose
                    )
                )
            )

    def find_version(self, name: str, digest: str) -> VersionRecord | None:
        with self._read() as session:
            version = session.scalar(
                select(Version)
                .join(Model)
                .where(Model.name == name, Version.digest == digest, Version.expired_at.is_(None))
                .options(selectinload(Version.files), selectinload(Version.model))
            )
            return None if version is None else _version_record(version)

    def audit_events(
        self,
        *,
        subject: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        action: str | None = None,
    ) -> list[AuditRecord]:
        """The newest `limit` entries (about `subject`, of `action`, at or after `since`),
        newest first."""
        with self._read() as session:
            query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
            if subject is not None:
                query = query.where(AuditEvent.subject == subject)
            if action is not None:
                query = query.where(AuditEvent.action == action)
            if since is not None:
                query = query.where(AuditEvent.at >= since)
            return [
                AuditRecord(e.id, e.at, e.actor, e.action, e.subject, json.loads(e.details))
                for e in session.scalars(query)
            ]

    # -- writes ----------------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
        def work(session: Session) -> None:
            append_audit(
                session,
                at=utcnow(),
                actor=actor,
                action=action,
                subject=subject,
                details=_details(details),
            )

        self._retrying(work, what=f"audit {action}")

    def commit_version(self, new: NewVersion) -> tuple[VersionRecord, bool]:
        """Record a pushed version in one transaction; returns (version, created).

        When a version with the same digest exists, nothing is written and it is returned with
        created=False. Version numbers are max + 1; a concurrent push that takes the number first
        makes the unique constraint fail, and the transaction is retried with the next number.
        """

        def work(session: Session) -> tuple[VersionRecord, bool]:
            now = utcnow()
            model = session.scalar(select(Model).where(Model.name == new.name))
            if model is None:
                model = Model(name=new.name, created_at=now, created_by=new.actor)
                session.add(model)
                session.flush()
            # Slots and placements are what the stores hold now, whether or not the version
            # is new (a re-push of existing content repairs).
            objects = {(b.digest, "blob") for b in new.blobs} | {(new.digest, "manifest")}
            if new.lease is not None:
                leased = {
                    (row.digest, row.purpose)
                    for row in session.scalars(
                        select(PushLease).where(
                            PushLease.lease == new.lease, PushLease.expires_at > now
                        )
                    )
                }
                if not objects <= leased:
                    # Its lease lapsed: gc may have swept an object this push found stored.
                    raise ConflictError(
                        f"push {new.name} took longer than its lease on its objects; "
                        "nothing was committed",
                        hint="run the same push again; it stores anything missing anew",
                    )
            if _being_swept(session, sorted(objects)):
                raise ConflictError(
                    f"push {new.name}: some of its objects are being garbage-collected",
                    hint="run the same push again; it stores them anew",
                )
            slots = [(b.digest, "blob", slot) for b in new.blobs for slot in b.slots]
            slots += [(new.digest, "manifest", slot) for slot in new.manifest_slots]
            _add_slots(session, slots, now)
            for placement in new.placements:
                _upsert_placement(session, placement, now)
            if new.lease is not None:
                session.execute(delete(PushLease).where(PushLease.lease == new.lease))
            for blob in new.blobs:
                store_blob_row(session, blob, now)
            existing = session.scalar(
                select(Version)
                .where(
                    Version.model_id == model.id,
                    Version.digest == new.digest,
                    Version.expired_at.is_(None),
                )
                .options(selectinload(Version.files), selectinload(Version.model))
            )
            if existing is not None:
                return _version_record(existing), False
            session.flush()
            version = add_version(session, model, new, at=now)
            session.flush()
            session.refresh(version, ["files"])
            return _version_record(version), True

        return self._retrying(work, what=f"push {new.name}")

    def verify_audit(
        self, *, links_mac: Callable[[Sequence[tuple[int, str]]], str] | None = None
    ) -> AuditVerification:
        """Walk the audit chain from the first entry: every entry's hash must match its content
        and the previous entry's hash. Names the first entry where that fails (an edited entry,
        or one whose predecessor was deleted, inserted or moved). Token events a rebuild
        restored as links are taken on trust only when the rebuild's entry names them with a
        MAC that `links_mac` (the registry's key) confirms."""
        with self._read() as session:
            prev = GENESIS
            checked = links_only = 0
            links = _restored_links(session, links_mac)
            rows = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
            for event in rows.yield_per(1000):
                if event.prev_hash != prev:
                    return AuditVerification(
                        False,
                        checked,
                        event.id,
                        f"audit entry {event.id} does not follow entry "
                        f"{'(none)' if checked == 0 else 'before it'}: an entry before it was "
                        "deleted, inserted or moved",
                        prev,
                    )
                expected = audit_hash(
                    prev,
                    id=event.id,
                    at=event.at,
                    actor=event.actor,
                    action=event.action,
                    subject=event.subject,
                    details=event.details,
                )
                link = (
                    event.id in links
                    and event.action in TOKEN_ACTIONS
                    and event.details == REDACTED_DETAILS
                )
                if event.hash != expected and link:
                    links_only += 1
                elif event.hash != expected:
                    return AuditVerification(
                        False,
                        checked,
                        event.id,
                        f"audit entry {event.id} was changed after it was written",
                        prev,
                    )
                prev = event.hash
                checked += 1
            return AuditVerification(True, checked, None, "", prev, links_only)

    # -- the journal's outbox ----------------------------------------------------------------

    def journal_after(self, seq: int, *, limit: int) -> list[tuple[int, datetime, str]]:
        """Up to `limit` outbox entries after `seq`, in order: (seq, time, body)."""
        with self._read() as session:
            rows = session.execute(
                select(JournalEntry.seq, JournalEntry.at, JournalEntry.body)
                .where(JournalEntry.seq > seq)
                .order_by(JournalEntry.seq)
                .limit(limit)
            )
            return [(row.seq, row.at, row.body) for row in rows]

    def journal_head(self) -> int:
        """The number of the newest outbox entry (0: none yet)."""
        with self._read() as session:
            return session.scalar(select(func.max(JournalEntry.seq))) or 0

    def journal_oldest_after(self, seq: int) -> datetime | None:
        """When the oldest entry after `seq` was committed (None: nothing after it)."""
        with self._read() as session:
            return session.scalar(
                select(JournalEntry.at).where(JournalEntry.seq > seq).order_by(JournalEntry.seq)
            )

    def journal_marks(self) -> dict[str, int]:
        """How far each region's journal goes in the current epoch (never written: absent)."""
        with self._read() as session:
            current = _current_epoch(session).epoch
            return {
                row.region: row.seq
                for row in session.scalars(select(JournalMark).where(JournalMark.epoch == current))
            }

    def set_journal_mark(self, epoch: str, region: str, seq: int, *, exactly: bool = False) -> None:
        """Record that `region` holds every entry up to `seq` of `epoch`: marks only advance,
        unless `exactly` (the store was found to hold less, and the rest is written again). A
        mark of an epoch that is no longer the current one is ignored."""

        def work(session: Session) -> None:
            if _current_epoch(session).epoch != epoch:
                return
            # Marks of earlier epochs were deleted when the current one started.
            row = session.get(JournalMark, region)
            if row is None:
                session.add(JournalMark(region=region, epoch=epoch, seq=seq, updated_at=utcnow()))
            elif seq > row.seq or (exactly and seq != row.seq):
                row.seq = seq
                row.updated_at = utcnow()

        self._retrying(work, what=f"journal mark of {region}")

    def journal_epoch(self) -> JournalEpochRecord:
        """The current epoch of the journal in the stores."""
        with self._read() as session:
            row = _current_epoch(session)
            return JournalEpochRecord(row.epoch, row.started_at, row.parent, row.base)

    def start_journal_epoch(
        self,
        *,
        reason: str,
        actor: str,
        replacing: str | None = None,
        after: datetime | None = None,
    ) -> str:
        """Begin a new epoch: every region's journal is written again from the first entry,
        under a new name (what the stores hold of earlier epochs stays as it is). With
        `replacing`, only if that is still the current epoch (two processes that found the same
        divergence start one epoch, not two); it starts later than `after` and than every
        epoch the catalog knows, whatever the clock says."""

        def work(session: Session) -> str:
            current = _current_epoch(session)
            if replacing is not None and current.epoch != replacing:
                return current.epoch
            now = max(
                [utcnow(), current.started_at + timedelta(microseconds=1)]
                + ([after + timedelta(microseconds=1)] if after is not None else [])
            )
            epoch = uuid.uuid4().hex
            base = session.scalar(select(func.max(JournalEntry.seq))) or 0
            session.add(
                JournalEpoch(
                    epoch=epoch, started_at=now, parent=current.epoch, reason=reason, base=base
                )
            )
            session.execute(delete(JournalMark))
            append_audit(
                session,
                at=now,
                actor=actor,
                action="journal-epoch",
                subject="registry",
                details=_details({"epoch": epoch, "parent": current.epoch, "reason": reason}),
            )
            return epoch

        return self._retrying(work, what="start a journal epoch")

    def retired_keys(self) -> set[str]:
        with self._read() as session:
            return set(session.scalars(select(RetiredKey.kek_id)))

    def unretire_key(self, kek_id: str) -> None:
        """A retired key becomes usable again (a rotation back to it)."""

        def work(session: Session) -> None:
            row = session.get(RetiredKey, kek_id)
            if row is not None:
                session.delete(row)

        self._retrying(work, what="unretire a key")

    def retire_keys(self, kek_ids: Sequence[str], *, actor: str) -> None:
        """From now on no key slot under these keys is recorded (commits carrying one fail)."""

        def work(session: Session) -> None:
            now = utcnow()
            for kek_id in kek_ids:
                if session.get(RetiredKey, kek_id) is None:
                    session.add(RetiredKey(kek_id=kek_id, retired_at=now, retired_by=actor))

        self._retrying(work, what="retire keys")

    # -- retention -------------------------------------------------------------------------

    def set_retention(self, model: str, policy: Policy, *, actor: str) -> None:
        """Replace the policy of `model` ("*": the default), audited in the same transaction."""

        def seconds(value: timedelta | None) -> int | None:
            return None if value is None else int(value.total_seconds())

        def work(session: Session) -> None:
            if (
                model != DEFAULT_POLICY
                and session.scalar(select(Model.id).where(Model.name == model)) is None
            ):
                raise NotFoundError(f"model {model} does not exist")
            row = session.get(RetentionPolicy, model)
            if row is None:
                row = RetentionPolicy(model=model)
                session.add(row)
            row.keep_last = policy.keep_last
            row.keep_within_seconds = seconds(policy.keep_within)
            row.keep_demoted_for_seconds = seconds(policy.keep_demoted_for)
            row.updated_at = utcnow()
            row.updated_by = actor
            append_audit(
                session,
                at=row.updated_at,
                actor=actor,
                action="retention",
                subject=model if model != DEFAULT_POLICY else "registry",
                details=_details({"policy": policy.describe(), "model": model}),
            )

        self._retrying(work, what=f"retention of {model}")

    def retention(self, model: str) -> tuple[Policy, str]:
        """The policy in force for `model` and where it comes from: the model's own, the
        default ("*"), or none."""
        with self._read() as session:
            for source in (model, DEFAULT_POLICY):
                row = session.get(RetentionPolicy, source)
                if row is not None:
                    return (
                        Policy(
                            row.keep_last,
                            _delta(row.keep_within_seconds),
                            _delta(row.keep_demoted_for_seconds),
                        ),
                        source,
                    )
        return Policy(), "none"

    def retention_plan(
        self, name: str, *, now: datetime, locked_for: timedelta | None
    ) -> tuple[Policy, list[Decision]]:
        """The policy in force for `name` and which of its live versions it keeps and why."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            return _plan_in(session, model, now=now, locked_for=locked_for)

    # -- expiry and deletion ---------------------------------------------------------------

    def expire_versions(
        self,
        name: str,
        *,
        now: datetime,
        locked_for: timedelta | None,
        actor: str,
        only: set[int] | None = None,
    ) -> list[VersionRecord]:
        """Tombstone the versions of `name` that its retention policy no longer keeps (of
        those in `only`, when given). The plan is made again inside the transaction, so an alias
        moved or a hold placed a moment ago is seen; each expiry is audited."""

        def work(session: Session) -> list[VersionRecord]:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            policy, decisions = _plan_in(session, model, now=now, locked_for=locked_for)
            rows = {v.number: v for v in _live_versions(session, model)}
            expired = []
            for decision in decisions:
                if decision.keep or (only is not None and decision.number not in only):
                    continue
                version = rows[decision.number]
                _tombstone(
                    session,
                    version,
                    actor=actor,
                    reason="expired by the retention policy",
                    action="expire",
                    details={
                        "version": version.number,
                        "digest": version.digest,
                        "policy": policy.describe(),
                    },
                    now=now,
                )
                expired.append(_version_record(version))
            return expired

        return self._retrying(work, what=f"expire versions of {name}")

    def delete_version(
        self, ref: Reference, *, reason: str, actor: str, locked_for: timedelta | None
    ) -> VersionRecord:
        """Tombstone one version on an admin's word, unless an alias, a hold or a retention
        rule keeps it (the rule "no policy: keep everything" does not stand in the way of an
        explicit delete)."""
        target = self.resolve(ref)

        def work(session: Session) -> VersionRecord:
            version = _version_row(session, target)
            if version.expired_at is not None:
                raise _expired_error(version)
            now = utcnow()
            _policy, decisions = _plan_in(session, version.model, now=now, locked_for=locked_for)
            reasons = next(d.reasons for d in decisions if d.number == version.number)
            keeping = [r for r in reasons if r != NO_RULE]
            if keeping:
                raise RetentionError(
                    f"{target.ref} is kept: {'; '.join(keeping)}",
                    hint="move its aliases, release its hold or change the retention policy "
                    f"first (`model-registry retention plan {target.name}` explains)",
                )
            _tombstone(
                session,
                version,
                actor=actor,
                reason=f"deleted: {reason}",
                action="delete",
                details={"version": version.number, "digest": version.digest, "reason": reason},
                now=now,
            )
            return _version_record(version)

        return self._retrying(work, what=f"delete {ref}")

    # -- leases and sweeps (garbage collection) ----------------------------------------------

    def take_lease(
        self, lease: str, objects: Sequence[tuple[str, str]], *, ttl: timedelta
    ) -> list[tuple[str, str]]:
        """Lease (digest, purpose) objects for a writer: gc will not claim them until the lease
        is dropped or expires. When any is being swept right now nothing is leased and those are
        returned: the writer waits for the sweep to finish, then stores them anew."""

        def work(session: Session) -> list[tuple[str, str]]:
            swept = _being_swept(session, objects)
            if swept:
                return swept
            now = utcnow()
            for digest, purpose in sorted(set(objects)):
                session.add(
                    PushLease(
                        lease=lease,
                        digest=digest,
                        purpose=purpose,
                        created_at=now,
                        expires_at=now + ttl,
                    )
                )
            return []

        return self._retrying(work, what="lease objects")

    def renew_lease(self, lease: str, *, ttl: timedelta) -> bool:
        """Extend a live lease (a long replication); False when it lapsed or was dropped."""

        def work(session: Session) -> bool:
            now = utcnow()
            rows = session.scalars(select(PushLease).where(PushLease.lease == lease)).all()
            if not rows or any(row.expires_at <= now for row in rows):
                return False
            for row in rows:
                row.expires_at = now + ttl
            return True

        return self._retrying(work, what="renew a lease")

    def drop_lease(self, lease: str) -> None:
        def work(session: Session) -> None:
            session.execute(delete(PushLease).where(PushLease.lease == lease))

        self._retrying(work, what="drop a lease")

    def drop_expired_leases(self, now: datetime) -> int:
        def work(session: Session) -> int:
            result = session.execute(delete(PushLease).where(PushLease.expires_at <= now))
            return int(getattr(result, "rowcount", 0) or 0)

        return self._retrying(work, what="drop expired leases")

    def unreferenced(
        self, *, now: datetime, assume_expired: frozenset[tuple[str, int]] = frozenset()
    ) -> list[Unreferenced]:
        """Every stored object no live version references (versions in `assume_expired`, as
        (name, number), count as expired: what a dry run shows)."""
        with self._read() as session:
            ids = []
            for name, number in sorted(assume_expired):
                found = session.scalar(
                    select(Version.id)
                    .join(Model)
                    .where(Model.name == name, Version.number == number)
                )
                if found is not None:
                    ids.append(found)
            return _unreferenced(session, now=now, assume_expired=ids)

    def claim_sweep(
        self, digest: str, purpose: str, *, run: str, stored_before: datetime
    ) -> str | None:
        """Claim one object for deletion; None when claimed, else why not. Checked again
        inside the transaction: no live version references it, no live lease holds it, it is
        older than the grace window and nobody else claimed it."""

        def work(session: Session) -> str | None:
            now = utcnow()
            found = {
                (u.digest, u.purpose): u for u in _unreferenced(session, now=now, digest=digest)
            }
            candidate = found.get((digest, purpose))
            if candidate is None:
                return "referenced by a version, or already swept"
            if candidate.sweeping:
                return "claimed by another gc"
            if candidate.leased:
                return "in use by a push in flight"
            if candidate.idle_since > stored_before:
                return "younger than the grace window"
            session.add(
                Sweep(
                    digest=digest,
                    purpose=purpose,
                    object_name=candidate.object_name,
                    run=run,
                    claimed_at=now,
                )
            )
            return None

        return self._retrying(work, what=f"claim {purpose} {digest}")

    def leased(self) -> set[tuple[str, str]]:
        """(purpose, digest) of every object a live lease holds (a push or replication in
        flight is about to reference it)."""
        with self._read() as session:
            rows = session.execute(
                select(PushLease.purpose, PushLease.digest).where(PushLease.expires_at > utcnow())
            ).all()
            return {(purpose, digest) for purpose, digest in rows}

    def sweeps(self) -> list[tuple[str, str]]:
        """(digest, purpose) of every claimed sweep not finished yet."""
        with self._read() as session:
            rows = session.execute(
                select(Sweep.digest, Sweep.purpose).order_by(Sweep.digest, Sweep.purpose)
            ).all()
            return [(digest, purpose) for digest, purpose in rows]

    def renew_claim(self, digest: str, purpose: str, *, run: str) -> bool:
        """The claim is still `run`'s (not taken over by another gc): refresh it and say so."""

        def work(session: Session) -> bool:
            claim = session.get(Sweep, (digest, purpose))
            if claim is None or claim.run != run:
                return False
            claim.claimed_at = utcnow()
            return True

        return self._retrying(work, what=f"renew the claim on {purpose} {digest}")

    def stale_sweeps(self, *, claimed_before: datetime) -> list[tuple[str, str]]:
        """(digest, purpose) of claims older than `claimed_before` (a gc that stopped)."""
        with self._read() as session:
            rows = session.execute(
                select(Sweep.digest, Sweep.purpose).where(Sweep.claimed_at < claimed_before)
            ).all()
            return [(digest, purpose) for digest, purpose in rows]

    def take_over_sweeps(self, *, run: str, claimed_before: datetime) -> list[tuple[str, str]]:
        """Claims older than `claimed_before` (left by a gc that crashed or hung) become `run`'s,
        to be finished by it: (digest, purpose) of each."""

        def work(session: Session) -> list[tuple[str, str]]:
            rows = session.scalars(
                select(Sweep).where(Sweep.claimed_at < claimed_before).order_by(Sweep.digest)
            ).all()
            for row in rows:
                row.run = run
                row.claimed_at = utcnow()
            return [(row.digest, row.purpose) for row in rows]

        return self._retrying(work, what="take over unfinished sweeps")

    def finish_sweep(
        self, digest: str, purpose: str, *, run: str, cleared: Sequence[str], complete: bool
    ) -> bool:
        """Record what one sweep deleted: the copies in the regions `cleared` are gone. When
        `complete` (every region cleared) the object is swept: its key slots and placements are
        forgotten and a blob is marked swept; else the claim is dropped and a later gc tries
        again. Only the run holding the claim finishes it. Returns whether it was swept."""

        def work(session: Session) -> bool:
            claim = session.get(Sweep, (digest, purpose))
            if claim is None or claim.run != run:
                return False
            if cleared:
                session.execute(
                    delete(Placement).where(
                        Placement.digest == digest,
                        Placement.purpose == purpose,
                        Placement.region.in_(list(cleared)),
                    )
                )
            session.delete(claim)
            if not complete:
                return False
            session.execute(
                delete(Placement).where(Placement.digest == digest, Placement.purpose == purpose)
            )
            session.execute(
                delete(KeySlot).where(KeySlot.digest == digest, KeySlot.purpose == purpose)
            )
            if purpose == "blob":
                row = session.get(Blob, digest)
                if row is not None:
                    row.swept_at = utcnow()
            return True

        return self._retrying(work, what=f"finish sweeping {purpose} {digest}")

    # -- API tokens --------------------------------------------------------------------------

    def add_token(self, record: TokenRecord, *, actor: str) -> None:
        def work(session: Session) -> None:
            session.add(
                ApiToken(
                    id=record.id,
                    name=record.name,
                    secret_hash=record.secret_hash,
                    role=record.role,
                    models=json.dumps(list(record.models)),
                    created_at=record.created_at,
                    created_by=record.created_by,
                    expires_at=record.expires_at,
                )
            )
            append_audit(
                session,
                at=record.created_at,
                actor=actor,
                action="token-create",
                subject="registry",
                details=_details(
                    {
                        "token": record.id,
                        "name": record.name,
                        "role": record.role,
                        "models": list(record.models),
                        "expires_at": None
                        if record.expires_at is None
                        else record.expires_at.isoformat(),
                    }
                ),
            )

        self._retrying(work, what="create a token")

    def token(self, token_id: str) -> TokenRecord | None:
        with self._read() as session:
            row = session.get(ApiToken, token_id)
            return None if row is None else _token_record(row)

    def tokens(self) -> list[TokenRecord]:
        with self._read() as session:
            rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at)).all()
            return [_token_record(row) for row in rows]

    def revoke_token(self, token_id: str, *, actor: str) -> TokenRecord:
        def work(session: Session) -> TokenRecord:
            row = session.get(ApiToken, token_id)
            if row is None:
                raise NotFoundError(
                    f"no token {token_id}", hint="`model-registry token list` shows them"
                )
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                row.revoked_by = actor
                append_audit(
                    session,
                    at=row.revoked_at,
                    actor=actor,
                    action="token-revoke",
                    subject="registry",
                    details=_details({"token": row.id, "name": row.name}),
                )
            return _token_record(row)

        return self._retrying(work, what=f"revoke token {token_id}")

    # -- event deliveries ------------------------------------------------------------------

    def deliveries(
        self,
        *,
        pending_only: bool = False,
        event_id: str | None = None,
        limit: int = 1000,
        oldest_first: bool = False,
    ) -> list[DeliveryRecord]:
        with self._read() as session:
            order = EventDelivery.id if oldest_first else EventDelivery.id.desc()
            query = select(EventDelivery).order_by(order).limit(limit)
            if pending_only:
                query = query.where(EventDelivery.delivered_at.is_(None))
            if event_id is not None:
                query = query.where(EventDelivery.event_id == event_id)
            return [
                DeliveryRecord(
                    row.id,
                    row.event_id,
                    row.url,
                    row.payload,
                    row.created_at,
                    row.attempts,
                    row.last_attempt_at,
                    row.delivered_at,
                    row.last_error,
                )
                for row in session.scalars(query)
            ]

    def record_delivery(self, delivery_id: int, *, error: str | None) -> None:
        """Count one attempt: delivered when `error` is None."""

        def work(session: Session) -> None:
            row = session.get(EventDelivery, delivery_id)
            if row is None:
                raise NotFoundError(f"no event delivery {delivery_id}")
            now = utcnow()
            row.attempts += 1
            row.last_attempt_at = now
            if error is None:
                row.delivered_at = now
                row.last_error = ""
            else:
                row.last_error = error[:2000]

        self._retrying(work, what="record a delivery")

    # -- placements ------------------------------------------------------------------------

    def record_placements(self, placements: Sequence[PlacementRecord]) -> None:
        """Insert or update the state of object copies (one transaction)."""
        if not placements:
            return

        def work(session: Session) -> None:
            now = utcnow()
            for placement in placements:
                _upsert_placement(session, placement, now)

        self._retrying(work, what="record placements")

    def add_key_slots(self, slots: Sequence[tuple[str, str, WrappedKey]]) -> None:
        """Record key slots (digest, purpose, slot) that are not recorded yet."""

        def work(session: Session) -> None:
            _add_slots(session, slots, utcnow())

        self._retrying(work, what="record key slots")

    def slotted_objects(self) -> dict[tuple[str, str], list[WrappedKey]]:
        """Every object with a recorded key slot: (digest, purpose) -> its slots."""
        with self._read() as session:
            found: dict[tuple[str, str], list[WrappedKey]] = {}
            for row in session.scalars(select(KeySlot).order_by(KeySlot.digest, KeySlot.purpose)):
                found.setdefault((row.digest, row.purpose), []).append(
                    WrappedKey(row.provider, row.kek_id, row.wrapped)
                )
            return found

    def drop_key_slots(self, kek_ids: Sequence[str], *, objects: Sequence[tuple[str, str]]) -> int:
        """Forget the slots under these key-encryption keys of these (digest, purpose) objects
        (a finished rotation; an object left out keeps its slots)."""

        def work(session: Session) -> int:
            dropped = 0
            for start in range(0, len(objects), 500):
                digests = sorted({digest for digest, _purpose in objects[start : start + 500]})
                wanted = set(objects[start : start + 500])
                for row in session.scalars(
                    select(KeySlot).where(
                        KeySlot.kek_id.in_(list(kek_ids)), KeySlot.digest.in_(digests)
                    )
                ):
                    if (row.digest, row.purpose) in wanted:
                        session.delete(row)
                        dropped += 1
            return dropped

        return self._retrying(work, what="retire key slots")

    def placements(
        self, *, digest: str | None = None, region: str | None = None
    ) -> list[PlacementRecord]:
        with self._read() as session:
            query = select(Placement)
            if digest is not None:
                query = query.where(Placement.digest == digest)
            if region is not None:
                query = query.where(Placement.region == region)
            return [_placement_record(row) for row in session.scalars(query)]

    def placement_counts(self) -> dict[str, dict[str, int]]:
        """region -> state -> number of objects."""
        with self._read() as session:
            rows = session.execute(
                select(Placement.region, Placement.state, func.count()).group_by(
                    Placement.region, Placement.state
                )
            ).all()
        counts: dict[str, dict[str, int]] = {}
        for region, state, count in rows:
            counts.setdefault(region, {})[state] = int(count)
        return counts

    def stored_objects(self) -> list[StoredObject]:
        """Every object a version references: its blobs and its manifest."""
        with self._read() as session:
            live = select(Version.id).where(Version.expired_at.is_(None))
            blobs = session.execute(
                select(Blob.digest, Blob.object_name).where(
                    Blob.digest.in_(
                        select(VersionFile.digest).where(VersionFile.version_id.in_(live))
                    )
                )
            ).all()
            manifests = session.execute(
                select(Version.digest, Version.manifest_object).where(Version.expired_at.is_(None))
            ).all()
        found = {StoredObject(d, "blob", name) for d, name in blobs}
        found |= {StoredObject(d, "manifest", name) for d, name in manifests}
        return sorted(found, key=lambda o: (o.purpose, o.digest))

    # -- legal holds -----------------------------------------------------------------------

    def set_hold(self, ref: Reference, *, reason: str, actor: str) -> tuple[HoldRecord, bool]:
        """Place a legal hold on a version; (hold, created) — an existing hold is kept as is."""

        record = self.resolve(ref)

        def work(session: Session) -> tuple[HoldRecord, bool]:
            version = _version_row(session, record)
            if version.expired_at is not None:
                raise _expired_error(version)
            hold = session.get(LegalHold, version.id)
            if hold is not None:
                return _hold_record(version, hold), False
            hold = LegalHold(
                version_id=version.id, reason=reason, placed_by=actor, placed_at=utcnow()
            )
            session.add(hold)
            append_audit(
                session,
                at=hold.placed_at,
                actor=actor,
                action="hold",
                subject=version.model.name,
                details=_details({"version": version.number, "reason": reason}),
            )
            session.flush()
            return _hold_record(version, hold), True

        return self._retrying(work, what=f"hold {ref}")

    def release_hold(self, ref: Reference, *, reason: str, actor: str) -> HoldRecord:
        target = self.resolve(ref)

        def work(session: Session) -> HoldRecord:
            version = _version_row(session, target)
            hold = session.get(LegalHold, version.id)
            if hold is None:
                raise NotFoundError(f"{version.model.name}@{version.number} is not under hold")
            record = _hold_record(version, hold)
            session.delete(hold)
            append_audit(
                session,
                at=utcnow(),
                actor=actor,
                action="release-hold",
                subject=version.model.name,
                details=_details({"version": version.number, "reason": reason}),
            )
            return record

        return self._retrying(work, what=f"release hold on {ref}")

    def holds(self) -> list[HoldRecord]:
        with self._read() as session:
            rows = session.execute(
                select(Version, LegalHold)
                .join(LegalHold, LegalHold.version_id == Version.id)
                .options(selectinload(Version.model))
            ).all()
            return sorted((_hold_record(v, h) for v, h in rows), key=lambda h: (h.name, h.number))

    def held_objects(self, *, exclude: VersionRecord | None = None) -> set[tuple[str, str]]:
        """(digest, purpose) of every object of a version under hold (but `exclude`)."""
        with self._read() as session:
            held = select(LegalHold.version_id)
            if exclude is not None:
                held = held.where(LegalHold.version_id != _version_row(session, exclude).id)
            blobs = session.scalars(
                select(VersionFile.digest).where(VersionFile.version_id.in_(held))
            ).all()
            manifests = session.scalars(select(Version.digest).where(Version.id.in_(held))).all()
        return {(d, "blob") for d in blobs} | {(d, "manifest") for d in manifests}

    # -- aliases ---------------------------------------------------------------------------

    def move_alias(
        self,
        name: str,
        alias: str,
        *,
        kind: str,
        target: int | None,
        reason: str,
        actor: str,
        may_move_protected: bool,
        notify: Sequence[str] = (),
        event: Mapping[str, str] | None = None,
    ) -> tuple[AliasMoveRecord | None, AliasRecord]:
        """Point `alias` of model `name` at version `target` (a number), or, for a plain
        rollback (`target` None), at the version it pointed at before the current one.

        One transaction: the alias row is locked (SELECT ... FOR UPDATE on PostgreSQL, BEGIN
        IMMEDIATE on SQLite) and the move appended to the history, so concurrent moves of one
        alias serialise and the history stays one consistent chain. An event for each URL in
        `notify` is queued in the same transaction (`event` adds fields to it). Returns (the
        move, or None when the alias already pointed there, and the alias now)."""

        def work(session: Session) -> tuple[AliasMoveRecord | None, AliasRecord]:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            row = session.scalar(
                select(Alias)
                .where(Alias.model_id == model.id, Alias.name == alias)
                .with_for_update()
            )
            if row is not None and row.protected and not may_move_protected:
                raise PermissionDeniedError(
                    f"{name}:{alias} is protected: moving it needs the promoter role",
                    hint="ask a promoter or an admin, or `model-registry alias unprotect` it",
                )
            numbers = _version_numbers(session, model.id)
            ids = {number: id_ for id_, number in numbers.items()}
            if target is None:
                if row is None:
                    raise NotFoundError(f"model {name} has no alias {alias!r} to roll back")
                moves = session.scalars(
                    select(AliasMove)
                    .where(AliasMove.model_id == model.id, AliasMove.alias == alias)
                    .order_by(AliasMove.id)
                ).all()
                stack = _alias_stack(moves)
                if len(stack) < 2:
                    raise ConflictError(
                        f"{name}:{alias} has no earlier version to roll back to",
                        hint=f"name one: `model-registry rollback {name} {alias} --to REF`",
                    )
                version_id = stack[-2]
            else:
                if target not in ids:
                    raise NotFoundError(f"{name}@{target} does not exist")
                version_id = ids[target]
            chosen = session.get(Version, version_id)
            assert chosen is not None
            if chosen.expired_at is not None:
                raise _expired_error(chosen)
            now = utcnow()
            if row is not None and row.version_id == version_id:
                return None, _alias_record(name, row, numbers, session)
            previous = row.version_id if row is not None else None
            if row is None:
                row = Alias(
                    model_id=model.id,
                    name=alias,
                    version_id=version_id,
                    protected=False,
                    updated_at=now,
                    updated_by=actor,
                )
                session.add(row)
            else:
                row.version_id = version_id
                row.updated_at = now
                row.updated_by = actor
            session.add(
                AliasMove(
                    model_id=model.id,
                    alias=alias,
                    kind=kind,
                    version_id=version_id,
                    previous_version_id=previous,
                    moved_at=now,
                    moved_by=actor,
                    reason=reason,
                )
            )
            details: dict[str, Any] = {
                "alias": alias,
                "version": numbers[version_id],
                "previous": None if previous is None else numbers[previous],
                "reason": reason,
            }
            append_audit(
                session, at=now, actor=actor, action=kind, subject=name, details=_details(details)
            )
            session.flush()
            record = _alias_record(name, row, numbers, session)
            event_id = str(uuid.uuid4()) if notify else None
            move = AliasMoveRecord(
                name,
                alias,
                kind,
                numbers[version_id],
                None if previous is None else numbers[previous],
                now,
                actor,
                reason,
                event_id,
            )
            if event_id is not None:
                body = _details(
                    {
                        **(event or {}),
                        "event": "alias.moved",
                        "id": event_id,
                        "model": name,
                        "alias": alias,
                        "version": move.number,
                        "digest": record.digest,
                        "previous": move.previous,
                        "kind": kind,
                        "at": now.isoformat(),
                        "by": actor,
                        "reason": reason,
                    }
                )
                for url in notify:
                    session.add(
                        EventDelivery(
                            event_id=event_id,
                            url=url,
                            payload=body,
                            created_at=now,
                            attempts=0,
                            last_error="",
                        )
                    )
            return move, record

        return self._retrying(work, what=f"move {name}:{alias}")

    def protect_alias(self, name: str, alias: str, *, protected: bool, actor: str) -> AliasRecord:
        def work(session: Session) -> AliasRecord:
            model = session.scalar(select(Model).where(Model.name == name))
            row = (
                None
                if model is None
                else session.scalar(
                    select(Alias)
                    .where(Alias.model_id == model.id, Alias.name == alias)
                    .with_for_update()
                )
            )
            if model is None or row is None:
                raise NotFoundError(f"model {name} has no alias {alias!r}")
            numbers = _version_numbers(session, model.id)
            if row.protected != protected:
                row.protected = protected
                append_audit(
                    session,
                    at=utcnow(),
                    actor=actor,
                    action="protect-alias" if protected else "unprotect-alias",
                    subject=name,
                    details=_details({"alias": alias}),
                )
            return _alias_record(name, row, numbers, session)

        return self._retrying(work, what=f"protect {name}:{alias}")

    def aliases(self, name: str) -> list[AliasRecord]:
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            numbers = _version_numbers(session, model.id)
            rows = session.scalars(
                select(Alias).where(Alias.model_id == model.id).order_by(Alias.name)
            ).all()
            return [_alias_record(name, row, numbers, session) for row in rows]

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMoveRecord]:
        """Every move of the model's aliases (or of one), oldest first."""
        with self._read() as session:
            model = session.scalar(select(Model).where(Model.name == name))
            if model is None:
                raise NotFoundError(f"model {name} does not exist")
            numbers = _version_numbers(session, model.id)
            query = select(AliasMove).where(AliasMove.model_id == model.id)
            if alias is not None:
                query = query.where(AliasMove.alias == alias)
            return [
                AliasMoveRecord(
                    name,
                    move.alias,
                    move.kind,
                    numbers[move.version_id],
                    None if move.previous_version_id is None else numbers[move.previous_version_id],
                    move.moved_at,
                    move.moved_by,
                    move.reason,
                )
                for move in session.scalars(query.order_by(AliasMove.id))
            ]


def _current_epoch(session: Session) -> JournalEpoch:
    row = session.scalars(
        select(JournalEpoch).order_by(JournalEpoch.started_at.desc()).limit(1)
    ).first()
    if row is None:
        raise StorageError("the catalog has no journal epoch (an incomplete migration)")
    return row


def _restored_links(
    session: Session, links_mac: Callable[[Sequence[tuple[int, str]]], str] | None
) -> set[int]:
    """Audit entries a catalog rebuild restored as chain links only (token events, whose
    content the journal never holds): named in a later `catalog-rebuild` entry whose MAC over
    their ids and hashes checks, so no database writer can pass an entry off as one."""
    if links_mac is None:
        return set()
    links: set[int] = set()
    rows = session.execute(
        select(AuditEvent.id, AuditEvent.details).where(AuditEvent.action == "catalog-rebuild")
    )
    for event_id, details in rows:
        try:
            raw = json.loads(details)
            named = [int(i) for i in raw.get("links", []) if int(i) < event_id]
            mac = str(raw.get("links_mac", ""))
        except (ValueError, AttributeError, TypeError):
            continue
        hashes = {
            row.id: row.hash
            for row in session.execute(
                select(AuditEvent.id, AuditEvent.hash).where(AuditEvent.id.in_(named))
            )
        }
        pairs = [(i, hashes.get(i, "")) for i in named]
        if named and hmac.compare_digest(links_mac(pairs).encode(), mac.encode()):
            links.update(named)
    return links


def _delta(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


GENESIS = "0" * 64
# PostgreSQL: appends to the chain take this transaction-level advisory lock, so two writers never
# chain onto the same predecessor (SQLite transactions are already BEGIN IMMEDIATE).
_AUDIT_LOCK = 0x6D72_6175  # "mrau"


def audit_hash(
    prev: str, *, id: int, at: datetime, actor: str, action: str, subject: str, details: str
) -> str:
    """The chain hash of one audit entry: BLAKE3 of its canonical content and `prev`."""
    body = json.dumps(
        {
            "id": id,
            "at": at.astimezone(UTC).isoformat(),
            "actor": actor,
            "action": action,
            "subject": subject,
            "details": details,
            "prev": prev,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return str(blake3.blake3(body.encode()).hexdigest())


NO_RULE = "no retention rule"


def _live_versions(session: Session, model: Model) -> list[Version]:
    return list(
        session.scalars(
            select(Version)
            .where(Version.model_id == model.id, Version.expired_at.is_(None))
            .options(selectinload(Version.files), selectinload(Version.model))
            .order_by(Version.number)
        )
    )


def _plan_in(
    session: Session, model: Model, *, now: datetime, locked_for: timedelta | None
) -> tuple[Policy, list[Decision]]:
    """The retention plan of one model from what this transaction reads."""
    policy = Policy()
    for source in (model.name, DEFAULT_POLICY):
        row = session.get(RetentionPolicy, source)
        if row is not None:
            policy = Policy(
                row.keep_last,
                _delta(row.keep_within_seconds),
                _delta(row.keep_demoted_for_seconds),
            )
            break
    numbers = _version_numbers(session, model.id)
    aliased: dict[int, list[str]] = {}
    for alias in session.scalars(select(Alias).where(Alias.model_id == model.id)):
        aliased.setdefault(numbers[alias.version_id], []).append(alias.name)
    moves = session.scalars(select(AliasMove).where(AliasMove.model_id == model.id))
    demoted = last_demotions(
        (
            None if m.previous_version_id is None else numbers[m.previous_version_id],
            numbers[m.version_id],
            m.moved_at,
        )
        for m in moves
    )
    held = {
        numbers[version_id]
        for version_id in session.scalars(
            select(LegalHold.version_id).join(Version).where(Version.model_id == model.id)
        )
    }
    decisions = plan(
        [VersionFacts(v.number, v.created_at) for v in _live_versions(session, model)],
        policy=policy,
        aliased=aliased,
        demoted=demoted,
        held=held,
        now=now,
        locked_for=locked_for,
    )
    return policy, decisions


def _tombstone(
    session: Session,
    version: Version,
    *,
    actor: str,
    reason: str,
    action: str,
    details: dict[str, Any],
    now: datetime,
) -> None:
    version.expired_at = now
    version.expired_by = actor
    version.expiry_reason = reason
    session.flush()
    append_audit(
        session,
        at=now,
        actor=actor,
        action=action,
        subject=version.model.name,
        details=_details(details),
    )


def _unreferenced(
    session: Session,
    *,
    now: datetime,
    assume_expired: Sequence[int] = (),
    digest: str | None = None,
) -> list[Unreferenced]:
    """Objects that no live version references and that are still stored (versions whose ids
    are in `assume_expired` count as expired now; with `digest`, only that object's)."""
    live: ColumnElement[bool] = Version.expired_at.is_(None)
    if assume_expired:
        live = live & Version.id.notin_(sorted(assume_expired))
    live_ids = select(Version.id).where(live)
    leases = select(PushLease.digest, PushLease.purpose).where(PushLease.expires_at > now)
    claims = select(Sweep.digest, Sweep.purpose)
    blobs = select(Blob).where(
        Blob.swept_at.is_(None),
        Blob.digest.notin_(select(VersionFile.digest).where(VersionFile.version_id.in_(live_ids))),
    )
    # Since when each blob has been unneeded: the last expiry of a version that used it (one
    # taken for expired by a dry run: now).
    uses = (
        select(VersionFile.digest, Version.expired_at)
        .join(Version, Version.id == VersionFile.version_id)
        .where(~live)
    )
    gone = select(Version).where(
        ~live,
        Version.digest.notin_(select(Version.digest).where(live)),
        Version.digest.in_(
            select(KeySlot.digest)
            .where(KeySlot.purpose == "manifest")
            .union(select(Placement.digest).where(Placement.purpose == "manifest"))
        ),
    )
    if digest is not None:
        leases = leases.where(PushLease.digest == digest)
        claims = claims.where(Sweep.digest == digest)
        blobs = blobs.where(Blob.digest == digest)
        uses = uses.where(VersionFile.digest == digest)
        gone = gone.where(Version.digest == digest)
    leased = {(d, p) for d, p in session.execute(leases)}
    sweeping = {(d, p) for d, p in session.execute(claims)}
    last_used: dict[str, datetime] = {}
    for file_digest, expired_at in session.execute(uses):
        when = expired_at or now
        last_used[file_digest] = max(when, last_used.get(file_digest, when))
    found: list[Unreferenced] = []
    for blob in session.scalars(blobs):
        key = (blob.digest, "blob")
        found.append(
            Unreferenced(
                blob.digest,
                "blob",
                blob.object_name,
                blob.size,
                max(blob.created_at, last_used.get(blob.digest, blob.created_at)),
                key in leased,
                key in sweeping,
            )
        )
    manifests: dict[str, Unreferenced] = {}
    for version in session.scalars(gone):
        key = (version.digest, "manifest")
        idle = max(version.created_at, version.expired_at or now)
        earlier = manifests.get(version.digest)
        if earlier is None or earlier.idle_since < idle:
            manifests[version.digest] = Unreferenced(
                version.digest,
                "manifest",
                version.manifest_object,
                0,
                idle,
                key in leased,
                key in sweeping,
            )
    found += manifests.values()
    return sorted(found, key=lambda u: (u.purpose, u.digest))


def _serialise(session: Session) -> None:
    """Every catalog write takes one PostgreSQL transaction-level lock first, so each reads what
    every earlier write committed and decides on it alone: a push's commit, an alias move, an
    expiry and a gc claim can never interleave (SQLite's BEGIN IMMEDIATE gives the same)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _AUDIT_LOCK})


def _being_swept(session: Session, objects: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    # The claims in flight are few; the objects may be many (no IN list of them).
    claimed = {(d, p) for d, p in session.execute(select(Sweep.digest, Sweep.purpose))}
    return sorted(claimed.intersection(objects))


def append_audit(
    session: Session, *, at: datetime, actor: str, action: str, subject: str, details: str
) -> None:
    """Append one entry to the audit chain inside the caller's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _AUDIT_LOCK})
    prev = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    prev = prev or GENESIS
    # Stored as the database gives it back (microseconds, UTC), so that verify recomputes it.
    at = at.astimezone(UTC)
    event = AuditEvent(
        at=at, actor=actor, action=action, subject=subject, details=details, prev_hash=prev, hash=""
    )
    session.add(event)
    session.flush()
    event.hash = audit_hash(
        prev, id=event.id, at=at, actor=actor, action=action, subject=subject, details=details
    )
    session.flush()


def store_blob_row(session: Session, blob: NewBlob, now: datetime) -> None:
    """Record a stored blob: a new row, or one swept by gc since an expired version used it
    and stored again now; a row of a blob that is there already stays as it is."""
    row = session.get(Blob, blob.digest)
    if row is None:
        row = Blob(digest=blob.digest, size=blob.size)
        session.add(row)
    elif row.swept_at is None:
        return
    row.swept_at = None
    row.created_at = now
    row.object_name = blob.object_name
    row.sealed_size = blob.sealed_size
    row.chunk_size = blob.chunk_size


def add_version(
    session: Session, model: Model, new: NewVersion, *, at: datetime, **audit: Any
) -> Version:
    """Insert the next version of `model` with its files and its `push` audit entry, inside the
    caller's transaction (`audit` adds fields to the entry's details)."""
    number = (
        session.scalar(select(func.max(Version.number)).where(Version.model_id == model.id)) or 0
    ) + 1
    version = Version(
        model=model,
        number=number,
        digest=new.digest,
        manifest_object=new.manifest_object,
        message=new.message,
        created_at=at,
        created_by=new.actor,
        signed_by=new.signed_by,
        file_count=len(new.files),
        total_size=new.total_size,
        tensor_count=new.tensor_count,
        parameter_count=new.parameter_count,
        dtypes=",".join(new.dtypes),
    )
    session.add(version)
    session.flush()
    for entry in new.files:
        session.add(
            VersionFile(
                version_id=version.id,
                path=entry.path,
                size=entry.size,
                digest=entry.digest,
                tensor_count=entry.tensor_count,
            )
        )
    append_audit(
        session,
        at=at,
        actor=new.actor,
        action="push",
        subject=new.name,
        details=_details(
            {
                "version": number,
                "digest": new.digest,
                "files": len(new.files),
                "bytes": new.total_size,
                **audit,
            }
        ),
    )
    return version


def _version_row(session: Session, record: VersionRecord) -> Version:
    version = session.scalar(
        select(Version)
        .join(Model)
        .where(Model.name == record.name, Version.number == record.number)
        .options(selectinload(Version.model))
    )
    if version is None:
        raise NotFoundError(f"{record.ref} does not exist")
    return version


def _add_slots(
    session: Session, slots: Sequence[tuple[str, str, WrappedKey]], now: datetime
) -> None:
    # Only slots not recorded yet: an old slot a rotation has not retired from the catalog
    # yet may be passed along with a new one, and is no new use of the old key.
    fresh = [s for s in slots if session.get(KeySlot, (s[0], s[1], s[2].kek_id)) is None]
    keks = sorted({slot.kek_id for _digest, _purpose, slot in fresh})
    if keks:
        retired = session.scalars(select(RetiredKey.kek_id).where(RetiredKey.kek_id.in_(keks)))
        for kek_id in retired:
            raise ConflictError(
                f"a key slot under {kek_id} was refused: a key rotation retired that key, and "
                "nothing was committed",
                hint="this process still reads the old config.toml: restart it, then run the "
                "same command again",
            )
    for digest, purpose, slot in slots:
        insert_key_slot(session, digest, purpose, slot, now)


def insert_key_slot(
    session: Session, digest: str, purpose: str, slot: WrappedKey, now: datetime
) -> None:
    """Record one key slot unless a slot of that object under that key is recorded."""
    if session.get(KeySlot, (digest, purpose, slot.kek_id)) is None:
        session.add(
            KeySlot(
                digest=digest,
                purpose=purpose,
                kek_id=slot.kek_id,
                provider=slot.provider,
                wrapped=slot.ciphertext,
                created_at=now,
            )
        )
        session.flush()


def _upsert_placement(session: Session, placement: PlacementRecord, now: datetime) -> None:
    key = (placement.digest, placement.purpose, placement.region)
    row = session.get(Placement, key)
    if row is None:
        session.add(
            Placement(
                digest=placement.digest,
                purpose=placement.purpose,
                region=placement.region,
                object_name=placement.object_name,
                state=placement.state,
                checksum=placement.checksum,
                detail=placement.detail[:4000],
                updated_at=now,
            )
        )
        session.flush()
        return
    row.object_name = placement.object_name
    row.state = placement.state
    row.checksum = placement.checksum or row.checksum
    row.detail = placement.detail[:4000]
    row.updated_at = now


def _placement_record(row: Placement) -> PlacementRecord:
    return PlacementRecord(
        row.digest,
        row.purpose,
        row.region,
        row.object_name,
        row.state,
        row.checksum,
        row.detail,
        row.updated_at,
    )


def _token_record(row: ApiToken) -> TokenRecord:
    return TokenRecord(
        row.id,
        row.name,
        row.role,
        tuple(json.loads(row.models)),
        row.created_at,
        row.created_by,
        row.expires_at,
        row.revoked_at,
        row.revoked_by,
        row.secret_hash,
    )


def _hold_record(version: Version, hold: LegalHold) -> HoldRecord:
    return HoldRecord(
        version.model.name,
        version.number,
        version.digest,
        hold.reason,
        hold.placed_by,
        hold.placed_at,
    )


def _version_numbers(session: Session, model_id: int) -> dict[int, int]:
    """Version row id -> version number, for one model."""
    rows = session.execute(
        select(Version.id, Version.number).where(Version.model_id == model_id)
    ).all()
    return {version_id: number for version_id, number in rows}


def _alias_stack(moves: Sequence[AliasMove]) -> list[int]:
    """The versions an alias went through, as a stack: a promote (or a rollback to a named
    version) pushes, a plain rollback pops; the top is where it points."""
    stack: list[int] = []
    for move in moves:
        if move.kind == ROLLBACK and len(stack) >= 2:
            stack.pop()
        else:
            stack.append(move.version_id)
    return stack


def _alias_record(name: str, row: Alias, numbers: dict[int, int], session: Session) -> AliasRecord:
    version = session.get(Version, row.version_id)
    assert version is not None
    return AliasRecord(
        name,
        row.name,
        numbers.get(row.version_id, version.number),
        version.digest,
        row.protected,
        row.updated_at,
        row.updated_by,
    )
