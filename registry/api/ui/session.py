"""Who is looking at a page: the session cookie (a random id; the catalog keeps its hash and the
token it acts as, never the token), the registry as that token sees it, and the checks every
change must pass (the session's CSRF token, a same-origin request).

The cookie is HttpOnly, SameSite=Strict, limited to `/ui`, and Secure whenever the page came
over TLS (uvicorn's own, or a trusted proxy's `X-Forwarded-Proto`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response
from litestar.datastructures import Cookie

from registry.api.common import among, state_of
from registry.api.guards import in_scope
from registry.errors import (
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    UnauthenticatedError,
)
from registry.records import TokenRecord
from registry.refs import validate_name
from registry.service import Registry

COOKIE = "mr_session"


class SignInRequiredError(UnauthenticatedError):
    """A page asked for without a live session: the answer is the sign-in page."""

    default_hint = "sign in at /ui/login with an API token"


@dataclass(frozen=True)
class Viewer:
    """A signed-in request: the registry as its token sees it, the token, and the session's
    CSRF token for the forms on the page."""

    view: Registry
    token: TokenRecord
    csrf: str

    def may(self, operation: str) -> bool:
        """Whether the token's role allows `operation` (a key of the access table)."""
        try:
            self.view.check_permission(operation)
        except PermissionDeniedError:
            return False
        return True

    @property
    def everything(self) -> bool:
        """Whether the token acts on every model (what the whole audit trail needs)."""
        return "*" in self.token.models

    def sees(self, name: str) -> bool:
        return in_scope(self.token, name)

    def check_model(self, name: str) -> None:
        """A model outside the token's patterns is answered like one that does not exist."""
        validate_name(name)
        if not in_scope(self.token, name):
            raise NotFoundError(f"model {name} does not exist")


def viewer(request: Request[Any, Any, Any], operation: str = "read") -> Viewer:
    """The signed-in viewer of `request`, once its token may do `operation`; else
    SignInRequiredError (no live session), RateLimitedError, PermissionDeniedError."""
    state = state_of(request)
    session_id = request.cookies.get(COOKIE, "")
    if not session_id:
        raise SignInRequiredError("sign in to see this page")
    try:
        session, token = state.registry.ui_session(session_id)
    except RegistryError as error:
        raise SignInRequiredError(error.message) from None
    state.limiter.check(token.id)
    view = state.registry.acting_as(token)
    view.check_permission(operation)
    return Viewer(view, token, session.csrf)


def check_csrf(viewer: Viewer, sent: str) -> None:
    """A change must carry the session's CSRF token (a form on a page of this session)."""
    if not sent or not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
        raise PermissionDeniedError(
            "this form has expired or did not come from this site",
            hint="reload the page and submit it again",
        )


def check_same_origin(request: Request[Any, Any, Any]) -> None:
    """Refuse a form posted from another site (defence beside SameSite and the CSRF token;
    the sign-in form has no session to hold a token yet). Browsers send `Sec-Fetch-Site` or
    `Origin` on every POST; a client that sends neither is not a browser another site drives."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise PermissionDeniedError("a form from another site was refused")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc != host(request) or parts.scheme != scheme(request):
            raise PermissionDeniedError("a form from another site was refused")
    elif origin == "null":
        raise PermissionDeniedError("a form from another site was refused")


def scheme(request: Request[Any, Any, Any]) -> str:
    """`https` when the request came over TLS: uvicorn's own, or a trusted proxy's (only a
    peer of `[api] trusted_proxies` is believed about `X-Forwarded-Proto`)."""
    if request.url.scheme == "https":
        return "https"
    state = state_of(request)
    peer = request.client.host if request.client else ""
    if among(peer, state.proxies):
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if forwarded in ("http", "https"):
            return forwarded
    return "http"


def host(request: Request[Any, Any, Any]) -> str:
    """The host the browser asked for: `Host`, or a trusted proxy's `X-Forwarded-Host` (a
    proxy that rewrites `Host`, as nginx does by default, says the original there)."""
    state = state_of(request)
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
    if forwarded and among(peer, state.proxies):
        return forwarded
    return request.headers.get("host", "")


def session_cookie(request: Request[Any, Any, Any], value: str, *, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=value,
        path="/ui",
        max_age=max_age,
        httponly=True,
        secure=scheme(request) == "https",
        samesite="strict",
    )


def clear_cookie(request: Request[Any, Any, Any], response: Response[Any]) -> None:
    response.delete_cookie(COOKIE, path="/ui")


def notice_signature(csrf: str, notice: str) -> str:
    """What makes a page's notice ("production now points at @5") the session's own: a link
    from elsewhere cannot make a page announce a change that was not made."""
    return hmac.new(csrf.encode(), notice.encode(), hashlib.sha256).hexdigest()[:32]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a page of this UI, never another site (`//host`,
    `/\\host` and schemes are refused)."""
    if not target or not target.startswith("/ui/") or target.startswith("/ui//"):
        return "/ui/"
    if "\\" in target or any(ord(c) < 0x20 for c in target):
        return "/ui/"
    return target
