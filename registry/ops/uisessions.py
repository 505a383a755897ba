"""Web UI sessions: sign in with an API token (a session is opened for it; the token itself is
kept nowhere), find the session a cookie names, and sign out. A session acts exactly as its
token: a token revoked or expired ends its sessions at their next request.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from registry.errors import UnauthenticatedError
from registry.ops.context import Context
from registry.ops.tokens import authenticate, live
from registry.records import TokenRecord, UiSessionRecord

# A session's last use is written at most this often: a page view is a read, not a write.
_TOUCH_EVERY = timedelta(seconds=60)


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _limits(ctx: Context) -> tuple[timedelta, timedelta]:
    api = ctx.settings.api
    return timedelta(hours=api.ui_session_hours), timedelta(minutes=api.ui_idle_minutes)


def open_ui_session(ctx: Context, token_text: str) -> tuple[str, UiSessionRecord, TokenRecord]:
    """Sign in with `token_text`: the new session's id (what the cookie holds, shown once),
    the session and its token. UnauthenticatedError for a token that may not act."""
    token = authenticate(ctx, token_text)
    lifetime, idle = _limits(ctx)
    now = datetime.now(UTC)
    session_id = secrets.token_urlsafe(32)
    expires = now + lifetime
    if token.expires_at is not None:
        expires = min(expires, token.expires_at)
    record = UiSessionRecord(token.id, secrets.token_urlsafe(32), now, now, expires)
    ctx.catalog.open_ui_session(_id_hash(session_id), record, idle_before=now - idle)
    return session_id, record, token


def ui_session(ctx: Context, session_id: str) -> tuple[UiSessionRecord, TokenRecord]:
    """The live session `session_id` names and its token, else UnauthenticatedError (one
    answer for unknown, ended, idle too long, or a token that may no longer act)."""
    refused = UnauthenticatedError(
        "your session has ended; sign in again", hint="sign in at /ui/login with an API token"
    )
    if not session_id or len(session_id) > 128:
        raise refused
    id_hash = _id_hash(session_id)
    record = ctx.catalog.ui_session(id_hash)
    if record is None:
        raise refused
    _lifetime, idle = _limits(ctx)
    now = datetime.now(UTC)
    token = ctx.catalog.token(record.token_id)
    if (
        token is None
        or not live(token, now)
        or record.expires_at <= now
        or now - record.seen_at > idle
    ):
        ctx.catalog.close_ui_session(id_hash)
        raise refused
    if now - record.seen_at > _TOUCH_EVERY:
        ctx.catalog.touch_ui_session(id_hash, now)
    return record, token


def close_ui_session(ctx: Context, session_id: str) -> None:
    """Sign out: the session ends now (an unknown one is already gone)."""
    if session_id and len(session_id) <= 128:
        ctx.catalog.close_ui_session(_id_hash(session_id))
