"""Aliases: promote, roll back, protect, list, and their history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromQuery, JSONBody

from registry import wire
from registry.api.common import parse_time
from registry.api.guards import authorize, check_scope, enter, model_of


@dataclass
class PromoteRequest:
    ref: str
    alias: str
    reason: str = ""


@dataclass
class RollbackRequest:
    model: str
    alias: str
    to: str | None = None
    reason: str = ""


@dataclass
class ProtectRequest:
    model: str
    alias: str
    protected: bool = True


class AliasesController(Controller):
    path = "/v1"
    tags = ("aliases",)
    guards = (authorize,)

    @post("/aliases/promote", sync_to_thread=True, status_code=200, operation="promote")
    def promote(
        self, request: Request[Any, Any, Any], data: JSONBody[PromoteRequest]
    ) -> wire.AliasChange:
        """Point an alias at a version (a protected alias needs the promoter role)."""
        view, _token = enter(request, ref=data.ref)
        return wire.AliasChange.of(view.promote(data.ref, data.alias, reason=data.reason))

    @post("/aliases/rollback", sync_to_thread=True, status_code=200, operation="rollback")
    def rollback(
        self, request: Request[Any, Any, Any], data: JSONBody[RollbackRequest]
    ) -> wire.AliasChange:
        """Move an alias back (to the version before, or to `to`)."""
        view, token = enter(request, model=data.model)
        if data.to is not None:
            check_scope(token, model_of(data.to))
        change = view.rollback(data.model, data.alias, to=data.to, reason=data.reason)
        return wire.AliasChange.of(change)

    @post("/aliases/protect", sync_to_thread=True, status_code=200, operation="protect")
    def protect(
        self, request: Request[Any, Any, Any], data: JSONBody[ProtectRequest]
    ) -> wire.Alias:
        """Protect an alias (moving it then needs the promoter role), or unprotect it."""
        view, _token = enter(request, model=data.model)
        return wire.Alias.of(view.protect_alias(data.model, data.alias, protected=data.protected))

    @get("/aliases", sync_to_thread=True, operation="read")
    def aliases(self, request: Request[Any, Any, Any], model: FromQuery[str]) -> list[wire.Alias]:
        """A model's aliases."""
        view, _token = enter(request, model=model)
        return [wire.Alias.of(a) for a in view.aliases(model)]

    @get("/history", sync_to_thread=True, operation="read")
    def history(
        self,
        request: Request[Any, Any, Any],
        model: FromQuery[str],
        alias: FromQuery[str | None] = None,
        at: FromQuery[str | None] = None,
    ) -> list[wire.AliasMove]:
        """Alias moves, oldest first; with `at`, where each alias pointed at that instant."""
        view, _token = enter(request, model=model)
        return [wire.AliasMove.of(m) for m in view.history(model, alias, at=parse_time(at))]
