"""Who may call a route: the token (401), its rate limit (429), its role (403), then its model
patterns (403), before anything is looked up, so neither answer tells whether a model exists.

Every `/v1` route names the operation it runs (`operation=` in its decorator, a key of
`registry.ops.access.PERMISSIONS`); the guard `authorize` checks the token's role with the same
rule the operation itself applies (`Registry.check_permission`, which is `access.check`), before
Litestar even reads the request's parameters or body. The handler then checks the model patterns
of what it was asked (`enter`), which needs those parameters, and gets the registry as the token
sees it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from registry.api.common import state_of
from registry.errors import PermissionDeniedError, RegistryError, UnauthenticatedError
from registry.records import TokenRecord
from registry.refs import parse_reference, validate_name
from registry.service import Registry

CALLER = "caller"
# The subject of the registry's own audit entries (init, tokens created and revoked, gc, drills,
# scrubs, key rotations): a valid model name too, but about every model, so only a token for
# every model reads them, whatever its patterns match.
REGISTRY_SUBJECT = "registry"


@dataclass(frozen=True)
class Caller:
    """An authenticated request: its token, and the registry acting as that token."""

    view: Registry
    token: TokenRecord


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The guard of every `/v1` route (see the module's docstring). `transfer` routes
    (ciphertext ranges, upload parts) count against their own, larger bucket: a pull of a large
    model is thousands of them, and limiting those like API calls would cap a fleet's
    throughput. A refused upload part still has its body read (`drain`), so an HTTP/1.1
    client, which reads the answer once it has sent its body, sees this answer (a 429 to wait
    on, a 401) rather than a broken connection."""
    operation = handler.opt.get("operation")
    if operation is None:
        return
    header = connection.headers.get("authorization", "")
    transfer = bool(handler.opt.get("transfer"))
    try:
        caller = await anyio.to_thread.run_sync(_check, connection, header, operation, transfer)
    except RegistryError:
        if handler.opt.get("drain") and isinstance(connection, Request):
            async for _chunk in connection.stream():
                pass
        raise
    connection.state[CALLER] = caller


def _check(
    connection: ASGIConnection[Any, Any, Any, Any], header: str, operation: str, transfer: bool
) -> Caller:
    state = state_of(connection)
    scheme, _, text = header.partition(" ")
    if scheme.lower() != "bearer" or not text:
        raise UnauthenticatedError(
            "an API token is needed: Authorization: Bearer <token>",
            hint="create one with `model-registry token create` (admin)",
        )
    token = state.registry.authenticate(text)
    (state.transfer_limiter if transfer else state.limiter).check(token.id)
    view = state.registry.acting_as(token)
    view.check_permission(operation)
    return Caller(view, token)


def enter(
    request: Request[Any, Any, Any],
    *,
    model: str | None = None,
    ref: str | None = None,
    everything: bool = False,
) -> tuple[Registry, TokenRecord]:
    """The registry as the request's token sees it, once the token may act on `model`, on the
    model of `ref`, or (`everything`) on every model."""
    caller: Caller = request.state[CALLER]
    # The reference is parsed only now: an unauthenticated caller learns nothing, not even
    # whether its reference was well formed.
    for name in (model, None if ref is None else model_of(ref)):
        if name is not None:
            check_scope(caller.token, name)
    if everything and "*" not in caller.token.models:
        raise PermissionDeniedError(
            "this acts on every model: it needs a token for all of them",
            hint="a token created with --models '*'",
        )
    return caller.view, caller.token


def check_scope(token: TokenRecord, model: str) -> None:
    validate_name(model)
    if not in_scope(token, model):
        raise PermissionDeniedError(
            "this token may not act on that model", hint="its --models patterns do not match"
        )


def in_scope(token: TokenRecord, model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in token.models)


def model_of(ref: str) -> str:
    return parse_reference(ref).name
