"""Health, readiness and Prometheus metrics: no token needed."""

from __future__ import annotations

import contextlib
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registry import wire
from registry.api.common import State, state_of
from registry.errors import RegistryError


class ServiceController(Controller):
    tags = ("service",)

    @get("/healthz", sync_to_thread=False)
    def healthz(self) -> wire.Health:
        """Alive."""
        return wire.Health(status="ok")

    @get(
        "/readyz",
        sync_to_thread=True,
        responses={
            503: ResponseSpec(data_container=wire.Readiness, description="Not ready: what is wrong")
        },
    )
    def readyz(self, request: Request[Any, Any, Any]) -> Response[wire.Readiness]:
        """Ready: the catalog answers and every region is reachable."""
        state = state_of(request)
        problems: list[str] = []
        try:
            state.registry.models()
        except RegistryError as error:
            problems.append(f"catalog: {error}")
        try:
            for region in state.registry.regions_status():
                state.metrics.replication_backlog.labels(region.name).set(
                    region.pending + region.bad
                )
                if not region.reachable:
                    problems.append(f"region {region.name}: {region.detail}")
        except RegistryError as error:
            problems.append(f"regions: {error}")
        body = wire.Readiness(status="ready" if not problems else "not ready", problems=problems)
        return Response(body, status_code=200 if not problems else 503)

    @get("/metrics", sync_to_thread=True, media_type=CONTENT_TYPE_LATEST)
    def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Prometheus metrics (with when the backups were last proven: drills and scrubs)."""
        state = state_of(request)
        with contextlib.suppress(RegistryError):  # the catalog down: the rest still answers
            _proofs(state)
        data = generate_latest(state.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)


def _proofs(state: State) -> None:
    """The last drill from each configured region and the last full scrub (series appear once
    there is something to say), and how far behind each region's journal is."""
    proofs = state.registry.recovery_proofs()
    for drill in proofs.drills:
        state.metrics.last_drill.labels(drill.region).set(drill.at.timestamp())
        state.metrics.last_drill_ok.labels(drill.region).set(1 if drill.ok else 0)
        state.metrics.last_drill_seconds.labels(drill.region).set(drill.seconds)
    for journal in state.registry.journal_status(check=False):
        state.metrics.journal_behind.labels(journal.region).set(journal.behind)
        state.metrics.journal_lag.labels(journal.region).set(journal.lag_seconds)
    if proofs.scrub is not None:
        state.metrics.last_scrub.labels("full").set(proofs.scrub.at.timestamp())
        state.metrics.last_scrub_problems.labels("full").set(proofs.scrub.problems)
