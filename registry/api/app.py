"""The Litestar application: the route controllers (`registry.api.routes`, one per group), token
authentication and role guards (`registry.api.guards`), one error shape (`registry.api.errors`),
health, readiness, metrics and the OpenAPI schema, in which every answer has a typed model
(`registry.wire`).

Every `/v1` route names the operation it runs; a token is checked (401 when missing, malformed,
unknown, expired or revoked), then its role against that operation (403), then its model
patterns (403), before anything is looked up, so neither answer tells whether a model exists.
Handlers are synchronous and run in worker threads: `Registry` does blocking I/O. The app is
stateless but for the upload staging directory (docs/operations.md: several processes share it
or use sticky routing) and its rate-limit and signal counts, which it swaps with the other
server processes' through `[api] shared_state` (`registry.api.tally`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

from registry import __version__
from registry.api.common import JSON_LIMIT, STATE_KEY, State, fleet_signal, proxy_networks
from registry.api.errors import http_error, internal_error, registry_error
from registry.api.limits import RateLimiter, Watch
from registry.api.metrics import Metrics
from registry.api.routes.aliases import AliasesController
from registry.api.routes.audit import AuditController
from registry.api.routes.blobs import BlobsController
from registry.api.routes.lifecycle import LifecycleController
from registry.api.routes.models import ModelsController
from registry.api.routes.objects import ObjectsController
from registry.api.routes.provenance import ProvenanceController
from registry.api.routes.search import SearchController
from registry.api.routes.service import ServiceController
from registry.api.routes.tags import TagsController
from registry.api.routes.uploads import UploadsController
from registry.api.tally import Tally
from registry.api.ui import template_config, ui_router
from registry.errors import RegistryError
from registry.service import Registry

__all__ = ["ROUTES", "State", "create_app", "openapi_document"]

ROUTES: list[ControllerRouterHandler] = [
    ServiceController,
    ModelsController,
    BlobsController,
    ObjectsController,
    UploadsController,
    AliasesController,
    TagsController,
    SearchController,
    LifecycleController,
    AuditController,
    ProvenanceController,
]


def _metrics_middleware(metrics_of: Callable[[], Metrics]) -> Callable[[ASGIApp], ASGIApp]:
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                route = scope.get("path_template") or "unmatched"
                method = scope.get("method", "")
                board = metrics_of()
                board.requests.labels(route, method, str(status)).inc()
                board.latency.labels(route, method).observe(time.perf_counter() - started)

        return middleware

    return factory


def create_app(registry: Registry) -> Litestar:
    """The application over an open registry (closed by the caller), with the limits of its
    `[api]` settings."""
    settings = registry.settings.api
    board = Metrics()
    tally, watch = _counts(registry, board)
    state = State(
        registry=registry,
        metrics=board,
        limiter=RateLimiter(settings.requests_per_second, settings.burst, tally=tally),
        transfer_limiter=RateLimiter(
            settings.transfer_requests_per_second,
            settings.transfer_burst,
            name="transfer",
            tally=tally,
        ),
        broker_limiter=RateLimiter(
            settings.key_requests_per_second, settings.key_burst, name="keys", tally=tally
        ),
        watch=watch,
        tally=tally,
        proxies=proxy_networks(settings.trusted_proxies),
    )
    timer = _Every("journal", settings.journal_interval_seconds, registry.drain_journal)
    # Shared counts are swapped every `shared_sync_seconds`; counts of one process alone are
    # only pruned, which can wait longer.
    # A server joins the fleet's counts as it starts (`at_once`), not an interval later.
    swapper = _Every(
        "limits", settings.shared_sync_seconds if tally.shared else 10.0, tally.swap, at_once=True
    )
    return Litestar(
        route_handlers=[*ROUTES, ui_router()],
        template_config=template_config(),
        on_startup=[timer.start, swapper.start],
        on_shutdown=[swapper.stop, timer.stop],
        state=_AppState({STATE_KEY: state}),
        exception_handlers={
            RegistryError: registry_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
        middleware=[_metrics_middleware(lambda: board)],
        request_max_body_size=JSON_LIMIT,
        openapi_config=_openapi_config(),
        debug=False,
    )


def _counts(registry: Registry, board: Metrics) -> tuple[Tally, Watch]:
    """What the limits and signals count, shared with the fleet per `[api] shared_state`."""
    settings = registry.settings.api
    shared = settings.shared_store(registry.settings.catalog_url) != "memory"

    def on_state(up: bool) -> None:
        board.shared_state_up.set(1 if up else 0)
        if not up:
            board.shared_state_failures.inc()

    board.shared_state_up.set(1)
    tally = Tally(
        interval=settings.shared_sync_seconds,
        exchange=registry.exchange_counts if shared else None,
        on_state=on_state,
    )

    def claim(kind: str, key: str, now: float, window: float) -> bool:
        return registry.claim_signal(kind, key, now=now, window=window)

    watch = Watch(
        settings,
        tally=tally,
        claim=claim if shared else None,
        on_signal=lambda signal: fleet_signal(board, signal),
    )
    return tally, watch


class _Every:
    """Runs `work` every `interval` seconds on a thread of its own: the journal copied out (so
    entries written by reads, their audit, or left behind by a region that was down reach the
    stores without another change), the limit counts swapped with the fleet's."""

    def __init__(
        self, name: str, interval: float, work: Callable[[], object], *, at_once: bool = False
    ) -> None:
        self._name = name
        self._at_once = at_once
        self._interval = interval
        self._work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if not self._at_once:
            self._stop.wait(self._interval)
        while not self._stop.is_set():
            try:
                self._work()
            except Exception:
                logging.getLogger(f"model_registry.{self._name}").exception(
                    "%s timer failed", self._name
                )
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="model-registry",
        version=__version__,
        description="Immutable, encrypted, verified model artifact registry: REST API. Errors "
        'are {"error": {"code", "message", "hint"}} with a stable code.',
        path="/schema",
        render_plugins=[JsonRenderPlugin(), SwaggerRenderPlugin()],
        components=Components(
            security_schemes={
                "token": SecurityScheme(
                    type="http", scheme="bearer", description="model-registry API token"
                )
            }
        ),
        security=[{"token": []}],
    )


def openapi_document() -> str:
    """The OpenAPI schema of the routes, as canonical JSON (what docs/api/openapi.json holds).
    Built without a registry: the schema depends on the code alone."""
    app = Litestar(
        route_handlers=ROUTES,
        openapi_config=_openapi_config(),
        exception_handlers={RegistryError: registry_error},
    )
    return json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True) + "\n"


def _AppState(values: dict[str, Any]) -> Any:  # noqa: N802 - mirrors litestar.datastructures.State
    from litestar.datastructures import State as LitestarState

    return LitestarState(values)
