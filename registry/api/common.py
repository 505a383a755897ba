"""What the routes share: the application's state (the open registry, metrics,
rate limits, threat signals), the caller's address, security events, and parsing of times and
byte ranges."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar.connection import ASGIConnection

from registry.api.limits import RateLimiter, Signal, Watch
from registry.api.metrics import Metrics
from registry.api.tally import Tally
from registry.errors import InvalidInputError
from registry.records import TokenRecord
from registry.service import Registry

MAX_RANGE = 64 * 1024 * 1024
JSON_LIMIT = 1024 * 1024
STATE_KEY = "registry_state"
_RANGE = re.compile(r"\s*bytes\s*=([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
security_log = logging.getLogger("model_registry.security")


@dataclass
class State:
    registry: Registry
    metrics: Metrics
    limiter: RateLimiter
    transfer_limiter: RateLimiter
    broker_limiter: RateLimiter
    watch: Watch
    # What the limits and the watch count (shared with the fleet per `[api] shared_state`).
    tally: Tally
    # `[api] trusted_proxies`: the peers whose X-Forwarded-For names the client.
    proxies: tuple[Network, ...] = ()


def state_of(connection: ASGIConnection[Any, Any, Any, Any]) -> State:
    state: State = connection.app.state[STATE_KEY]
    return state


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def client_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The client's address: the peer's own, unless the peer is a proxy of `[api]
    trusted_proxies`; then the nearest address of X-Forwarded-For that is not one of them
    (what a client writes there itself lies beyond it, and is never believed)."""
    peer = connection.client.host if connection.client else "unknown"
    proxies = state_of(connection).proxies
    if not proxies or not among(peer, proxies):
        return peer
    hops = ",".join(connection.headers.getall("x-forwarded-for", [])).split(",")
    for hop in reversed([h.strip() for h in hops if h.strip()]):
        if not among(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a malformed hop: nothing past the last proxy can be believed
    return peer


def among(address: str, networks: tuple[Network, ...]) -> bool:
    """Whether `address` is in one of `networks` (a malformed address is in none)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def security_event(connection: ASGIConnection[Any, Any, Any, Any], kind: str, detail: str) -> None:
    state_of(connection).metrics.security_events.labels(kind).inc()
    security_log.warning("security event %s from %s: %s", kind, client_of(connection), detail)


def note_read(
    connection: ASGIConnection[Any, Any, Any, Any], token: TokenRecord, model: str
) -> None:
    """Count a read of `model` by `token` (many distinct models in a window is a signal)."""
    signal = state_of(connection).watch.note_read(token.id, model)
    if signal is not None:
        security_event(connection, signal.kind, signal.detail)


def fleet_signal(metrics: Metrics, signal: Signal) -> None:
    """A signal the other server processes' counts crossed, learnt at a swap (no request, so
    no client address but the one it is about)."""
    metrics.security_events.labels(signal.kind).inc()
    security_log.warning(
        "security event %s (counts of the server fleet): %s", signal.kind, signal.detail
    )


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"invalid time {text!r}", hint="ISO 8601 with a zone") from None
    if moment.tzinfo is None:
        raise InvalidInputError("a time needs a time zone (e.g. 2026-11-30T12:00:00Z)")
    try:
        # The catalog compares in UTC: a time at the edge of the range (year 1 east of UTC,
        # year 9999 west of it) has no UTC form and is the client's mistake, not a bug.
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(
            f"time {text!r} is outside the range of dates", hint="a date between years 1 and 9999"
        ) from None


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """(offset, length) of a `bytes=A-B` range within an object of `size` bytes."""
    if header is None:
        raise InvalidInputError("a Range header is needed: bytes=START-END")
    # ASCII digits only: str.isdigit() also takes digits int() refuses (superscripts).
    found = _RANGE.fullmatch(header)
    if found is None:
        raise InvalidInputError(f"unsupported range {header!r}", hint="bytes=START-END")
    start, end = int(found[1]), int(found[2])
    if start > end or start >= size:
        raise InvalidInputError(f"range {header!r} is outside the object ({size} bytes)")
    end = min(end, size - 1)
    if end - start + 1 > MAX_RANGE:
        raise InvalidInputError(f"a range is at most {MAX_RANGE} bytes")
    return start, end - start + 1
