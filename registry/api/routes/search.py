"""Search: versions by their model's name, tags, metadata and messages, within the token's
models."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.params import FromQuery

from registry import wire
from registry.api.guards import authorize, check_scope, enter

_GLOB = frozenset("*?[")


class SearchController(Controller):
    path = "/v1"
    tags = ("models",)
    guards = (authorize,)

    @get("/search", sync_to_thread=True, operation="read")
    def search(
        self,
        request: Request[Any, Any, Any],
        q: FromQuery[str],
        model: FromQuery[str | None] = None,
        limit: FromQuery[int] = 50,
    ) -> wire.SearchResult:
        """The newest live versions matching `q` (`KEY=VALUE`: metadata exactly; a word: in a
        model's name, a tag, metadata, a message), among the models the token may read and
        `model` names (a name, or a pattern such as `org/*`)."""
        view, token = enter(request)
        if model is not None and not _GLOB & set(model):
            check_scope(token, model)  # a name outside the token's patterns: 403, as elsewhere
        result = view.search(q, model=model, patterns=token.models, limit=limit)
        return wire.SearchResult.of(result)
