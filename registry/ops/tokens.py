"""API tokens: create, list, revoke, and authenticate a bearer token (its secret is never
stored, only its hash).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from registry.errors import (
    InvalidInputError,
    UnauthenticatedError,
)
from registry.ops.access import requires
from registry.ops.checks import check_text
from registry.ops.context import Context
from registry.ops.journaling import journaled
from registry.records import (
    TokenRecord,
)
from registry.retention import (
    parse_duration,
)
from registry.roles import ROLES

TOKEN_PREFIX = "mrt_"  # noqa: S105 - a marker that names the kind of secret, not one


_TOKEN = re.compile(r"mrt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


_MODEL_PATTERN = re.compile(r"[a-z0-9*?][a-z0-9._/*?-]{0,127}")


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@requires("create-token")
@journaled
def create_token(
    ctx: Context,
    name: str,
    *,
    role: str,
    models: Sequence[str],
    expires: str | None = None,
) -> tuple[TokenRecord, str]:
    """A new API token (admin): returns its record and its text, which is shown once and
    never stored (the catalog keeps a SHA-256 of its secret). `models` are name patterns
    (`org/*`, `team/llama`, `*`) the token may act on."""
    check_text("token name", name, limit=128)
    if not name.strip():
        raise InvalidInputError("a token needs a name", hint="e.g. ci-llama-push")
    if role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}", hint=f"one of {', '.join(ROLES)}")
    patterns = tuple(dict.fromkeys(models))
    if not patterns:
        raise InvalidInputError(
            "a token needs at least one model pattern", hint="--models 'org/*' (or '*')"
        )
    for pattern in patterns:
        if not _MODEL_PATTERN.fullmatch(pattern):
            raise InvalidInputError(
                f"invalid model pattern {pattern!r}",
                hint="model names with * and ? wildcards, e.g. org/* or team/llama-?",
            )
    now = datetime.now(UTC)
    expires_at = None if expires is None else now + parse_duration(expires)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(
        token_id,
        name,
        role,
        patterns,
        now,
        ctx.actor,
        expires_at,
        None,
        None,
        _secret_hash(secret),
    )
    ctx.catalog.add_token(record, actor=ctx.actor)
    return record, f"{TOKEN_PREFIX}{token_id}_{secret}"


@requires("list-tokens")
def tokens(ctx: Context) -> list[TokenRecord]:
    return ctx.catalog.tokens()


@requires("revoke-token")
@journaled
def revoke_token(ctx: Context, token_id: str) -> TokenRecord:
    record = ctx.catalog.revoke_token(token_id, actor=ctx.actor)
    # Its web UI sessions would be refused at their next request anyway; none outlives it.
    ctx.catalog.close_ui_sessions_of(token_id)
    return record


def authenticate(ctx: Context, text: str) -> TokenRecord:
    """The live token `text` is, or UnauthenticatedError: one message for a malformed,
    unknown, wrong, expired or revoked token, so a guess learns nothing."""
    refused = UnauthenticatedError(
        "invalid, expired or revoked API token",
        hint="create one with `model-registry token create` (admin)",
    )
    match = _TOKEN.fullmatch(text.strip())
    if match is None:
        raise refused
    record = ctx.catalog.token(match.group(1))
    if record is None or not hmac.compare_digest(record.secret_hash, _secret_hash(match.group(2))):
        raise refused
    if not live(record, datetime.now(UTC)):
        raise refused
    return record


def live(record: TokenRecord, now: datetime) -> bool:
    """Whether the token may act at `now`: neither revoked nor expired."""
    return record.revoked_at is None and (record.expires_at is None or record.expires_at > now)
