"""Legal holds: a version under hold keeps all of its objects until the hold is released."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from registry.catalog.audit import append_audit
from registry.catalog.models import LegalHold, Version, VersionFile, utcnow
from registry.catalog.parts import details_json, expired_error, version_row
from registry.catalog.versions import VersionsPart
from registry.errors import NotFoundError
from registry.records import HoldRecord, VersionRecord
from registry.refs import Reference


class HoldsPart(VersionsPart):
    """Placing, releasing and listing legal holds."""

    def set_hold(self, ref: Reference, *, reason: str, actor: str) -> tuple[HoldRecord, bool]:
        """Place a legal hold on a version; (hold, created) — an existing hold is kept as is."""

        record = self.resolve(ref)

        def work(session: Session) -> tuple[HoldRecord, bool]:
            version = version_row(session, record)
            if version.expired_at is not None:
                raise expired_error(version)
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
                details=details_json({"version": version.number, "reason": reason}),
            )
            session.flush()
            return _hold_record(version, hold), True

        return self._retrying(work, what=f"hold {ref}")

    def release_hold(self, ref: Reference, *, reason: str, actor: str) -> HoldRecord:
        target = self.resolve(ref)

        def work(session: Session) -> HoldRecord:
            version = version_row(session, target)
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
                details=details_json({"version": version.number, "reason": reason}),
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
                held = held.where(LegalHold.version_id != version_row(session, exclude).id)
            blobs = session.scalars(
                select(VersionFile.digest).where(VersionFile.version_id.in_(held))
            ).all()
            manifests = session.scalars(select(Version.digest).where(Version.id.in_(held))).all()
        return {(d, "blob") for d in blobs} | {(d, "manifest") for d in manifests}


def _hold_record(version: Version, hold: LegalHold) -> HoldRecord:
    return HoldRecord(
        version.model.name,
        version.number,
        version.digest,
        hold.reason,
        hold.placed_by,
        hold.placed_at,
    )
