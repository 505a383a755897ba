"""Garbage collection's side of the catalog: push leases (objects a writer is about to reference),
sweep claims (objects gc is deleting) and the objects that no live version references.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from registry.catalog.models import (
    Blob,
    KeySlot,
    Model,
    Placement,
    PushLease,
    Sweep,
    Version,
    VersionFile,
    utcnow,
)
from registry.catalog.parts import CatalogPart
from registry.records import Unreferenced

BLOB, MANIFEST = "blob", "manifest"
# The sweep claim of a gc deleting orphans (objects no row names, so no (digest, purpose) of
# their own); one that has not been renewed for this long was left by a gc that stopped.
ORPHANS = "orphans"
ORPHANS_CLAIM_STALE = timedelta(minutes=15)


class GcPart(CatalogPart):
    """Leases, sweeps and unreferenced objects."""

    def take_lease(
        self, lease: str, objects: Sequence[tuple[str, str]], *, ttl: timedelta
    ) -> list[tuple[str, str]]:
        """Lease (digest, purpose) objects for a writer: gc will not claim them until the lease
        is dropped or expires. When any is being swept right now nothing is leased and those are
        returned: the writer waits for the sweep to finish, then stores them anew."""

        def work(session: Session) -> list[tuple[str, str]]:
            now = utcnow()
            if _orphans_claimed(session, now):
                # gc is deleting objects no row names, which could be these: wait for it.
                return sorted(set(objects))
            swept = being_swept(session, objects)
            if swept:
                return swept
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

    def known_objects(self) -> set[tuple[str, str]]:
        """(purpose, digest) of every object a catalog row names: blobs in any state, every
        version's manifest (tombstones' too), key slots, live leases and sweep claims. An
        object in a store that none of these names is an orphan."""
        with self._read() as session:
            found = {(BLOB, d) for d in session.scalars(select(Blob.digest))}
            found |= {(MANIFEST, d) for d in session.scalars(select(Version.digest))}
            for table in (KeySlot, Sweep):
                found |= {(p, d) for p, d in session.execute(select(table.purpose, table.digest))}
            live = select(PushLease.purpose, PushLease.digest).where(
                PushLease.expires_at > utcnow()
            )
            found |= {(p, d) for p, d in session.execute(live)}
            return found

    def claim_orphans(self, *, run: str, stale_before: datetime) -> bool:
        """Claim the deletion of orphans for gc run `run`: until it is dropped (or goes stale,
        older than `stale_before`), no writer takes a lease, so none can start to reuse an
        object gc is about to delete. False when another live gc holds it."""

        def work(session: Session) -> bool:
            claim = session.get(Sweep, (ORPHANS, ORPHANS))
            now = utcnow()
            if claim is None:
                session.add(
                    Sweep(digest=ORPHANS, purpose=ORPHANS, object_name="", run=run, claimed_at=now)
                )
                return True
            if claim.run != run and claim.claimed_at >= stale_before:
                return False
            claim.run, claim.claimed_at = run, now
            return True

        return self._retrying(work, what="claim the orphans")

    def drop_orphans_claim(self, *, run: str) -> None:
        def work(session: Session) -> None:
            session.execute(
                delete(Sweep).where(
                    Sweep.digest == ORPHANS, Sweep.purpose == ORPHANS, Sweep.run == run
                )
            )

        self._retrying(work, what="drop the orphans claim")

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
                select(Sweep.digest, Sweep.purpose).where(
                    Sweep.claimed_at < claimed_before, Sweep.purpose != ORPHANS
                )
            ).all()
            return [(digest, purpose) for digest, purpose in rows]

    def take_over_sweeps(self, *, run: str, claimed_before: datetime) -> list[tuple[str, str]]:
        """Claims older than `claimed_before` (left by a gc that crashed or hung) become `run`'s,
        to be finished by it: (digest, purpose) of each."""

        def work(session: Session) -> list[tuple[str, str]]:
            rows = session.scalars(
                select(Sweep)
                .where(Sweep.claimed_at < claimed_before, Sweep.purpose != ORPHANS)
                .order_by(Sweep.digest)
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


def _orphans_claimed(session: Session, now: datetime) -> bool:
    claim = session.get(Sweep, (ORPHANS, ORPHANS))
    return claim is not None and claim.claimed_at >= now - ORPHANS_CLAIM_STALE


def being_swept(session: Session, objects: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    # The claims in flight are few; the objects may be many (no IN list of them).
    claimed = {(d, p) for d, p in session.execute(select(Sweep.digest, Sweep.purpose))}
    return sorted(claimed.intersection(objects))
