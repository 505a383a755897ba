"""What the routes share: the application's state (the open registry, upload sessions, metrics,
rate limits, threat signals), the caller's address, security events, and parsing of times and
byte ranges."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar.connection import ASGIConnection

from registry.api.limits import RateLimiter, Watch
from registry.api.metrics import Metrics
from registry.api.uploads import Uploads
from registry.errors import InvalidInputError
from registry.records import TokenRecord
from registry.service import Registry

MAX_RANGE = 64 * 1024 * 1024
JSON_LIMIT = 1024 * 1024
STATE_KEY = "registry_state"
security_log = logging.getLogger("model_registry.security")


@dataclass
class State:
    registry: Registry
    uploads: Uploads
    metrics: Metrics
    limiter: RateLimiter
    transfer_limiter: RateLimiter
    broker_limiter: RateLimiter
    watch: Watch


def state_of(connection: ASGIConnection[Any, Any, Any, Any]) -> State:
    state: State = connection.app.state[STATE_KEY]
    return state


def client_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


def security_event(connection: ASGIConnection[Any, Any, Any, Any], kind: str, detail: str) -> None:
    state_of(connection).metrics.security_events.labels(kind).inc()
    security_log.warning("security event %s from %s: %s", kind, client_of(connection), detail)


def note_read(
    connection: ASGIConnection[Any, Any, Any, Any], token: TokenRecord, model: str
) -> None:
    """Count a read of `model` by `token` (many distinct models in a window is a signal)."""
    signal = state_of(connection).watch.note_read(token.id, model)
    if signal is not None:
        security_event(connection, signal, f"token {token.id} read many distinct models")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"invalid time {text!r}", hint="ISO 8601 with a zone") from None
    if moment.tzinfo is None:
        raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
    return moment


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """(offset, length) of a `bytes=A-B` range within an object of `size` bytes."""
    if header is None:
        raise InvalidInputError("a Range header is needed: bytes=START-END")
    unit, _, spec = header.partition("=")
    first, dash, last = spec.partition("-")
    if unit.strip() != "bytes" or not dash or not first.isdigit() or not last.isdigit():
        raise InvalidInputError(f"unsupported range {header!r}", hint="bytes=START-END")
    start, end = int(first), int(last)
    if start > end or start >= size:
        raise InvalidInputError(f"range {header!r} is outside the object ({size} bytes)")
    end = min(end, size - 1)
    if end - start + 1 > MAX_RANGE:
        raise InvalidInputError(f"a range is at most {MAX_RANGE} bytes")
    return start, end - start + 1
