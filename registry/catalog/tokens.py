"""REST API tokens: created and revoked (audited), read back by id or all (only a hash of each
secret is kept).
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.catalog.audit import append_audit
from registry.catalog.models import ApiToken, utcnow
from registry.catalog.parts import CatalogPart, details_json
from registry.errors import NotFoundError
from registry.records import TokenRecord


class TokensPart(CatalogPart):
    """API tokens."""

    def add_token(self, record: TokenRecord, *, actor: str) -> None:
        def work(session: Session) -> None:
            session.add(
                ApiToken(
                    id=record.id,
                    name=record.name,
                    secret_hash=record.secret_hash,
                    role=record.role,
                    models=json.dumps(list(record.models)),
                    created_at=record.created_at,
                    created_by=record.created_by,
                    expires_at=record.expires_at,
                )
            )
            append_audit(
                session,
                at=record.created_at,
                actor=actor,
                action="token-create",
                subject="registry",
                details=details_json(
                    {
                        "token": record.id,
                        "name": record.name,
                        "role": record.role,
                        "models": list(record.models),
                        "expires_at": None
                        if record.expires_at is None
                        else record.expires_at.isoformat(),
                    }
                ),
            )

        self._retrying(work, what="create a token")

    def token(self, token_id: str) -> TokenRecord | None:
        with self._read() as session:
            row = session.get(ApiToken, token_id)
            return None if row is None else _token_record(row)

    def tokens(self) -> list[TokenRecord]:
        with self._read() as session:
            rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at)).all()
            return [_token_record(row) for row in rows]

    def revoke_token(self, token_id: str, *, actor: str) -> TokenRecord:
        def work(session: Session) -> TokenRecord:
            row = session.get(ApiToken, token_id)
            if row is None:
                raise NotFoundError(
                    f"no token {token_id}", hint="`model-registry token list` shows them"
                )
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                row.revoked_by = actor
                append_audit(
                    session,
                    at=row.revoked_at,
                    actor=actor,
                    action="token-revoke",
                    subject="registry",
                    details=details_json({"token": row.id, "name": row.name}),
                )
            return _token_record(row)

        return self._retrying(work, what=f"revoke token {token_id}")


def _token_record(row: ApiToken) -> TokenRecord:
    return TokenRecord(
        row.id,
        row.name,
        row.role,
        tuple(json.loads(row.models)),
        row.created_at,
        row.created_by,
        row.expires_at,
        row.revoked_at,
        row.revoked_by,
        row.secret_hash,
    )
