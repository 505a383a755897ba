"""Where each object is stored and under which keys: placements (an object's copy in one region and
its state), key slots (its data key wrapped by each key-encryption key) and the keys a rotation
retired.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from registry.catalog.models import (
    Blob,
    KeySlot,
    Placement,
    RetiredKey,
    Version,
    VersionFile,
    utcnow,
)
from registry.catalog.parts import CatalogPart
from registry.crypto.keys import WrappedKey
from registry.errors import ConflictError
from registry.records import PlacementRecord, StoredObject


class PlacementsPart(CatalogPart):
    """Placements, key slots and retired keys."""

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

    def record_placements(self, placements: Sequence[PlacementRecord]) -> None:
        """Insert or update the state of object copies (one transaction)."""
        if not placements:
            return

        def work(session: Session) -> None:
            now = utcnow()
            for placement in placements:
                upsert_placement(session, placement, now)

        self._retrying(work, what="record placements")

    def add_key_slots(self, slots: Sequence[tuple[str, str, WrappedKey]]) -> None:
        """Record key slots (digest, purpose, slot) that are not recorded yet."""

        def work(session: Session) -> None:
            add_slots(session, slots, utcnow())

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


def add_slots(
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


def placement_row(placement: PlacementRecord, at: datetime) -> Placement:
    """A new placement row (updated `at`)."""
    return Placement(
        digest=placement.digest,
        purpose=placement.purpose,
        region=placement.region,
        object_name=placement.object_name,
        state=placement.state,
        checksum=placement.checksum,
        detail=placement.detail[:4000],
        updated_at=at,
    )


def upsert_placement(session: Session, placement: PlacementRecord, now: datetime) -> None:
    key = (placement.digest, placement.purpose, placement.region)
    row = session.get(Placement, key)
    if row is None:
        session.add(placement_row(placement, now))
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
