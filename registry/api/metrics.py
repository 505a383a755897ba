"""Prometheus metrics of the API server: requests by route and status, latency, bytes in and out,
integrity failures, key unwraps by token and security events. One registry per application, so
tests (and several apps in one process) do not share counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "model_registry_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "model_registry_http_request_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            registry=r,
        )
        self.bytes_in = Counter(
            "model_registry_bytes_received", "Request body bytes received (uploads)", registry=r
        )
        self.bytes_out = Counter(
            "model_registry_bytes_sent", "Ciphertext bytes served (downloads)", registry=r
        )
        self.pushed = Counter(
            "model_registry_pushed_bytes", "Bytes of versions committed through the API", registry=r
        )
        self.integrity_failures = Counter(
            "model_registry_integrity_failures",
            "Integrity failures met while serving (tampered or damaged data, digest mismatches)",
            registry=r,
        )
        self.unwraps = Counter(
            "model_registry_key_unwraps",
            "Data keys unwrapped by the key broker, by token",
            ["token"],
            registry=r,
        )
        self.security_events = Counter(
            "model_registry_security_events",
            "Unusual behaviour logged as a security event, by kind",
            ["kind"],
            registry=r,
        )
        self.replication_backlog = Gauge(
            "model_registry_replication_backlog",
            "Object copies recorded pending or bad, by region (updated by /readyz)",
            ["region"],
            registry=r,
        )
