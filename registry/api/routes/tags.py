"""Tags: add or remove one (promoter), list a version's, and the versions that carry one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromQuery, JSONBody

from registry import wire
from registry.api.guards import authorize, enter, in_scope


@dataclass
class TagRequest:
    ref: str
    tag: str


class TagsController(Controller):
    path = "/v1"
    tags = ("tags",)
    guards = (authorize,)

    @post("/tags", sync_to_thread=True, status_code=200, operation="tag")
    def add_tag(
        self, request: Request[Any, Any, Any], data: JSONBody[TagRequest]
    ) -> wire.TagChange:
        """Tag a version (promoter; audited). A tag it already has changes nothing
        (`changed` false)."""
        view, _token = enter(request, ref=data.ref)
        return wire.TagChange.of(view.add_tag(data.ref, data.tag))

    @post("/tags/remove", sync_to_thread=True, status_code=200, operation="tag")
    def remove_tag(
        self, request: Request[Any, Any, Any], data: JSONBody[TagRequest]
    ) -> wire.TagChange:
        """Remove a version's tag (promoter; audited); 404 when it has no such tag."""
        view, _token = enter(request, ref=data.ref)
        return wire.TagChange.of(view.remove_tag(data.ref, data.tag))

    @get("/tags", sync_to_thread=True, operation="read")
    def version_tags(self, request: Request[Any, Any, Any], ref: FromQuery[str]) -> list[wire.Tag]:
        """A version's tags, with who added each and when."""
        view, _token = enter(request, ref=ref)
        return [wire.Tag.of(t) for t in view.tags(ref)]

    @get("/tagged", sync_to_thread=True, operation="read")
    def tagged(
        self,
        request: Request[Any, Any, Any],
        tag: FromQuery[str],
        model: FromQuery[str | None] = None,
        expired: FromQuery[bool] = False,
    ) -> list[wire.Version]:
        """The versions tagged `tag`, by model and number: of `model`, or of every model the
        token may read."""
        view, token = enter(request, model=model)
        found = view.tagged(tag, name=model, expired=expired)
        return [wire.Version.of(v) for v in found if in_scope(token, v.name)]
