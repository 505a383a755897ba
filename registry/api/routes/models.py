"""Models and versions: list them, show one with its verified manifest, compare two, verify
one's objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromQuery, JSONBody

from registry import wire
from registry.api.common import note_read, security_event, state_of
from registry.api.guards import authorize, check_scope, enter, model_of


@dataclass
class VerifyRequest:
    ref: str
    read_data: bool = False


class ModelsController(Controller):
    path = "/v1"
    tags = ("models",)
    guards = (authorize,)

    @get("/models", sync_to_thread=True, operation="read")
    def list_models(
        self,
        request: Request[Any, Any, Any],
        after: FromQuery[str | None] = None,
        limit: FromQuery[int] = 100,
    ) -> wire.ModelList:
        """A page of the models this token may read, by name: at most `limit` (1 to 1000),
        those named after `after`. `next` is the `after` of the next page, null on the last."""
        view, token = enter(request)
        return wire.ModelList.of(view.model_list(after=after, limit=limit, patterns=token.models))

    @get("/versions", sync_to_thread=True, operation="read")
    def list_versions(
        self,
        request: Request[Any, Any, Any],
        model: FromQuery[str],
        expired: FromQuery[bool] = False,
        after: FromQuery[int] = 0,
        limit: FromQuery[int] = 100,
    ) -> wire.VersionList:
        """A page of the versions of a model, oldest first (with `expired`, tombstones too): at
        most `limit` (1 to 1000), those numbered after `after`. `next` is the `after` of the
        next page, null on the last."""
        view, _token = enter(request, model=model)
        return wire.VersionList.of(
            view.version_list(model, after=after, limit=limit, expired=expired)
        )

    @get("/version", sync_to_thread=True, operation="read")
    def show_version(
        self, request: Request[Any, Any, Any], ref: FromQuery[str]
    ) -> wire.VersionDetails:
        """One version and its verified manifest (signature and digest checked by the server)."""
        view, token = enter(request, ref=ref)
        details = view.show(ref)
        note_read(request, token, details.version.name)
        return wire.VersionDetails.of(details)

    @get("/diff", sync_to_thread=True, operation="read")
    def diff(
        self, request: Request[Any, Any, Any], a: FromQuery[str], b: FromQuery[str]
    ) -> wire.VersionDiff:
        """What changed from version `a` to version `b` (both within the token's models): files,
        tensors, metadata. config.json is not compared here (`config_compared` false): the
        server never sends a file's plaintext; the client compares the configs it decrypts."""
        view, token = enter(request, ref=a)
        check_scope(token, model_of(b))
        return wire.VersionDiff.of(view.diff(a, b, config=False))

    @post("/verify", sync_to_thread=True, status_code=200, operation="verify")
    def verify(
        self, request: Request[Any, Any, Any], data: JSONBody[VerifyRequest]
    ) -> wire.VerifyReport:
        """Check a version's objects in the stores (with `read_data`: decrypt and re-hash
        them)."""
        view, _token = enter(request, ref=data.ref)
        report = view.verify(data.ref, read_data=data.read_data)
        if not report.ok:
            state_of(request).metrics.integrity_failures.inc(len(report.problems))
            security_event(
                request,
                "integrity-failure",
                f"{report.version.ref}: "
                + "; ".join(f"{p.path}: {p.problem}" for p in report.problems),
            )
        return wire.VerifyReport.of(report)
