"""Web UI sessions: open one for a token, look one up, mark it used, close it, and drop the
ones that ended. A row holds the hash of the cookie's random id, never the id itself nor the
token, so a copy of the catalog signs nobody in.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from registry.catalog.models import UiSession
from registry.catalog.parts import CatalogPart
from registry.records import UiSessionRecord


class UiSessionsPart(CatalogPart):
    """The `ui_sessions` table."""

    def open_ui_session(
        self, id_hash: str, record: UiSessionRecord, *, idle_before: datetime
    ) -> None:
        """Store a new session, and drop every session that has ended (expired, or idle since
        before `idle_before`): sign-ins are rare enough to sweep on."""

        def work(session: Session) -> None:
            session.execute(
                delete(UiSession).where(
                    or_(
                        UiSession.expires_at <= record.created_at,
                        UiSession.seen_at < idle_before,
                    )
                )
            )
            session.add(
                UiSession(
                    id_hash=id_hash,
                    token_id=record.token_id,
                    csrf=record.csrf,
                    created_at=record.created_at,
                    seen_at=record.seen_at,
                    expires_at=record.expires_at,
                )
            )

        self._retrying(work, what="open a UI session")

    def ui_session(self, id_hash: str) -> UiSessionRecord | None:
        with self._read() as session:
            row = session.get(UiSession, id_hash)
            if row is None:
                return None
            return UiSessionRecord(
                row.token_id, row.csrf, row.created_at, row.seen_at, row.expires_at
            )

    def touch_ui_session(self, id_hash: str, at: datetime) -> None:
        def work(session: Session) -> None:
            session.execute(
                update(UiSession).where(UiSession.id_hash == id_hash).values(seen_at=at)
            )

        self._retrying(work, what="renew a UI session")

    def close_ui_session(self, id_hash: str) -> None:
        def work(session: Session) -> None:
            session.execute(delete(UiSession).where(UiSession.id_hash == id_hash))

        self._retrying(work, what="close a UI session")

    def close_ui_sessions_of(self, token_id: str) -> int:
        """Close every session of a token (its revocation); how many there were."""

        def work(session: Session) -> int:
            found = session.scalars(
                select(UiSession.id_hash).where(UiSession.token_id == token_id)
            ).all()
            session.execute(delete(UiSession).where(UiSession.token_id == token_id))
            return len(found)

        return self._retrying(work, what="close a token's UI sessions")
