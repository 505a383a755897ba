"""How a page is made: the Jinja2 environment (autoescaped: everything a user wrote is text,
never markup), the filters that format sizes, times and digests, the security headers of every
answer under `/ui` (a strict Content-Security-Policy: no inline script or style, nothing from
another origin), the static files, and errors shown as pages.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import MediaType, Request, Response, Router
from litestar.exceptions import HTTPException, NotFoundException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from registry.api.errors import registry_error
from registry.errors import RateLimitedError, RegistryError

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def size(value: int | None) -> str:
    """Bytes in binary units, three significant digits."""
    if value is None:
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{int(amount)} B" if unit == "B" else f"{amount:.3g} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def count(value: int | None) -> str:
    """A large count in short form: 8.03B parameters, 291 tensors."""
    if value is None:
        return "—"
    for limit, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return str(value)


def when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago (or, in the future, how soon) `value` is, in the largest fitting unit."""
    if value is None:
        return "—"
    delta = (now or datetime.now(UTC)) - value
    future = delta < timedelta(0)
    seconds = abs(delta.total_seconds())
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            amount = f"{math.floor(seconds / span)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "in a moment" if future else "just now"


def short(digest: str | None) -> str:
    """A digest's first 12 hex digits: enough to tell versions apart on a page."""
    if not digest:
        return "—"
    _, _, hexdigits = digest.partition(":")
    return (hexdigits or digest)[:12]


def model_url(name: str, *parts: object, **query: object) -> str:
    path = "/ui/models/" + quote(name, safe="/")
    for part in parts:
        path += "/" + quote(str(part), safe="")
    shown = {k: v for k, v in query.items() if v not in (None, "", False)}
    return path + ("?" + urlencode(shown) if shown else "")


def query_url(path: str, **query: object) -> str:
    shown = {k: v for k, v in query.items() if v not in (None, "", False)}
    return path + ("?" + urlencode(shown) if shown else "")


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(size=size, count=count, when=when, iso=iso, ago=ago, short=short)
    environment.globals.update(model_url=model_url, query_url=query_url)
    return environment


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(_environment()))


def page(template: str, /, *, status: int = 200, **context: Any) -> Template:
    # Named, not guessed: a handler annotated `-> Any` lends the Template its own default,
    # JSON, and a browser then shows the page's source instead of the page.
    return Template(
        template_name=template, context=context, status_code=status, media_type=MediaType.HTML
    )


def secure_headers(response: Response[Any]) -> Response[Any]:
    """Every answer under /ui: the security headers, and no caching of pages (they show what a
    token may see; a shared cache must not keep them). Static files may be cached."""
    for key, value in HEADERS.items():
        response.headers.setdefault(key, value)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def static_router() -> Router:
    return create_static_files_router(
        path="/static",
        directories=[STATIC],
        name="ui-static",
        before_request=_static_file_only,
        after_request=_static_headers,
        include_in_schema=False,
    )


_STATIC_FILES = frozenset(path.name for path in STATIC.iterdir() if path.is_file())


def _static_file_only(request: Request[Any, Any, Any]) -> None:
    # The static files are the few in STATIC: any other name is a 404 before the file system
    # is asked (which fails on a NUL or an over-long name with a 500, not a "no such file").
    name = str(request.path_params.get("file_path", "")).lstrip("/")
    if name not in _STATIC_FILES:
        raise NotFoundException()


def _static_headers(response: Response[Any]) -> Response[Any]:
    # The nearest after_request is the only one that runs: this one replaces the UI router's,
    # so it adds the security headers too.
    response.headers["Cache-Control"] = "public, max-age=3600"
    return secure_headers(response)


def html_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """An error under /ui as a page: a GET without a session goes to the sign-in page; the
    registry's own errors and bad requests say what went wrong with the status the API would
    answer (counted and watched the same way); anything else is a bug, logged, and says so."""
    from registry.api.ui.session import SignInRequiredError

    if isinstance(error, SignInRequiredError) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        # An exception handler's answer skips the router's after_request: the headers here.
        return secure_headers(Redirect(path=query_url("/ui/login", next=target), status_code=303))
    headers: dict[str, str] = {}
    if isinstance(error, RegistryError):
        registry_error(request, error)  # the API's accounting: refusals, integrity failures
        status, message, hint = error.http_status, error.message, error.hint
        if isinstance(error, RateLimitedError):
            headers["Retry-After"] = str(max(1, round(error.retry_after + 0.5)))
    elif isinstance(error, HTTPException) and error.status_code < 500:
        status, hint = error.status_code, ""
        message = error.detail if isinstance(error.detail, str) else "invalid request"
        if status == 404:
            message = "there is no such page"
    else:
        logging.getLogger("model_registry.api").exception("unexpected error", exc_info=error)
        status, message, hint = 500, "unexpected server error (a bug: please report it)", ""
    if status == 401:
        message, hint = error_message(error), "sign in again at /ui/login"
    return secure_headers(
        Template(
            template_name="error.html",
            context={
                "status": status,
                "message": message,
                "hint": hint,
                "viewer": None,
                "title": f"{status}",
            },
            status_code=status,
            headers=headers,
            media_type=MediaType.HTML,
        )
    )


def error_message(error: Exception) -> str:
    return str(error) or "sign in to see this page"
