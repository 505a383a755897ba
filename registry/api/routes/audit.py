"""The audit trail and the check of its hash chain (admin)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.params import FromQuery

from registry import wire
from registry.api.common import parse_time
from registry.api.guards import REGISTRY_SUBJECT, authorize, enter


class AuditController(Controller):
    path = "/v1/audit"
    tags = ("audit",)
    guards = (authorize,)

    @get("/", sync_to_thread=True, operation="audit")
    def audit(
        self,
        request: Request[Any, Any, Any],
        model: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
    ) -> list[wire.AuditEntry]:
        """The audit trail, newest first (admin; without `model`, a token for every model)."""
        everything = model is None or model == REGISTRY_SUBJECT
        view, _token = enter(request, model=model, everything=everything)
        events = view.audit_events(subject=model, since=parse_time(since), limit=limit)
        return [wire.AuditEntry.of(e) for e in events]

    @get("/verify", sync_to_thread=True, operation="audit")
    def audit_verify(self, request: Request[Any, Any, Any]) -> wire.AuditVerification:
        """Walk the audit hash chain (admin, with a token for every model)."""
        view, _token = enter(request, everything=True)
        return wire.AuditVerification.of(view.verify_audit())
