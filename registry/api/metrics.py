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
        self.shared_state_up = Gauge(
            "model_registry_shared_state_up",
            "Whether the last swap of limit counts with the fleet's store ([api] shared_state) "
            "succeeded (1), or this process limits alone until it does (0)",
            registry=r,
        )
        self.shared_state_failures = Counter(
            "model_registry_shared_state_failures",
            "Swaps of limit counts with the fleet's store that failed",
            registry=r,
        )
        self.last_drill = Gauge(
            "model_registry_last_drill_timestamp_seconds",
            "When the last restore drill from each region ran (Unix time; from the audit trail)",
            ["region"],
            registry=r,
        )
        self.last_drill_ok = Gauge(
            "model_registry_last_drill_ok",
            "Whether the last restore drill from each region passed (1) or failed (0)",
            ["region"],
            registry=r,
        )
        self.last_drill_seconds = Gauge(
            "model_registry_last_drill_duration_seconds",
            "How long the last restore drill from each region took (the recovery time it measured)",
            ["region"],
            registry=r,
        )
        self.last_scrub = Gauge(
            "model_registry_last_scrub_timestamp_seconds",
            "When the last full scrub (verify --all, every region) ran (Unix time; audit trail)",
            ["scope"],
            registry=r,
        )
        self.last_scrub_problems = Gauge(
            "model_registry_last_scrub_problems",
            "Bad copies (and unreachable regions) the last full scrub found",
            ["scope"],
            registry=r,
        )
        self.journal_behind = Gauge(
            "model_registry_journal_behind_entries",
            "Catalog journal entries not yet sealed in each region's store",
            ["region"],
            registry=r,
        )
        self.journal_lag = Gauge(
            "model_registry_journal_lag_seconds",
            "Age of the oldest journal entry each region's store still lacks (the recovery "
            "point of a catalog rebuild from that region; 0 when it is up to date)",
            ["region"],
            registry=r,
        )
        self.replication_backlog = Gauge(
            "model_registry_replication_backlog",
            "Object copies recorded pending or bad, by region (updated by /readyz)",
            ["region"],
            registry=r,
        )
