"""Upload sessions: open one with its files, look one up, mark it used, record a file's check,
claim a session for its commit (one commit at a time, whichever process runs it), and drop
sessions that ended. Rows only: the parts' bytes are ciphertext in the staging store.

Written outside the catalog's one write lock and journal (`_transient`): the rows are transient,
nothing else in the catalog depends on them, and pushes must not queue behind every push and
promote. Each change is one statement whose condition decides (a claim). The parts received are
not rows: the staging store's listing is their record, so a part costs the catalog no write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Result, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from registry.catalog.models import UploadFile, UploadSession
from registry.catalog.parts import CatalogPart
from registry.crypto.sealed import HEADER_SIZE, TAG_SIZE
from registry.records import CheckedFile, UploadFileRecord, UploadSessionRecord


class UploadsPart(CatalogPart):
    """The `upload_sessions` and `upload_files` tables."""

    def open_upload(self, record: UploadSessionRecord) -> None:
        def work(session: Session) -> None:
            session.add(
                UploadSession(
                    id=record.id,
                    model=record.model,
                    message=record.message,
                    owner=record.owner,
                    chunk_size=record.chunk_size,
                    chunks_per_part=record.chunks_per_part,
                    created_at=record.created_at,
                    seen_at=record.seen_at,
                )
            )
            session.flush()
            session.add_all(
                UploadFile(
                    session_id=record.id,
                    idx=entry.index,
                    path=entry.path,
                    size=entry.size,
                    digest=entry.digest,
                    salt=entry.salt,
                    nonce_prefix=entry.nonce_prefix,
                    session_key=entry.session_key,
                )
                for entry in record.files
            )

        self._transient(work, what="open an upload session")

    def upload(self, session_id: str, *, open_only: bool = False) -> UploadSessionRecord | None:
        """The session with its files (its parts are the staging store's), or None; with
        `open_only`, None too while a commit holds it (nothing may be added to it then)."""
        with self._read() as session:
            row = session.get(UploadSession, session_id)
            if row is None or (open_only and row.claimed_by is not None):
                return None
            files = session.scalars(
                select(UploadFile)
                .where(UploadFile.session_id == session_id)
                .order_by(UploadFile.idx)
            ).all()
            return UploadSessionRecord(
                row.id,
                row.model,
                row.message,
                row.owner,
                row.chunk_size,
                row.chunks_per_part,
                row.created_at,
                row.seen_at,
                tuple(
                    UploadFileRecord(
                        f.idx,
                        f.path,
                        f.size,
                        f.digest,
                        f.salt,
                        f.nonce_prefix,
                        None
                        if f.checked_parts is None
                        else CheckedFile(
                            f.checked_parts, f.checked_chunk_root or "", f.checked_sha256 or ""
                        ),
                        f.session_key,
                    )
                    for f in files
                ),
                {},
            )

    def touch_upload(self, session_id: str, *, at: datetime) -> None:
        """Mark a session used (its idle time starts again)."""

        def work(session: Session) -> None:
            session.execute(
                update(UploadSession).where(UploadSession.id == session_id).values(seen_at=at)
            )

        self._transient(work, what="mark an upload session used")

    def record_file_check(self, session_id: str, index: int, checked: CheckedFile) -> None:
        def work(session: Session) -> None:
            session.execute(
                update(UploadFile)
                .where(UploadFile.session_id == session_id, UploadFile.idx == index)
                .values(
                    checked_parts=checked.parts,
                    checked_chunk_root=checked.chunk_root,
                    checked_sha256=checked.sha256,
                )
            )

        self._transient(work, what="record an upload's check")

    def claim_upload(self, session_id: str, claim: str, *, at: datetime, stale: datetime) -> bool:
        """Hold the session for one commit (`claim`); a claim taken before `stale` is taken over
        (its process died mid-commit). False when another live commit holds it, or it is gone."""

        def work(session: Session) -> bool:
            taken = session.execute(
                update(UploadSession)
                .where(
                    UploadSession.id == session_id,
                    or_(UploadSession.claimed_by.is_(None), UploadSession.claimed_at < stale),
                )
                .values(claimed_by=claim, claimed_at=at, seen_at=at)
            )
            return bool(_count(taken))

        return self._transient(work, what="claim an upload session")

    def renew_upload_claim(self, session_id: str, claim: str, *, at: datetime) -> None:
        """A commit still running says so (see `claim_upload`)."""

        def work(session: Session) -> None:
            session.execute(
                update(UploadSession)
                .where(UploadSession.id == session_id, UploadSession.claimed_by == claim)
                .values(claimed_at=at)
            )

        self._transient(work, what="renew an upload session's claim")

    def release_upload(self, session_id: str, claim: str, *, at: datetime) -> None:
        """Give a claimed session back after a commit that failed (the client may fix it)."""

        def work(session: Session) -> None:
            session.execute(
                update(UploadSession)
                .where(UploadSession.id == session_id, UploadSession.claimed_by == claim)
                .values(claimed_by=None, claimed_at=None, seen_at=at)
            )

        self._transient(work, what="release an upload session")

    def drop_upload(self, session_id: str) -> None:
        def work(session: Session) -> None:
            session.execute(delete(UploadFile).where(UploadFile.session_id == session_id))
            session.execute(delete(UploadSession).where(UploadSession.id == session_id))

        self._transient(work, what="drop an upload session")

    def staged_bytes(self, owner: str) -> int:
        """Bytes the parts of the owner's sessions take in the staging store once they have all
        arrived: every file sealed (`SealedHeader.sealed_size`), copies of one content each."""
        chunks = case(
            (UploadFile.size == 0, 1),  # an empty file is still one (empty) chunk and its tag
            else_=(UploadFile.size + UploadSession.chunk_size - 1) // UploadSession.chunk_size,
        )
        sealed = HEADER_SIZE + UploadFile.size + TAG_SIZE * chunks
        with self._read() as session:
            total = session.scalar(
                select(func.coalesce(func.sum(sealed), 0))
                .select_from(UploadFile)
                .join(UploadSession, UploadSession.id == UploadFile.session_id)
                .where(UploadSession.owner == owner)
            )
            return int(total or 0)

    def idle_uploads(self, before: datetime) -> list[str]:
        """Sessions idle since before `before` and not held by a live commit."""
        with self._read() as session:
            return list(
                session.scalars(
                    select(UploadSession.id).where(
                        UploadSession.seen_at < before,
                        or_(
                            UploadSession.claimed_by.is_(None),
                            and_(
                                UploadSession.claimed_at.is_not(None),
                                UploadSession.claimed_at < before,
                            ),
                        ),
                    )
                ).all()
            )


def _count(result: Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount
