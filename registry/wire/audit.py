"""The audit trail, API tokens and webhook deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from registry import records
from registry.wire.base import Time, Wire, iso, maybe_iso, parse_time

if TYPE_CHECKING:
    from registry.config import Webhook as WebhookConfig


# -- audit, tokens, events ---------------------------------------------------------------------


class AuditEntry(Wire, kw_only=True):
    id: int
    at: Time
    actor: str
    action: str
    subject: str
    details: dict[str, Any]

    @classmethod
    def of(cls, e: records.AuditRecord) -> AuditEntry:
        return cls(
            id=e.id,
            at=iso(e.at),
            actor=e.actor,
            action=e.action,
            subject=e.subject,
            details=e.details,
        )

    def to_record(self) -> records.AuditRecord:
        return records.AuditRecord(
            self.id, parse_time(self.at), self.actor, self.action, self.subject, self.details
        )


class AuditVerification(Wire, kw_only=True):
    """A walk of the audit hash chain: `head` is the last good hash."""

    ok: bool
    checked: int
    first_bad: int | None
    problem: str
    head: str
    links_only: int = 0
    regions_compared: list[str] = msgspec.field(default_factory=list)
    differences: list[str] = msgspec.field(default_factory=list)
    not_in_journal: int = 0

    @classmethod
    def of(cls, r: records.AuditVerification) -> AuditVerification:
        return cls(
            ok=r.ok,
            checked=r.checked,
            first_bad=r.first_bad,
            problem=r.problem,
            head=r.head,
            links_only=r.links_only,
            regions_compared=list(r.regions_compared),
            differences=list(r.differences),
            not_in_journal=r.not_in_journal,
        )

    def to_record(self) -> records.AuditVerification:
        return records.AuditVerification(
            self.ok,
            self.checked,
            self.first_bad,
            self.problem,
            self.head,
            self.links_only,
            tuple(self.regions_compared),
            tuple(self.differences),
            self.not_in_journal,
        )


class Token(Wire, kw_only=True):
    """An API token (never its secret)."""

    id: str
    name: str
    role: str
    models: list[str]
    created_at: Time
    created_by: str
    expires_at: Time | None
    revoked_at: Time | None

    @staticmethod
    def fields_of(t: records.TokenRecord) -> dict[str, Any]:
        return {
            "id": t.id,
            "name": t.name,
            "role": t.role,
            "models": list(t.models),
            "created_at": iso(t.created_at),
            "created_by": t.created_by,
            "expires_at": maybe_iso(t.expires_at),
            "revoked_at": maybe_iso(t.revoked_at),
        }

    @classmethod
    def of(cls, record: records.TokenRecord) -> Token:
        return cls(**cls.fields_of(record))


class NewToken(Token, kw_only=True):
    """A token just created, with its text (shown once)."""

    token: str

    @classmethod
    def of(cls, record: records.TokenRecord, text: str) -> NewToken:  # type: ignore[override]
        return cls(**Token.fields_of(record), token=text)


class Delivery(Wire, kw_only=True):
    """A delivery of an event to a webhook, and its attempts so far."""

    id: int
    event_id: str
    url: str
    attempts: int
    created_at: Time
    delivered_at: Time | None
    last_error: str

    @classmethod
    def of(cls, d: records.DeliveryRecord) -> Delivery:
        return cls(
            id=d.id,
            event_id=d.event_id,
            url=d.url,
            attempts=d.attempts,
            created_at=iso(d.created_at),
            delivered_at=maybe_iso(d.delivered_at),
            last_error=d.last_error,
        )


class Webhook(Wire, kw_only=True):
    url: str
    secret_file: str

    @classmethod
    def of(cls, hook: WebhookConfig) -> Webhook:
        return cls(url=hook.url, secret_file=str(hook.secret_file))


class DeliveryRun(Wire, kw_only=True):
    """A run of pending deliveries: "url: error" for each still pending."""

    ok: bool
    failed: list[str]

    @classmethod
    def of(cls, failed: Sequence[str]) -> DeliveryRun:
        return cls(ok=not failed, failed=list(failed))
