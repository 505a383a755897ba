"""The lifecycle of versions: retention policies and their plans, legal holds, gc, delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post, put
from litestar.params import FromQuery, JSONBody

from registry import wire
from registry.api.guards import authorize, enter, in_scope


@dataclass
class RetentionRequest:
    model: str | None = None
    keep_last: int | None = None
    keep_within: str | None = None
    keep_demoted_for: str | None = None
    clear: bool = False


@dataclass
class HoldRequest:
    ref: str
    reason: str


@dataclass
class GcRequest:
    dry_run: bool = True
    grace: str = "24h"


@dataclass
class DeleteRequest:
    ref: str
    reason: str
    dry_run: bool = False


class LifecycleController(Controller):
    path = "/v1"
    tags = ("lifecycle",)
    guards = (authorize,)

    @get(
        "/retention",
        sync_to_thread=True,
        summary="Retention",
        operation_id="Retention",
        operation="read",
    )
    def retention(self, request: Request[Any, Any, Any], model: FromQuery[str]) -> wire.Retention:
        """The retention policy in force for a model and where it comes from."""
        view, _token = enter(request, model=model)
        policy, source = view.retention(model)
        return wire.Retention.of(model, policy, source)

    @put("/retention", sync_to_thread=True, status_code=200, operation="retention")
    def set_retention(
        self, request: Request[Any, Any, Any], data: JSONBody[RetentionRequest]
    ) -> wire.ModelPolicy:
        """Replace a model's policy (`model` null: the registry default)."""
        view, _token = enter(request, model=data.model, everything=data.model is None)
        policy = view.set_retention(
            data.model,
            keep_last=data.keep_last,
            keep_within=data.keep_within,
            keep_demoted_for=data.keep_demoted_for,
            clear=data.clear,
        )
        return wire.ModelPolicy.of(data.model or "*", policy)

    @get("/retention/plan", sync_to_thread=True, operation="read")
    def retention_plan(
        self, request: Request[Any, Any, Any], model: FromQuery[str]
    ) -> wire.RetentionPlan:
        """Dry run of a model's policy: which versions it keeps and why."""
        view, _token = enter(request, model=model)
        [(name, policy, decisions)] = view.plan_retention(model)
        return wire.RetentionPlan.of(name, policy, decisions)

    @get("/holds", sync_to_thread=True, summary="Holds", operation_id="Holds", operation="read")
    def holds(self, request: Request[Any, Any, Any]) -> list[wire.Hold]:
        """Legal holds on the models this token may read."""
        view, token = enter(request)
        return [wire.Hold.of(h) for h in view.holds() if in_scope(token, h.name)]

    @post("/holds", sync_to_thread=True, status_code=200, operation="hold")
    def set_hold(
        self, request: Request[Any, Any, Any], data: JSONBody[HoldRequest]
    ) -> wire.HoldResult:
        """Place a legal hold (admin)."""
        view, _token = enter(request, ref=data.ref)
        return wire.HoldResult.of(view.hold(data.ref, reason=data.reason))

    @post("/holds/release", sync_to_thread=True, status_code=200, operation="hold")
    def release_hold(
        self, request: Request[Any, Any, Any], data: JSONBody[HoldRequest]
    ) -> wire.HoldResult:
        """Release a legal hold (admin)."""
        view, _token = enter(request, ref=data.ref)
        return wire.HoldResult.of(view.release_hold(data.ref, reason=data.reason))

    @post("/gc", sync_to_thread=True, status_code=200, operation="gc")
    def gc(self, request: Request[Any, Any, Any], data: JSONBody[GcRequest]) -> wire.GcReport:
        """Expire, extend locks and sweep (admin, with a token for every model; `dry_run`
        defaults to true)."""
        view, _token = enter(request, everything=True)
        return wire.GcReport.of(view.gc(dry_run=data.dry_run, grace=data.grace))

    @post("/delete", sync_to_thread=True, status_code=200, operation="delete")
    def delete_version(
        self, request: Request[Any, Any, Any], data: JSONBody[DeleteRequest]
    ) -> wire.Version:
        """Delete one version outside the policy (admin; refused while anything keeps it).
        `dry_run`: the same checks and refusals, nothing deleted."""
        view, _token = enter(request, ref=data.ref)
        return wire.Version.of(view.delete(data.ref, reason=data.reason, dry_run=data.dry_run))
