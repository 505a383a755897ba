"""Models, versions and their files: the one transaction that commits a pushed version, and the
reads that list models and versions and resolve references.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, aliased, selectinload

from registry.catalog.audit import append_audit
from registry.catalog.gc import being_swept
from registry.catalog.models import (
    Alias,
    Blob,
    Model,
    PushLease,
    Version,
    VersionFile,
    VersionMeta,
    utcnow,
)
from registry.catalog.parts import CatalogPart, details_json, expired_error, version_record
from registry.catalog.placements import add_slots, upsert_placement
from registry.errors import AmbiguousReferenceError, ConflictError, NotFoundError
from registry.records import BlobRecord, ModelRecord, NewBlob, NewVersion, VersionRecord
from registry.refs import Reference


class VersionsPart(CatalogPart):
    """Committing and reading versions."""

    def models(self) -> list[ModelRecord]:
        live = aliased(Version)
        # The distinct blobs of the model's live versions: what its versions share counts once.
        stored = (
            select(func.coalesce(func.sum(Blob.size), 0))
            .where(
                Blob.digest.in_(
                    select(VersionFile.digest)
                    .join(live, live.id == VersionFile.version_id)
                    .where(live.model_id == Model.id, live.expired_at.is_(None))
                    .correlate(Model)
                )
            )
            .correlate(Model)
            .scalar_subquery()
        )
        with self._read() as session:
            rows = session.execute(
                select(
                    Model.name,
                    Model.created_at,
                    func.count(Version.id),
                    func.max(Version.number),
                    func.coalesce(func.sum(Version.total_size), 0),
                    stored,
                )
                .outerjoin(Version, (Version.model_id == Model.id) & Version.expired_at.is_(None))
                .group_by(Model.id)
                .order_by(Model.name)
            ).all()
        return [
            ModelRecord(n, c, count, latest, int(size), int(unique))
            for n, c, count, latest, size, unique in rows
        ]

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
            return [version_record(v) for v in session.scalars(query).all()]

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
                return version_record(version)
            if ref.number is not None:
                version = session.scalar(query.where(Version.number == ref.number))
                if version is None:
                    raise NotFoundError(f"{ref} does not exist")
                if version.expired_at is not None:
                    raise expired_error(version)
                return version_record(version)
            if ref.digest_prefix is not None:
                found = session.scalars(
                    query.where(Version.digest.startswith(f"blake3:{ref.digest_prefix}")).order_by(
                        Version.number
                    )
                ).all()
                matches = [v for v in found if v.expired_at is None]
                if not matches and found:
                    raise expired_error(found[-1])
                if not matches:
                    raise NotFoundError(f"{ref} matches no version")
                if len(matches) > 1:
                    raise AmbiguousReferenceError(f"{ref} matches more than one version")
                return version_record(matches[0])
            version = session.scalar(
                query.where(Version.expired_at.is_(None)).order_by(Version.number.desc()).limit(1)
            )
            if version is None:
                raise NotFoundError(f"model {ref.name} has no versions")
            return version_record(version)

    def blob(self, digest: str) -> BlobRecord | None:
        with self._read() as session:
            row = session.get(Blob, digest)
            if row is None:
                return None
            return BlobRecord(
                row.digest, row.size, row.object_name, row.sealed_size, row.chunk_size, row.swept_at
            )

    def find_version(self, name: str, digest: str) -> VersionRecord | None:
        with self._read() as session:
            version = session.scalar(
                select(Version)
                .join(Model)
                .where(Model.name == name, Version.digest == digest, Version.expired_at.is_(None))
                .options(selectinload(Version.files), selectinload(Version.model))
            )
            return None if version is None else version_record(version)

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
            if being_swept(session, sorted(objects)):
                raise ConflictError(
                    f"push {new.name}: some of its objects are being garbage-collected",
                    hint="run the same push again; it stores them anew",
                )
            slots = [(b.digest, "blob", slot) for b in new.blobs for slot in b.slots]
            slots += [(new.digest, "manifest", slot) for slot in new.manifest_slots]
            add_slots(session, slots, now)
            for placement in new.placements:
                upsert_placement(session, placement, now)
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
                return version_record(existing), False
            session.flush()
            version = add_version(session, model, new, at=now)
            session.flush()
            session.refresh(version, ["files"])
            return version_record(version), True

        return self._retrying(work, what=f"push {new.name}")


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


def _signed(new: NewVersion) -> bool:
    return any(key == "openssf.signer" for key, _ in new.meta)


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
    for key, value in new.meta:
        session.add(VersionMeta(version_id=version.id, key=key, value=value))
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
        details=details_json(
            {
                "version": number,
                "digest": new.digest,
                "files": len(new.files),
                "bytes": new.total_size,
                # Who signed its files (OpenSSF), checked by the push: in the trail with it.
                **({"openssf": dict(new.meta)["openssf.signer"]} if _signed(new) else {}),
                **audit,
            }
        ),
    )
    return version
