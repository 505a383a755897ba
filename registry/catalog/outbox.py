"""The journal's outbox as the catalog holds it: entries read in order, how far each region's copy
goes (marks) and the epochs the journal is written under.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from registry.catalog.audit import append_audit
from registry.catalog.models import JournalEntry, JournalEpoch, JournalMark, utcnow
from registry.catalog.parts import CatalogPart, details_json
from registry.errors import StorageError
from registry.records import JournalEpochRecord


class OutboxPart(CatalogPart):
    """Journal entries, marks and epochs."""

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
                details=details_json({"epoch": epoch, "parent": current.epoch, "reason": reason}),
            )
            return epoch

        return self._retrying(work, what="start a journal epoch")


def _current_epoch(session: Session) -> JournalEpoch:
    row = session.scalars(
        select(JournalEpoch).order_by(JournalEpoch.started_at.desc()).limit(1)
    ).first()
    if row is None:
        raise StorageError("the catalog has no journal epoch (an incomplete migration)")
    return row
