"""The audit trail as a hash chain: entries appended under the catalog's write lock (each hash
covers its content and the previous entry's hash; entries written at once by concurrent callers
share one transaction, `groupcommit`), read back, and the chain verified.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import blake3
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from registry.catalog.groupcommit import GroupCommit
from registry.catalog.journal import REDACTED_DETAILS, TOKEN_ACTIONS, encode_row
from registry.catalog.models import AuditEvent, utcnow
from registry.catalog.parts import CatalogPart, details_json
from registry.records import AuditRecord, AuditVerification


@dataclass(frozen=True)
class AuditEntry:
    """An audit entry to append (its time is when it was asked for, not when it committed)."""

    at: datetime
    actor: str
    action: str
    subject: str
    details: str


class AuditPart(CatalogPart):
    """Writing, listing and verifying audit entries."""

    # Made by `Catalog`: one per catalog handle, shared by every thread writing through it.
    audit_writes: GroupCommit[AuditEntry]

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

    def audit(self, actor: str, action: str, subject: str, details: dict[str, Any]) -> None:
        """Append an entry to the audit trail; returns once it is committed (in a transaction
        of its own, or shared with the entries other threads wrote meanwhile), and raises,
        having written nothing, when that transaction failed."""
        entry = AuditEntry(utcnow(), actor, action, subject, details_json(details))
        self.audit_writes.write(entry)

    def append_audits(self, entries: Sequence[AuditEntry]) -> None:
        """Append `entries` to the chain in one transaction (what `audit_writes` commits)."""
        actions = sorted({entry.action for entry in entries})

        def work(session: Session) -> None:
            append_audit_entries(session, entries)

        self._retrying(work, what=f"audit {', '.join(actions)}")

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
                expected = event_hash(prev, event)
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

    def compare_audit(self, stored: Mapping[int, Mapping[str, Any]]) -> tuple[list[str], int]:
        """The catalog's audit entries against those a region's journal holds (`stored`, as
        journaled): what differs, as sentences (an entry rewritten, missing from the catalog,
        or in the catalog among journaled entries but never journaled), and how many of the
        catalog's newest entries come after the journal's last (not copied out yet)."""
        differences: list[str] = []
        newest = max(stored, default=0)
        pending = 0
        seen: set[int] = set()
        with self._read() as session:
            rows = session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
            for event in rows.yield_per(1000):
                if event.id > newest:
                    pending += 1
                    continue
                seen.add(event.id)
                journaled = stored.get(event.id)
                values = {c.name: getattr(event, c.name) for c in AuditEvent.__table__.columns}
                mine = encode_row("audit_events", values)
                if journaled is None:
                    differences.append(
                        f"audit entry {event.id} is in the catalog but not in the journal, "
                        "which holds the entries around it: inserted"
                    )
                elif any(mine.get(k) != v for k, v in journaled.items()):
                    changed = sorted(k for k, v in journaled.items() if mine.get(k) != v)
                    differences.append(
                        f"audit entry {event.id} differs from the journal's ({', '.join(changed)}):"
                        " rewritten"
                    )
        for missing in sorted(set(stored) - seen):
            differences.append(
                f"audit entry {missing} is in the journal but not in the catalog: deleted"
            )
        return differences, pending


GENESIS = "0" * 64


# PostgreSQL: appends to the chain take this transaction-level advisory lock, so two writers never
# chain onto the same predecessor (SQLite transactions are already BEGIN IMMEDIATE).
AUDIT_LOCK = 0x6D72_6175  # "mrau"


def event_hash(prev: str, event: AuditEvent) -> str:
    """The chain hash of a stored audit event after `prev`."""
    return audit_hash(
        prev,
        id=event.id,
        at=event.at,
        actor=event.actor,
        action=event.action,
        subject=event.subject,
        details=event.details,
    )


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


def append_audit(
    session: Session, *, at: datetime, actor: str, action: str, subject: str, details: str
) -> None:
    """Append one entry to the audit chain inside the caller's transaction."""
    append_audit_entries(session, [AuditEntry(at, actor, action, subject, details)])


def append_audit_entries(session: Session, entries: Sequence[AuditEntry]) -> None:
    """Append entries to the audit chain inside the caller's transaction, in the order the
    database numbers them (one insert of them all, then their hashes)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
    prev = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    prev = prev or GENESIS
    events = [
        AuditEvent(
            # Stored as the database gives it back (microseconds, UTC), so verify recomputes it.
            at=entry.at.astimezone(UTC),
            actor=entry.actor,
            action=entry.action,
            subject=entry.subject,
            details=entry.details,
            prev_hash="",
            hash="",
        )
        for entry in entries
    ]
    session.add_all(events)
    session.flush()
    # The chain follows the ids, whatever order the insert gave them in.
    for event in sorted(events, key=lambda e: e.id):
        event.prev_hash = prev
        event.hash = prev = event_hash(prev, event)
    session.flush()


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
