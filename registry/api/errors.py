"""The one error shape, `{"error": {"code", "message", "hint"}}` (`registry.wire.Error`), for the
registry's own errors, Litestar's (a bad parameter, a body too large) and bugs; refusals and
integrity failures are counted and may be security events."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from registry import wire
from registry.api.common import client_of, security_event, state_of
from registry.errors import IntegrityError, RateLimitedError, RegistryError

_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_body(code: str, message: str, hint: str = "") -> dict[str, Any]:
    body: dict[str, Any] = wire.dump(wire.Error.of(code, message, hint))
    return body


def registry_error(request: Request[Any, Any, Any], error: RegistryError) -> Response[Any]:
    state = state_of(request)
    status = error.http_status
    if status in (401, 403):
        signal = state.watch.note_refusal(client_of(request))
        if signal is not None:
            security_event(request, signal.kind, signal.detail)
    if isinstance(error, IntegrityError):
        state.metrics.integrity_failures.inc()
        security_event(request, "integrity-failure", str(error))
    headers = {}
    if isinstance(error, RateLimitedError):
        headers["Retry-After"] = str(max(1, round(error.retry_after + 0.5)))
    return Response(
        error_body(error.code, error.message, error.hint), status_code=status, headers=headers
    )


def http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    if request.url.path.startswith("/ui/") or request.url.path == "/ui":
        # No route matched (a 404, a 405): under /ui the answer is a page, as for every error
        # the UI's own routes raise.
        from registry.api.ui.render import html_error

        return html_error(request, error)
    status = error.status_code
    if status >= 500:
        return internal_error(request, error)
    code = _HTTP_CODES.get(status, "invalid_input")
    detail = error.detail if isinstance(error.detail, str) else "invalid request"
    extra = getattr(error, "extra", None)
    if isinstance(extra, list) and extra:
        detail = f"{detail}: {extra[0].get('message', '')} ({extra[0].get('key', '')})"
    return Response(error_body(code, detail), status_code=status)


def internal_error(_request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    if isinstance(error, RecursionError):
        # msgspec refuses JSON nested deeper than it can decode: the client's input, not a bug.
        return Response(
            error_body("invalid_input", "the JSON body is nested too deeply"), status_code=400
        )
    logging.getLogger("model_registry.api").exception("unexpected error", exc_info=error)
    return Response(
        error_body("internal", "unexpected server error (a bug: please report it)"),
        status_code=500,
    )
